"""The safety filter: the last word on every command that leaves vla_ros.

Guarantees, per joint, between consecutive emitted commands of one armed session (enable to
disable/fault/e-stop reset), with step = velocity*dt and accel = acceleration*dt^2:
  lower <= c_k <= upper                      (position limits minus margin)
  |c_k - c_{k-1}| <= step                    (velocity cap)
  |c_k - 2 c_{k-1} + c_{k-2}| <= accel       (acceleration cap)
  |c_k - measured_k| <= tracking             (tracking bound)
  c_k finite
The session starts from the measured pose at rest (c_{-1} = c_{-2} = measured), so the first
command lies within min(step, accel) of it. When no command satisfies all bounds (only the
tracking bound can cause that, see below) nothing is emitted and the filter faults.

Why the bounds can always be met together: each tick the next step u = c_k - c_{k-1} is chosen
in the intersection of per-joint intervals. The position interval is not just "stay inside" but
"stay where you can still brake in time": u + u^2/(2*accel) <= upper - c (the second term bounds
the braking distance at the acceleration limit). If the previous state satisfied this, braking by
one accel step (or to rest from below one accel step) satisfies it again and lies inside the
velocity and acceleration intervals too, so the intersection is never empty. Holds use exactly
that braking step, so they come to rest within the acceleration cap and then emit the same
command (stationary). Only the tracking interval (a measured pose that moved further than the
command may follow) can make it empty: that is a fault.

Stops that let go. An e-stop or a fault ends the session, but the filter keeps emitting: a
position servo pushes toward its last goal forever (xs_sdk has no command timeout), so a goal
left where a blocked arm cannot follow keeps it pushing. On the tick it is latched (e-stop) or
found (fault) the filter repeats the last command: zero commanded velocity at once. That tick is
the one deliberate exception to the acceleration cap, because braking at the cap could carry an
arm up to velocity^2 / (2 * acceleration) further (0.6 rad at pi rad/s and 8 rad/s^2) after
someone pressed stop. From the next tick on the command of every arm joint settles onto the
measured pose from rest, within the velocity and acceleration caps (no jump) and without
overshoot, then holds it (within `settle_deadband`, the servo's resolution). A joint measured
further than twice the tracking bound from its command (no arm gets there: the tracking fault
comes first) reads garbage and holds its command. After a fault the grippers keep their last
command (`stop_mask` False): a fault means the commander failed, not that anyone wants to let go,
and settling a gripper onto its measured opening would drop what it holds (its force is bounded
by the servo's current limit). An e-stop settles the grippers too: a person pressing stop gets a
squeeze released (a finger caught in a gripper), as arm_guard's e-stop does. Without a usable measured pose
(or with tracking off, dry runs) the stop holds the last command. Settling closes the distance
to the measured pose from at most twice the tracking bound, so position limits and finiteness
keep holding and the distance to the measured pose only shrinks while the arm stands still.

Live limits: set_limits() changes the velocity and acceleration caps while the filter runs. A
lower velocity cap applies at once: the braking step stays allowed, so a faster arm slows down
at the acceleration cap. A higher acceleration cap applies at once too (braking room only grows).
A lower acceleration cap waits until the commands are at rest, because the braking room of the
motion under way was computed with the old cap.

Time: every duration here (soft start, hold timeout) is measured on the `now` the caller passes
to enable() and step(); the ROS node passes a monotonic clock, so ROS-time jumps change none.

Implementation note: upper and lower bounds are computed together as one (2, n) array holding
[upper bound, -lower bound] (mirror trick), which halves the numpy calls of a tick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import numpy as np

DISARMED, RAMPING, RUNNING, HOLDING, FAULT, ESTOPPED = (
    "disarmed", "ramping", "running", "holding", "fault", "estopped")
_ARMED = (RAMPING, RUNNING, HOLDING)

_VECTOR_FIELDS = ("lower", "upper", "velocity", "acceleration", "tracking")


class ArmingError(RuntimeError):
    """enable() refused: e-stop latched, or the measured pose is unusable."""


@dataclass(frozen=True)
class SafetyLimits:
    """Per-joint limits (rad, rad/s, rad/s^2, rad; gripper entries in normalised units) and the
    filter's times. `lower`/`upper` are the usable range, i.e. the hardware limits minus margin."""

    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray
    acceleration: np.ndarray
    tracking: np.ndarray
    names: tuple[str, ...] = ()
    stop_mask: tuple[bool, ...] = ()  # joints that settle onto the measured pose on a stop (default all)
    settle_deadband: tuple[float, ...] = ()  # settled when this close to the measured pose (default 0)
    soft_start_time: float = 2.0
    soft_start_speed_scale: float = 0.25
    hold_fault_timeout: float = 2.0

    def __post_init__(self):
        size = None
        for name in _VECTOR_FIELDS:
            raw = getattr(self, name)
            try:
                value = np.array(raw, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"SafetyLimits.{name} must be a vector of numbers: {exc}") from exc
            if value.ndim != 1 or value.size == 0:
                raise ValueError(f"SafetyLimits.{name} must be a non-empty vector, got shape {value.shape}")
            size = value.size if size is None else size
            if value.size != size:
                raise ValueError(f"SafetyLimits.{name} has {value.size} entries, SafetyLimits.lower has {size}")
            if not np.isfinite(value).all():
                raise ValueError(f"SafetyLimits.{name} must be finite")
            if name not in ("lower", "upper") and (value <= 0).any():
                raise ValueError(f"SafetyLimits.{name} must be > 0 for every joint")
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        if not (self.lower < self.upper).all():
            raise ValueError("SafetyLimits.lower must be below SafetyLimits.upper for every joint")
        object.__setattr__(self, "names", tuple(self.names) or tuple(f"joint{i}" for i in range(size)))
        if len(self.names) != size:
            raise ValueError(f"SafetyLimits.names has {len(self.names)} entries, expected {size}")
        object.__setattr__(self, "stop_mask", tuple(bool(v) for v in self.stop_mask) or (True,) * size)
        deadband = tuple(float(v) for v in self.settle_deadband) or (0.0,) * size
        if len(self.stop_mask) != size or len(deadband) != size:
            raise ValueError(f"SafetyLimits.stop_mask and settle_deadband need {size} entries")
        if not all(math.isfinite(v) and v >= 0 for v in deadband):
            raise ValueError("SafetyLimits.settle_deadband must be finite and >= 0")
        object.__setattr__(self, "settle_deadband", deadband)
        for name, low, high, low_open in (("soft_start_time", 0.0, math.inf, False),
                                          ("soft_start_speed_scale", 0.0, 1.0, True),
                                          ("hold_fault_timeout", 0.0, math.inf, True)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < low or (low_open and value == low) or value > high:
                bound = f"in ({low:g}, {high:g}]" if high < math.inf else f"{'>' if low_open else '>='} {low:g}"
                raise ValueError(f"SafetyLimits.{name} must be a finite number {bound}, got {value!r}")

    @classmethod
    def from_profile(cls, profile, **overrides) -> SafetyLimits:
        """Limits of a RobotProfile (position limits minus its margin); keyword arguments replace
        any field, e.g. velocity=profile.velocity_limit * 0.5 or hold_fault_timeout=1.0."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"SafetyLimits.from_profile: unknown field(s) {unknown}; known: {sorted(known)}")
        grippers = set(profile.gripper_indices)
        values = dict(lower=profile.safe_lower(), upper=profile.safe_upper(), velocity=profile.velocity_limit,
                      acceleration=profile.acceleration_limit, tracking=profile.tracking_limit,
                      names=profile.vector_names,
                      stop_mask=tuple(i not in grippers for i in range(profile.action_dim)),
                      settle_deadband=tuple(profile.settle_deadband))
        values.update(overrides)
        return cls(**values)


def _brake_room(distance: np.ndarray, accel: np.ndarray) -> np.ndarray:
    """Largest step u >= 0 with u + u^2/(2*accel) <= distance; a negative distance (outside the
    range) allows only steps back towards it.

    u^2/(2*accel) bounds the distance covered when braking at `accel` per tick^2 from step u
    (sum_j max(u - j*accel, 0)) from above, and the bound is kept by one braking step:
    (u - accel) + (u - accel)^2/(2*accel) = u^2/(2*accel) - accel/2. So a state that satisfies it
    can always brake inside the range.
    """
    room = np.sqrt(accel * (accel + 2.0 * np.maximum(distance, 0.0))) - accel
    return np.minimum(room, distance)


@dataclass
class StepResult:
    """What one filter step did: the command (None = publish nothing) and its interventions."""

    command: np.ndarray | None
    state: str
    interventions: list[str] = field(default_factory=list)


class SafetyFilter:
    """State machine + per-tick projection of targets onto the safe set.

    States: disarmed (nothing emitted), ramping (soft start: velocity scaled down for
    soft_start_time after enable), running, holding (no usable target: brake, then stay; re-arms by
    itself when targets return, faults after hold_fault_timeout), fault (stop: settle onto the
    measured pose and hold it until enable), estopped (latched: the same stop until
    set_estop(False), which disarms). ``track=False`` (dry runs, bag replay: the arm does not
    follow the commands) ignores the measured pose after enable: no tracking bound, stops hold.
    """

    def __init__(self, limits: SafetyLimits, dt: float, track: bool = True):
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"SafetyFilter dt must be a positive number of seconds, got {dt!r}")
        self.limits = limits
        self.dt = float(dt)
        self.step_cap = limits.velocity * self.dt
        self.accel_cap = limits.acceleration * self.dt * self.dt
        self._ramp_step_cap = self.step_cap * limits.soft_start_speed_scale
        self.track = bool(track)
        self._stop_mask = np.array(limits.stop_mask)
        self._settle_deadband = np.array(limits.settle_deadband)
        self._stop_fresh = False  # the next stop tick is the first: zero velocity at once
        self._pending_accel_cap: np.ndarray | None = None  # a lower acceleration cap, due at rest
        self._mirror = np.array([[1.0], [-1.0]])
        self._mirrored_limits = np.stack([limits.upper, -limits.lower])
        span = limits.upper - limits.lower
        self._wide_lower, self._wide_upper = limits.lower - span, limits.upper + span
        self._settled = False  # False until the first command of a session (state may be outside)
        self._last_target: np.ndarray | None = None  # the target of the previous tick, if it had one
        self.counters: dict[str, int] = {}
        self._mode = DISARMED
        self._estop = False
        self._command: np.ndarray | None = None  # last emitted (or, right after enable, measured)
        self._velocity: np.ndarray | None = None  # last step c_{k-1} - c_{k-2}
        self._ramp_end = 0.0
        self._hold_since: float | None = None
        self.fault_reason = ""

    # --- state ------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return ESTOPPED if self._estop else self._mode

    @property
    def armed(self) -> bool:
        """True while targets are wanted (ramping, running or holding, no e-stop)."""
        return not self._estop and self._mode in _ARMED

    @property
    def last_command(self) -> np.ndarray | None:
        return None if self._command is None else self._command.copy()

    def set_limits(self, velocity, acceleration) -> None:
        """New velocity and acceleration limits (see "Live limits" above)."""
        velocity = np.asarray(velocity, dtype=np.float64)
        acceleration = np.asarray(acceleration, dtype=np.float64)
        for name, value in (("velocity", velocity), ("acceleration", acceleration)):
            if value.shape != self.limits.lower.shape or not np.isfinite(value).all() or (value <= 0).any():
                raise ValueError(f"{name} limits must be {self.limits.lower.size} positive numbers")
        self.limits = replace(self.limits, velocity=velocity, acceleration=acceleration)
        self.step_cap = velocity * self.dt
        self._ramp_step_cap = self.step_cap * self.limits.soft_start_speed_scale
        self._pending_accel_cap = acceleration * self.dt * self.dt
        self._apply_pending_accel()

    def _apply_pending_accel(self) -> None:
        pending = self._pending_accel_cap
        if pending is None:
            return
        at_rest = self._velocity is None or not self._velocity.any()
        if at_rest or (pending >= self.accel_cap).all():
            self.accel_cap, self._pending_accel_cap = pending, None

    def hold_duration(self, now: float) -> float:
        return 0.0 if self._hold_since is None else max(now - self._hold_since, 0.0)

    def _count(self, kind: str, interventions: list[str]) -> None:
        self.counters[kind] = self.counters.get(kind, 0) + 1
        interventions.append(kind)

    def enable(self, now: float, measured, keep=None) -> None:
        """Arm from the measured pose (at rest). A no-op while already armed. ``keep``: a pose
        whose finite entries replace the measured ones as the start (the grippers' last commands:
        re-arming mid-grasp must not open a closed gripper)."""
        if self._estop:
            raise ArmingError("e-stop is latched: reset it before enabling")
        if self._mode in _ARMED:
            return
        pose = np.asarray(measured, dtype=np.float64) if measured is not None else None
        if pose is None or pose.shape != self.limits.lower.shape:
            raise ArmingError(f"measured pose must have shape {self.limits.lower.shape}, got "
                              f"{None if pose is None else pose.shape}")
        if not np.isfinite(pose).all():
            raise ArmingError("measured pose holds non-finite values")
        if not math.isfinite(now):
            raise ArmingError(f"now must be finite, got {now!r}")
        # The first step starts at rest, so it may move at most min(step, accel) back into range.
        first_step = np.minimum(self._ramp_step_cap, self.accel_cap)
        outside = np.maximum(pose - self.limits.upper, self.limits.lower - pose)
        far = np.nonzero(outside > first_step)[0]
        if far.size:
            i = far[0]
            raise ArmingError(f"{self.limits.names[i]} measured at {pose[i]:.4f} is outside the safe range "
                              f"[{self.limits.lower[i]:.4f}, {self.limits.upper[i]:.4f}]: move it inside first")
        start = pose.copy()
        if keep is not None:
            kept = np.asarray(keep, dtype=np.float64)
            use = np.isfinite(kept) & (kept >= self.limits.lower) & (kept <= self.limits.upper)
            start[use] = kept[use]
        self._command = start
        self._velocity = np.zeros_like(pose)
        self._ramp_end = now + self.limits.soft_start_time
        self._mode = RAMPING if self.limits.soft_start_time > 0 else RUNNING
        self._hold_since = None
        self._settled = False
        self._last_target = None
        self.fault_reason = ""

    def disable(self) -> None:
        """Stop emitting; the next session starts from the measured pose again."""
        self._mode = DISARMED
        self._command = self._velocity = None
        self._hold_since = None

    def set_estop(self, active: bool) -> None:
        """Latch (stop from the next step on, see the module docstring) or reset (which disarms)."""
        if active and not self._estop:
            self.counters["estop_latched"] = self.counters.get("estop_latched", 0) + 1
            self._stop_fresh = True
        elif not active and self._estop:
            self.disable()
        self._estop = bool(active)

    def _fault(self, reason: str, interventions: list[str]) -> StepResult:
        """Stop: this tick repeats the last command, the next ones settle (see the docstring)."""
        self._count(reason, interventions)
        self.fault_reason = reason
        self._mode = FAULT
        self._hold_since = None
        self._stop_fresh = True
        return self._stop_step(None, interventions)

    def _stop_step(self, tracked, interventions: list[str]) -> StepResult:
        """One tick of a stop (e-stop or fault): zero velocity on the first, then settle the arm
        joints onto the measured pose within the caps, and hold."""
        self._last_target = None
        if self._stop_fresh:
            self._stop_fresh = False
            self._velocity = np.zeros_like(self._command)
            # Only a session's start pose may lie outside the range (by less than one first step,
            # see enable): a stop before the first command brings it inside from rest.
            self._command = np.clip(self._command, self.limits.lower, self.limits.upper)
            return StepResult(self._command.copy(), self.state, interventions)
        desired = self._command.copy()
        if tracked is not None and self.track:
            gap = np.abs(tracked - self._command)
            mask = True if self._estop else self._stop_mask
            settle = mask & (gap > self._settle_deadband) & (gap <= 2.0 * self.limits.tracking)
            desired[settle] = np.clip(tracked[settle], self.limits.lower[settle], self.limits.upper[settle])
        if np.array_equal(desired, self._command) and not self._velocity.any():
            return StepResult(self._command.copy(), self.state, interventions)
        return self._emit(desired, None, [])

    # --- the tick ---------------------------------------------------------------------------

    def step(self, now: float, target, measured, hold_reason: str | None = None) -> StepResult:
        """One tick: the command to send now (None = nothing), given the policy target (None when
        there is none; `hold_reason` says why, e.g. 'hold_stale') and the measured pose."""
        interventions: list[str] = []
        self._apply_pending_accel()
        if self._command is None or self._mode == DISARMED:
            return StepResult(None, self.state, interventions)

        tracked = None
        if measured is not None:
            tracked = np.asarray(measured, dtype=np.float64)
            if tracked.shape != self._command.shape or not np.isfinite(tracked).all():
                tracked = None
        desired = None
        if self._estop or self._mode == FAULT:
            if self._estop:
                self._count("estop", interventions)
            return self._stop_step(tracked, interventions)
        else:
            if target is None:
                reason = hold_reason or "hold_no_target"
            elif tracked is None:
                reason = "hold_measured_invalid"
            else:
                desired = np.asarray(target, dtype=np.float64)
                reason = None
                if desired.shape != self._command.shape:
                    reason, desired = "bad_target_shape", None
                elif not np.isfinite(desired).all():
                    reason, desired = "non_finite", None
            if desired is None:
                self._last_target = None
                self._count(reason, interventions)
                if self._hold_since is None:
                    self._hold_since = now
                if now - self._hold_since >= self.limits.hold_fault_timeout:
                    return self._fault("fault_hold_timeout", interventions)
                self._mode = HOLDING
            else:
                self._hold_since = None
                self._mode = RAMPING if now < self._ramp_end else RUNNING
        return self._emit(desired, tracked, interventions)

    def _emit(self, desired, tracked, interventions: list[str]) -> StepResult:
        command, velocity = self._command, self._velocity
        accel = self.accel_cap
        step_cap = self._ramp_step_cap if self._mode == RAMPING else self.step_cap
        brake = velocity - np.minimum(np.maximum(velocity, -accel), accel)

        # Row 0: bounds on u; row 1: bounds on -u (the mirrored lower side).
        motion = np.minimum(self._mirror * velocity + accel, step_cap)
        room = _brake_room(self._mirrored_limits - self._mirror * command, accel)
        bounds = np.minimum(motion, room)
        if self._settled:
            # Mathematically the braking step is always inside; this absorbs float rounding.
            bounds = np.maximum(bounds, self._mirror * brake)

        step = brake if desired is None else self._approach_step(desired, command, accel)
        clipped = np.maximum(np.minimum(step, bounds[0]), -bounds[1])
        if desired is not None:
            cut = self._mirror * step > bounds
            if cut.any():
                self._count_binding(cut, room <= motion, step_cap <= self._mirror * velocity + accel, interventions)
        if tracked is not None and self.track:
            track = self._mirror * (tracked - command) + self.limits.tracking
            if (track + bounds[::-1]).min() < 0.0:  # an interval with low > high
                return self._fault("fault_tracking", interventions)
            narrowed = np.minimum(bounds, track)
            bounded = np.maximum(np.minimum(clipped, narrowed[0]), -narrowed[1])
            if (bounded != clipped).any():
                self._count("cap_tracking", interventions)
            clipped = bounded

        new_command = command + clipped
        self._velocity = new_command - command
        self._command = new_command
        self._settled = True
        return StepResult(new_command.copy(), self.state, interventions)

    def _approach_step(self, desired, command, accel) -> np.ndarray:
        """The step that follows the target without overshooting it: move with the target's own
        motion (w, its change since the last tick) and close the remaining gap no faster than
        the acceleration limit can stop, so a jump in the target is approached, not swung past."""
        # Targets beyond the range are clamped anyway; pulling them into a box three ranges wide
        # first keeps every difference below finite (1e308 - (-1e308) would overflow).
        desired = np.minimum(np.maximum(desired, self._wide_lower), self._wide_upper)
        motion = np.zeros_like(desired) if self._last_target is None else desired - self._last_target
        self._last_target = desired
        gap = desired - command - motion
        return motion + np.copysign(_brake_room(np.abs(gap), accel), gap)

    def _count_binding(self, cut, position_tighter, velocity_tighter, interventions) -> None:
        """Name the bounds that cut the step: position (incl. braking room), velocity, acceleration."""
        by_position = cut & position_tighter
        by_motion = cut & ~position_tighter
        if by_position.any():
            self._count("clamp_position", interventions)
        if (by_motion & velocity_tighter).any():
            self._count("cap_velocity", interventions)
        if (by_motion & ~velocity_tighter).any():
            self._count("cap_acceleration", interventions)
