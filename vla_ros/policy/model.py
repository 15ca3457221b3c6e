"""The one-step VLA policy: VLM condition encoder + flow-matching action head + normaliser.

Convention (vla_ros.policy.flow): t = 0 is noise, t = 1 is the action chunk. The prefix (the VLM's
condition tokens) is computed once per observation by `encode` and reused by every Euler step of
`sample`; one step is the default at run time.

Real vs padded dims: `state_names` / `action_names` name the robot's real dims. The model may be
wider (state_dim / action_dim larger, e.g. to share weights across embodiments); extra dims are
zero-padded inputs and are masked out of the loss, and the runtime returns only the real dims.

Training batch (`compute_loss`), tensors on the model's device:
    images        uint8 (B, C, H, W, 3), cameras in `camera_keys` order
    text_ids, text_mask (B, L) from `tokenize`, or instruction: list[str] (tokenized here, cached)
    state         float (B, len(state_names)), raw units
    actions       float (B, horizon, len(action_names)), raw units
    action_is_pad bool (B, horizon), optional: steps past an episode's end, excluded from the loss
    reference_state float (B, len(state_names)), optional: the recorded state that delta actions
                  are offsets from (default: state; differs when training noise perturbs state)

Delta actions (config.delta_actions, vla_ros.policy.delta): the named action dims are learned as
offsets from the state; compute_loss turns the batch's absolute actions into offsets and
finish_actions turns the model's output back into absolute targets, so callers always see
absolute joint targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import NamedTuple

import torch
from torch import nn

from vla_ros.policy.backbone import FAMILIES, VLMBackbone
from vla_ros.policy.crop import check_region
from vla_ros.policy.delta import delta_layout, from_delta, to_delta
from vla_ros.policy.flow import (euler_sample, flow_loss, interpolate, join_prefix, prefix_times, sample_time,
                                 velocity_target)
from vla_ros.policy.head import ActionHead, HeadConfig
from vla_ros.policy.normalize import MODES, Normalizer, NormStats


class ConfigError(ValueError):
    """A policy configuration that is inconsistent or incomplete."""


@dataclass
class PolicyConfig:
    """Everything needed to rebuild the policy's architecture and use it on a robot."""

    backbone_family: str
    camera_keys: tuple[str, ...]
    image_size: int
    num_lm_layers: int
    head: HeadConfig
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    backbone_source: str = ""  # where the pretrained backbone came from (provenance only)
    max_text_tokens: int = 32
    state_dim: int = 14
    action_dim: int = 14
    horizon: int = 10
    alpha: float = 4.0
    beta: tuple[float, float] | None = None
    recommended_steps: int = 1
    # Correlation length (horizon steps) of the initial noise that runtimes use unless told
    # otherwise (vla_ros.policy.noise); 0: white noise, as every checkpoint was decoded before.
    recommended_noise_correlation: float = 0.0
    # Temperature of that noise (vla_ros.policy.noise); 1: the training distribution.
    recommended_noise_scale: float = 1.0
    # The most leading chunk entries the head was trained to take as given (an action prefix:
    # what the robot executes anyway while the next chunk is computed; flow.py). 0: none, every
    # checkpoint written before prefixes existed.
    action_prefix_steps: int = 0
    # Training only: each sample's given prefix is shifted by a constant offset of this std
    # (normalised units, per dim), as a plan that drifted from the demonstration is; the entries
    # after it are still scored against the demonstration, so the head learns to steer back.
    action_prefix_noise: float = 0.0
    robot_profile: str = ""
    normalization: str = "mean_std"
    # Action dims learned as offsets from the state dim of the same name (vla_ros.policy.delta);
    # empty: every action dim is absolute (checkpoints written before delta actions existed).
    delta_actions: tuple[str, ...] = ()
    # camera key -> region of interest [top, left, height, width], fractions of the frame
    # (vla_ros.policy.crop); a camera without one is seen whole.
    camera_crops: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # free-form provenance: dataset, training run, ...

    def __post_init__(self):
        self.camera_keys = tuple(self.camera_keys)
        self.state_names = tuple(self.state_names)
        self.action_names = tuple(self.action_names)
        self.delta_actions = tuple(self.delta_actions)
        if self.beta is not None:
            self.beta = tuple(float(b) for b in self.beta)
        if not isinstance(self.camera_crops, dict):
            raise ConfigError(f"camera_crops must map camera keys to [top, left, height, width], "
                              f"got {self.camera_crops!r}")
        self.camera_crops = dict(self.camera_crops)
        self.validate()

    def validate(self) -> None:
        problems = []
        if self.backbone_family not in FAMILIES:
            problems.append(f"backbone_family must be one of {FAMILIES}, got '{self.backbone_family}'")
        if not self.camera_keys or len(set(self.camera_keys)) != len(self.camera_keys):
            problems.append(f"camera_keys must be non-empty and distinct, got {list(self.camera_keys)}")
        for name in ("image_size", "num_lm_layers", "max_text_tokens", "state_dim", "action_dim", "horizon",
                     "recommended_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        scale = self.recommended_noise_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale <= 10:
            problems.append(f"recommended_noise_scale must be a number in [0, 10], got {scale!r}")
        prefix_steps = self.action_prefix_steps
        if isinstance(prefix_steps, bool) or not isinstance(prefix_steps, int) or not 0 <= prefix_steps < self.horizon:
            problems.append(f"action_prefix_steps must be an integer in [0, horizon), got {prefix_steps!r}")
        prefix_noise = self.action_prefix_noise
        if isinstance(prefix_noise, bool) or not isinstance(prefix_noise, (int, float)) or not 0 <= prefix_noise <= 10:
            problems.append(f"action_prefix_noise must be a number in [0, 10], got {prefix_noise!r}")
        correlation = self.recommended_noise_correlation
        if isinstance(correlation, bool) or not isinstance(correlation, (int, float)) or not 0 <= correlation < 1e6:
            problems.append(f"recommended_noise_correlation must be a number of horizon steps >= 0, got {correlation!r}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha >= 1.0):
            problems.append(f"alpha (time shift) must be >= 1, got {self.alpha!r}")
        if self.beta is not None and (len(self.beta) != 2 or min(self.beta) <= 0):
            problems.append(f"beta must be two positive numbers or null, got {self.beta!r}")
        if self.normalization not in MODES:
            problems.append(f"normalization must be one of {MODES}, got '{self.normalization}'")
        if not 1 <= len(self.state_names) <= self.state_dim:
            problems.append(f"state_names ({len(self.state_names)}) must be 1..state_dim ({self.state_dim}) names")
        if not 1 <= len(self.action_names) <= self.action_dim:
            problems.append(f"action_names ({len(self.action_names)}) must be 1..action_dim ({self.action_dim}) names")
        for name in ("state_dim", "action_dim", "horizon"):
            if getattr(self.head, name) != getattr(self, name):
                problems.append(f"head.{name} ({getattr(self.head, name)}) != {name} ({getattr(self, name)})")
        if len(set(self.delta_actions)) != len(self.delta_actions):
            problems.append(f"delta_actions names a dim twice: {list(self.delta_actions)}")
        try:
            delta_layout(self.state_names, self.action_names, self.delta_actions)
        except ValueError as error:
            problems.append(str(error))
        for camera, region in self.camera_crops.items():
            if camera not in self.camera_keys:
                problems.append(f"camera_crops names camera '{camera}', which is not in camera_keys "
                                f"{list(self.camera_keys)}")
            try:
                self.camera_crops[camera] = check_region(region)
            except ValueError as error:
                problems.append(f"camera_crops['{camera}']: {error}")
        if problems:
            raise ConfigError("invalid policy config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "head"}
        data["camera_keys"] = list(self.camera_keys)
        data["state_names"] = list(self.state_names)
        data["action_names"] = list(self.action_names)
        data["delta_actions"] = list(self.delta_actions)
        data["beta"] = list(self.beta) if self.beta is not None else None
        data["camera_crops"] = {camera: list(region) for camera, region in self.camera_crops.items()}
        data["head"] = self.head.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "PolicyConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown policy config keys: {unknown}")
        values = dict(data)
        if not isinstance(values.get("head"), dict):
            raise ConfigError("policy config needs a 'head' object")
        values["head"] = HeadConfig.from_dict(values["head"])
        try:
            return cls(**values)
        except TypeError as error:
            raise ConfigError(f"policy config: {error}") from error

    @property
    def real_state_dim(self) -> int:
        return len(self.state_names)

    @property
    def real_action_dim(self) -> int:
        return len(self.action_names)


class Prefix(NamedTuple):
    """The condition: VLM output tokens (B, N, hidden) and their mask (B, N), True = real token."""

    tokens: torch.Tensor
    mask: torch.Tensor


class VLAPolicy(nn.Module):
    """Backbone + action head + normaliser; see the module docstring for the batch format."""

    def __init__(self, config: PolicyConfig, backbone: VLMBackbone, stats: NormStats):
        super().__init__()
        mismatches = []
        if backbone.family != config.backbone_family:
            mismatches.append(f"family {backbone.family} != config {config.backbone_family}")
        if backbone.image_size != config.image_size:
            mismatches.append(f"image size {backbone.image_size} != config {config.image_size}")
        if backbone.num_lm_layers != config.num_lm_layers:
            mismatches.append(f"LM layers {backbone.num_lm_layers} != config {config.num_lm_layers}")
        if backbone.max_text_tokens != config.max_text_tokens:
            mismatches.append(f"max text tokens {backbone.max_text_tokens} != config {config.max_text_tokens}")
        if backbone.hidden_size != config.head.condition_dim:
            mismatches.append(f"hidden size {backbone.hidden_size} != head.condition_dim {config.head.condition_dim}")
        if stats.state_dim != config.real_state_dim or stats.action_dim != config.real_action_dim:
            mismatches.append(f"stats dims (state {stats.state_dim}, action {stats.action_dim}) != config "
                              f"(state {config.real_state_dim}, action {config.real_action_dim})")
        if stats.mode != config.normalization:
            mismatches.append(f"stats mode {stats.mode} != config normalization {config.normalization}")
        if mismatches:
            raise ConfigError("backbone/stats do not match the policy config: " + "; ".join(mismatches))
        self.config = config
        self.stats = stats
        self.backbone = backbone
        self.head = ActionHead(config.head)
        self.normalizer = Normalizer(stats)
        loss_mask = torch.zeros(config.action_dim, dtype=torch.bool)
        loss_mask[: config.real_action_dim] = True
        self.register_buffer("action_dim_mask", loss_mask, persistent=False)
        source, mask = delta_layout(config.state_names, config.action_names, config.delta_actions)
        self.register_buffer("delta_source", torch.tensor(source, dtype=torch.long), persistent=False)
        self.register_buffer("delta_mask", torch.tensor(mask, dtype=torch.float32), persistent=False)

    # ---- pieces ------------------------------------------------------------------------------
    def tokenize(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.backbone.tokenize(instructions)
        device = self.action_dim_mask.device
        return ids.to(device), mask.to(device)

    def encode(self, images: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor) -> Prefix:
        """uint8 images (B, C, H, W, 3) + instruction tokens -> the prefix, computed once per observation."""
        if images.dim() != 5 or images.shape[1] != len(self.config.camera_keys):
            raise ValueError(f"images must be (B, {len(self.config.camera_keys)} cameras, H, W, 3), "
                             f"got {tuple(images.shape)}")
        return Prefix(*self.backbone(images, text_ids, text_mask))

    def encode_pixels(self, pixels: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor) -> Prefix:
        """Like encode, from already preprocessed pixels (B*C, 3, S, S) (the fixed-shape part)."""
        return Prefix(*self.backbone.encode_pixels(pixels, text_ids, text_mask))

    def prepare_state(self, state: torch.Tensor) -> torch.Tensor:
        """Raw state (B, real dims) -> normalised and zero-padded to (B, state_dim)."""
        if state.dim() != 2 or state.shape[1] != self.config.real_state_dim:
            raise ValueError(f"state must be (B, {self.config.real_state_dim}), got {tuple(state.shape)}")
        normalised = self.normalizer.normalize_state(state.float())
        return nn.functional.pad(normalised, (0, self.config.state_dim - self.config.real_state_dim))

    def prepare_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Raw chunks (B, horizon, real dims) -> normalised and zero-padded to (B, horizon, action_dim)."""
        expected = (self.config.horizon, self.config.real_action_dim)
        if actions.dim() != 3 or tuple(actions.shape[1:]) != expected:
            raise ValueError(f"actions must be (B, {expected[0]}, {expected[1]}), got {tuple(actions.shape)}")
        normalised = self.normalizer.normalize_action(actions.float())
        return nn.functional.pad(normalised, (0, self.config.action_dim - self.config.real_action_dim))

    def finish_actions(self, actions: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Normalised (B, H, action_dim) -> absolute raw units, real dims only; `state` (B, real
        state dims, raw units) is the state the chunk was predicted from (delta actions are
        offsets from it)."""
        raw = self.normalizer.denormalize_action(actions[..., : self.config.real_action_dim].float())
        if not self.config.delta_actions:
            return raw
        return from_delta(raw, state.float(), self.delta_source, self.delta_mask)

    def velocity(self, prefix: Prefix, x_t: torch.Tensor, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """v_theta(x_t, t | prefix, normalised padded state), returned in float32.

        The head casts its inputs to its own dtype; t stays float32 because its sinusoidal
        embedding scales t by 1000, where bfloat16 rounding would be visible."""
        return self.head(prefix.tokens, prefix.mask, state, x_t, t.float()).float()

    def sample(self, prefix: Prefix, state: torch.Tensor, steps: int, noise: torch.Tensor,
               given: torch.Tensor | None = None, given_values: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised action chunk from `noise` (B, H, action_dim) with `steps` Euler steps.

        given (B, H) bool / given_values (B, H, action_dim) normalised: an action prefix kept as it
        is, the decoded rest joined to it (flow.join_prefix); only for a head trained with one
        (config.action_prefix_steps). A block-causal head
        computes the condition's keys and values once and every step runs the action tokens only;
        a bidirectional head (older checkpoints) reruns the whole sequence."""
        if given is not None and not self.config.action_prefix_steps:
            raise ValueError("this policy was not trained with an action prefix (action_prefix_steps is 0)")
        values = None if given_values is None else given_values.float()
        if not self.head.cacheable:
            chunk = euler_sample(lambda x, t: self.velocity(prefix, x, t, state), noise.float(), steps,
                                 given=given, given_values=values)
        else:
            cache = self.head.encode_condition(prefix.tokens, prefix.mask, state)
            chunk = euler_sample(lambda x, t: self.head.step(cache, x, t.float()).float(), noise.float(), steps,
                                 given=given, given_values=values)
        return chunk if given is None else join_prefix(chunk, given)

    # ---- training ----------------------------------------------------------------------------
    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow-matching loss on one batch with the shifted (high-noise) time distribution."""
        if "text_ids" in batch:
            text_ids, text_mask = batch["text_ids"], batch["text_mask"]
        else:
            text_ids, text_mask = self.tokenize(list(batch["instruction"]))
        prefix = self.encode(batch["images"], text_ids, text_mask)
        state = self.prepare_state(batch["state"])
        actions = batch["actions"]
        if self.config.delta_actions:
            reference = batch.get("reference_state")
            reference = batch["state"] if reference is None else reference
            actions = to_delta(actions.float(), reference.float(), self.delta_source, self.delta_mask)
        actions = self.prepare_actions(actions)
        batch_size, device = actions.shape[0], actions.device
        random_device = generator.device if generator is not None else device
        noise = torch.randn(actions.shape, generator=generator, device=random_device).to(device)
        t = sample_time(batch_size, self.config.alpha, self.config.beta, generator, random_device).to(device)
        mask = self.action_dim_mask.expand_as(actions)
        if self.config.action_prefix_steps:
            # A prefix of 0..action_prefix_steps entries is given clean (t = 1) and not scored.
            given_steps = torch.randint(0, self.config.action_prefix_steps + 1, (batch_size,), generator=generator,
                                        device=random_device).to(device)
            given = torch.arange(self.config.horizon, device=device)[None, :] < given_steps[:, None]
            t = prefix_times(t, given)
            mask = mask & ~given[:, :, None]
        x_t = interpolate(actions, noise, t)
        if self.config.action_prefix_steps and self.config.action_prefix_noise:
            offset = torch.randn((batch_size, 1, actions.shape[-1]), generator=generator, device=random_device)
            x_t = x_t + self.config.action_prefix_noise * offset.to(device) * given[:, :, None]
        predicted = self.velocity(prefix, x_t, t, state)
        if batch.get("action_is_pad") is not None:
            mask = mask & ~batch["action_is_pad"].to(device=device, dtype=torch.bool)[:, :, None]
        return flow_loss(predicted, velocity_target(actions, noise), mask)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Backbone and head parameters apart, for the backbone LR multiplier or freezing."""
        return {"backbone": list(self.backbone.parameters()), "head": list(self.head.parameters())}


def build_policy(config: PolicyConfig, stats: NormStats, backbone_dir, load_weights: bool = True,
                 dtype: torch.dtype | None = None) -> VLAPolicy:
    """A policy whose backbone comes from a local VLM directory (pretrained weights or random)."""
    backbone = VLMBackbone.from_directory(backbone_dir, num_lm_layers=config.num_lm_layers,
                                          load_weights=load_weights, max_text_tokens=config.max_text_tokens,
                                          dtype=dtype)
    return VLAPolicy(config, backbone, stats)


def default_config(backbone: VLMBackbone, camera_keys, state_names, action_names, **overrides) -> PolicyConfig:
    """A PolicyConfig matching `backbone` with the paper's head (depth 4, width 768) unless overridden."""
    head_overrides = overrides.pop("head", {})
    horizon = overrides.get("horizon", 10)
    state_dim = overrides.get("state_dim", len(state_names))
    action_dim = overrides.get("action_dim", len(action_names))
    head = HeadConfig(condition_dim=backbone.hidden_size, state_dim=state_dim, action_dim=action_dim,
                      horizon=horizon, **head_overrides)
    values = dict(backbone_family=backbone.family, camera_keys=tuple(camera_keys), image_size=backbone.image_size,
                  num_lm_layers=backbone.num_lm_layers, head=head, state_names=tuple(state_names),
                  action_names=tuple(action_names), max_text_tokens=backbone.max_text_tokens,
                  state_dim=state_dim, action_dim=action_dim, horizon=horizon)
    values.update(overrides)
    return PolicyConfig(**values)

