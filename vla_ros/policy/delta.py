"""Delta joint actions with absolute grippers, openpi's convention for ALOHA.

With delta actions an arm joint's target in the action chunk is learned as its offset from that
joint's position in the state the chunk is predicted from (the observation at the chunk's first
frame); the grippers' targets stay absolute. Offsets are small and centred near zero whatever the
arm's pose, so one set of normalisation statistics fits every part of the workspace.

Which action dims are offsets is named in the checkpoint (PolicyConfig.delta_actions): each is
measured from the state dim of the same name. The functions below work on numpy arrays and torch
tensors alike (``source`` and ``mask`` of the matching kind), so training statistics, the loss
and inference share one definition.
"""

from __future__ import annotations

from collections.abc import Sequence


def delta_layout(state_names: Sequence[str], action_names: Sequence[str],
                 delta_names: Sequence[str]) -> tuple[list[int], list[float]]:
    """(source, mask) per action dim: the index of the state dim it is an offset from (0 where it
    is absolute) and 1.0 where it is an offset, else 0.0. Raises ValueError naming a delta dim
    that is not both an action and a state dim."""
    state_index = {name: i for i, name in enumerate(state_names)}
    unknown = [name for name in delta_names if name not in state_index or name not in action_names]
    if unknown:
        raise ValueError(f"delta action dims {unknown} must name both an action dim and a state dim")
    chosen = set(delta_names)
    source = [state_index[name] if name in chosen else 0 for name in action_names]
    mask = [1.0 if name in chosen else 0.0 for name in action_names]
    return source, mask


def arm_joint_names(vector_names: Sequence[str], gripper_indices: Sequence[int]) -> tuple[str, ...]:
    """The dims that delta actions make relative: every joint but the grippers."""
    grippers = set(gripper_indices)
    return tuple(name for i, name in enumerate(vector_names) if i not in grippers)


def state_reference(state, source, mask):
    """State (..., state dims) -> (..., 1, action dims): what each action dim is measured from
    (zero where the dim is absolute); broadcasts over a chunk's horizon."""
    return state[..., None, source] * mask


def to_delta(actions, state, source, mask):
    """Absolute chunks (..., H, action dims) -> the targets the model learns."""
    return actions - state_reference(state, source, mask)


def from_delta(actions, state, source, mask):
    """The model's targets (..., H, action dims) -> absolute chunks: the inverse of to_delta."""
    return actions + state_reference(state, source, mask)
