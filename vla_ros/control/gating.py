"""Input gating: is the newest observation fresh and consistent enough to act on?

A policy that sees a frame from half a second ago moves the arm to where the object was. The gate
compares the stamps of the newest joint states (one per arm) and camera frames with "now" and says,
in machine-readable reasons, why an observation is not usable.

Capture time: the OLDEST camera stamp (the oldest joint-state stamp when there are no cameras).
The chunk executor treats entry k of a chunk as the target for capture_time + k*dt, so this stamp
decides how much of a late chunk counts as already in the past. The scene in the images is what
the policy reacts to, and the oldest frame bounds how old that information is; claiming it fresher
than its stalest part would replay targets the arm has already passed. Joint states (50+ Hz,
stamped by the driver at read time) are nearly always newer than camera frames, so using them
would systematically under-estimate the latency.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class GatingConfig:
    """Maximum input ages (s) and the largest allowed spread between camera stamps (s)."""

    max_joint_state_age: float = 0.1
    max_camera_age: float = 0.15
    max_camera_spread: float = 0.1

    def __post_init__(self):
        for name in ("max_joint_state_age", "max_camera_age", "max_camera_spread"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"GatingConfig.{name} must be a finite number of seconds, got {value!r}")
            if value < 0 or (value == 0 and name != "max_camera_spread"):
                raise ValueError(f"GatingConfig.{name} must be > 0 s, got {value!r}")


@dataclass(frozen=True)
class GateResult:
    """Verdict on one observation. `reasons` is empty when `ok`; `capture_time` is None when the
    observation has no usable stamps to date it."""

    ok: bool
    reasons: tuple[str, ...]
    capture_time: float | None

    @property
    def reason(self) -> str:
        """The first reason, or '' when usable (for log lines and service replies)."""
        return self.reasons[0] if self.reasons else ""


def _valid_stamp(stamp) -> bool:
    return not isinstance(stamp, bool) and isinstance(stamp, (int, float)) and -math.inf < stamp < math.inf


class InputGate:
    """Checks the stamps of a fixed set of arms and cameras. Inputs missing from the mappings
    given to `check` (or mapped to None) count as missing; unknown names are ignored."""

    def __init__(self, config: GatingConfig, arm_names: Iterable[str], camera_names: Iterable[str]):
        self.config = config
        self.arm_names = tuple(arm_names)
        self.camera_names = tuple(camera_names)
        if not self.arm_names:
            raise ValueError("InputGate needs at least one arm name")

    def check(self, now: float, joint_state_stamps: Mapping[str, float | None],
              camera_stamps: Mapping[str, float | None]) -> GateResult:
        if not _valid_stamp(now):
            return GateResult(False, ("now_invalid",), None)
        reasons: list[str] = []
        joint_valid = self._check_group(now, "joint_states", self.arm_names, joint_state_stamps,
                                        self.config.max_joint_state_age, reasons)
        camera_valid = self._check_group(now, "camera", self.camera_names, camera_stamps,
                                         self.config.max_camera_age, reasons)
        if len(camera_valid) > 1 and max(camera_valid) - min(camera_valid) > self.config.max_camera_spread:
            reasons.append("camera_spread")
        dating = camera_valid if self.camera_names else joint_valid
        complete = len(dating) == len(self.camera_names if self.camera_names else self.arm_names)
        capture_time = min(dating) if dating and complete else None
        return GateResult(not reasons, tuple(reasons), capture_time)

    @staticmethod
    def _check_group(now, kind, names, stamps, max_age, reasons) -> list[float]:
        """Append the reasons of one input group; return its valid stamps."""
        valid = []
        for name in names:
            stamp = stamps.get(name)
            if stamp is None:
                reasons.append(f"{kind}_missing:{name}")
                continue
            if not _valid_stamp(stamp):
                reasons.append(f"{kind}_stamp_invalid:{name}")
                continue
            valid.append(float(stamp))
            age = now - stamp
            if age > max_age:
                reasons.append(f"{kind}_stale:{name}")
            elif age < -max_age:  # a clock mismatch (sim vs wall time) would look fresh forever
                reasons.append(f"{kind}_from_future:{name}")
        return valid
