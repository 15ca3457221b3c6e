"""The control core shared by the ROS node and offline bag replay (a MoveIt-Servo-like loop).

Per tick: gate the inputs -> ask the chunk executor for the target one tick ahead -> the safety
filter turns it into the command to send (or a braking hold, or nothing). The caller owns
threads, clocks and messages; everything here is plain numpy and float seconds, so the same
object runs against live topics, a recorded bag or a test's synthetic stream.

Two clocks: `now` (the ROS clock, the clock of the header stamps) dates inputs and chunks; `steady`
(a monotonic clock; `now` when not given, e.g. in bag time) runs every safety duration (soft
start, hold timeout), so that a jump of the ROS clock neither disables nor triggers them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from vla_ros.control.chunks import BLEND_MODES, ChunkExecutor
from vla_ros.control.gating import GateResult, GatingConfig, InputGate
from vla_ros.control.safety import SafetyFilter, SafetyLimits


@dataclass(frozen=True)
class ControllerConfig:
    """Parameters of the control core (the ROS node maps its parameters onto these).

    dt: control period (s); None = the profile's (1 / control_rate_hz).
    max_joint_state_age, max_camera_age: hold when the newest input is older (s).
    max_camera_spread: hold when camera stamps differ by more (s).
    chunk_blend: 'ensemble' (ACT temporal ensembling), 'crossfade' or 'replace'.
    ensemble_weight: m in exp(-m * i), i = 0 for the oldest chunk ('ensemble' only).
    crossfade_ticks: ticks over which a new chunk takes over (or ramps in, for 'ensemble').
    max_chunks: live chunks kept at most (bounds the per-tick cost).
    soft_start_time: after enable, the velocity limit is scaled down for this long (s).
    soft_start_speed_scale: that scale, in (0, 1].
    hold_fault_timeout: holding longer than this faults; re-enable needed (s).
    velocity_scale, acceleration_scale: scales in (0, 1] on the profile's limits.
    track_measured: False when the arm does not follow the commands (dry runs, bag replay): no
        tracking bound, and stops hold the last command instead of settling onto the measured pose.
    """

    dt: float | None = None
    max_joint_state_age: float = 0.1
    max_camera_age: float = 0.15
    max_camera_spread: float = 0.1
    chunk_blend: str = "ensemble"
    ensemble_weight: float = 0.01
    # 10 ticks (0.2 s): with 5, consecutive one-step chunks of the shipped policy entered the blend
    # fast enough to put the acceleration cap on 9.5% of ticks, with 10 on 5.9%, same successes
    # (docs/experiments.md, "Demonstrations from rest, a slower ramp-in").
    crossfade_ticks: int = 10
    max_chunks: int = 16
    soft_start_time: float = 2.0
    soft_start_speed_scale: float = 0.25
    hold_fault_timeout: float = 2.0
    velocity_scale: float = 1.0
    acceleration_scale: float = 1.0
    track_measured: bool = True

    def __post_init__(self):
        def fail(name, requirement):
            raise ValueError(f"ControllerConfig.{name} must be {requirement}, got {getattr(self, name)!r}")

        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "chunk_blend":
                if value not in BLEND_MODES:
                    fail(f.name, f"one of {BLEND_MODES}")
            elif f.name in ("crossfade_ticks", "max_chunks"):
                minimum = 0 if f.name == "crossfade_ticks" else 1
                if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                    fail(f.name, f"an integer >= {minimum}")
            elif f.name == "dt" and value is None:
                continue
            elif f.name == "track_measured":
                if not isinstance(value, bool):
                    fail(f.name, "a bool")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                fail(f.name, "a finite number")
        positive = ("dt", "max_joint_state_age", "max_camera_age", "hold_fault_timeout")
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                fail(name, "> 0")
        for name in ("max_camera_spread", "soft_start_time"):
            if getattr(self, name) < 0:
                fail(name, ">= 0")
        for name in ("soft_start_speed_scale", "velocity_scale", "acceleration_scale"):
            if not 0 < getattr(self, name) <= 1:
                fail(name, "in (0, 1]")
        if abs(self.ensemble_weight) > 10:
            fail("ensemble_weight", "in [-10, 10]")


@dataclass
class TickResult:
    """command: the 14-vector to send now, None = publish nothing (disarmed, fault, ...).
    reasons: gate reasons and the interventions of this tick (empty when all is well).
    target: the chunk executor's target that the safety filter was given (None when holding), so
    that what the policy asked for can be told apart from what the filter made of it."""

    command: np.ndarray | None
    state: str
    reasons: tuple[str, ...]
    target: np.ndarray | None = None


class Controller:
    """Gate + chunk executor + safety filter for one robot profile."""

    def __init__(self, profile, config: ControllerConfig | None = None):
        self.profile = profile
        self.config = config = config or ControllerConfig()
        self.dt = config.dt if config.dt is not None else profile.dt
        self.gate = InputGate(GatingConfig(config.max_joint_state_age, config.max_camera_age,
                                           config.max_camera_spread),
                              [arm.name for arm in profile.arms], profile.camera_names)
        self.executor = ChunkExecutor(self.dt, config.chunk_blend, ensemble_weight=config.ensemble_weight,
                                      crossfade_ticks=config.crossfade_ticks, max_chunks=config.max_chunks,
                                      action_dim=profile.action_dim)
        self.limits = SafetyLimits.from_profile(
            profile,
            velocity=profile.velocity_limit * config.velocity_scale,
            acceleration=profile.acceleration_limit * config.acceleration_scale,
            soft_start_time=config.soft_start_time,
            soft_start_speed_scale=config.soft_start_speed_scale,
            hold_fault_timeout=config.hold_fault_timeout,
        )
        self.safety = SafetyFilter(self.limits, self.dt, track=config.track_measured)
        self._last_emitted: np.ndarray | None = None  # survives sessions: the grippers' last goals
        self._measured_at_emit: np.ndarray | None = None  # the measured pose when it was emitted
        self.chunk_counters: dict[str, int] = {}
        self.ticks = 0
        self.commands_emitted = 0
        self._last_now: float | None = None
        self._last_steady: float | None = None
        self._last_gate: GateResult | None = None
        self._last_chunk_latency = math.nan

    # --- commands from the operator -----------------------------------------------------------

    def enable(self, now: float, measured, steady: float | None = None) -> None:
        """Arm: ramp from the measured pose; a gripper that grasps (held wider than its last
        command) starts from that command, so re-arming mid-grasp keeps a closed gripper closed
        until a chunk moves it. Raises ArmingError (e-stop latched, bad pose)."""
        if not self.safety.armed:
            self.executor.clear()
        keep = None
        if self._last_emitted is not None and self._measured_at_emit is not None and measured is not None:
            # Only a gripper held open by something (measured wider than its last command, beyond
            # the deadband) and not moved since that command keeps it; one that moved (a
            # simulation reset, an operator) or is as closed as commanded starts where it is.
            keep = np.full(self.profile.action_dim, np.nan)
            grippers = list(self.profile.gripper_indices)
            deadband = self.profile.settle_deadband[grippers]
            last, seen = self._last_emitted[grippers], np.asarray(measured, dtype=np.float64)[grippers]
            grasping = seen > last + deadband
            # "Moved": further than the servo itself carries it in two ticks at full speed.
            travel = 2.0 * self.profile.velocity_limit[grippers] * self.dt
            unmoved = np.abs(seen - self._measured_at_emit[grippers]) <= deadband + travel
            keep[grippers] = np.where(grasping & unmoved, last, np.nan)
        self.safety.enable(now if steady is None else steady, measured, keep)

    def disable(self) -> None:
        self.safety.disable()
        self.executor.clear()

    def set_estop(self, active: bool) -> None:
        """Latch: this very tick on, only braking holds go out. Reset: disarmed, re-enable to move."""
        self.safety.set_estop(active)
        self.executor.clear()

    def set_scales(self, velocity_scale: float, acceleration_scale: float) -> None:
        """Scale the profile's velocity and acceleration limits while running (see SafetyFilter.set_limits)."""
        for name, value in (("velocity_scale", velocity_scale), ("acceleration_scale", acceleration_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        self.safety.set_limits(self.profile.velocity_limit * velocity_scale,
                               self.profile.acceleration_limit * acceleration_scale)

    def set_tracking(self, track: bool) -> None:
        """Whether the arm follows the commands (False: dry run); only while disarmed."""
        if self.safety.state != "disarmed":
            raise ValueError(f"tracking can change only while disarmed (now {self.safety.state})")
        if bool(track) != self.safety.track:
            self._last_emitted = self._measured_at_emit = None  # the grippers never got those commands
        self.safety.track = bool(track)

    def wants_chunks(self) -> bool:
        """Whether predicting is worth it now (armed); a plain read, safe without the lock."""
        return self.safety.armed

    # --- inputs -------------------------------------------------------------------------------

    def check_inputs(self, now: float, joint_state_stamps, camera_stamps) -> GateResult:
        return self.gate.check(now, joint_state_stamps or {}, camera_stamps or {})

    def planned_targets(self, capture_time: float, count: int) -> np.ndarray:
        """Up to `count` targets from `capture_time` on, one tick apart: what runs anyway while a
        chunk from that observation is computed (ChunkExecutor.plan). Without any chunk (just
        enabled, or ran out) the arm holds at its last command until one comes, so that command
        is the plan: a first chunk then starts from rest where the arm is. Empty when disarmed."""
        if not self.safety.armed:
            return np.zeros((0, self.profile.action_dim))
        held = self.safety.last_command
        if not self.executor.live_chunks and held is not None:
            return np.tile(held, (max(int(count), 0), 1))
        return self.executor.plan(capture_time, count)

    def on_chunk(self, chunk, capture_time: float, now: float | None = None) -> bool:
        """Queue a predicted chunk (capture_time: the GateResult's). Never raises: a rejected chunk
        is counted (chunks_rejected:<why>) and the executor keeps what it had."""
        if not self.safety.armed:
            self._count_chunk("chunks_ignored_not_armed")
            return False
        try:
            queued = self.executor.add_chunk(chunk, capture_time)
        except ValueError as exc:
            text = str(exc)
            why = "non_finite" if "non-finite" in text else "out_of_range" if "beyond" in text else "malformed"
            self._count_chunk(f"chunks_rejected:{why}")
            return False
        if not queued:
            self._count_chunk("chunks_rejected:expired")
            return False
        self._count_chunk("chunks_accepted")
        arrival = now if now is not None else self._last_now  # `now`: exact; else the last tick's
        if arrival is not None:
            self._last_chunk_latency = arrival - capture_time
        return True

    def _count_chunk(self, kind: str) -> None:
        self.chunk_counters[kind] = self.chunk_counters.get(kind, 0) + 1

    # --- the tick -----------------------------------------------------------------------------

    def tick(self, now: float, measured, joint_state_stamps, camera_stamps,
             steady: float | None = None) -> TickResult:
        """One control period: the command to publish now (None = nothing) and why."""
        self.ticks += 1
        self._last_now = now
        self._last_steady = now if steady is None else steady
        gate = self.check_inputs(now, joint_state_stamps, camera_stamps)
        self._last_gate = gate
        target, hold_reason = None, None
        if self.safety.armed:
            if not gate.ok:
                hold_reason = "hold_stale"
            else:
                target = self.executor.target(now)
                if target is None:
                    hold_reason = "hold_no_chunk"
        result = self.safety.step(now if steady is None else steady, target, measured, hold_reason)
        if result.command is not None:
            self.commands_emitted += 1
            self._last_emitted = result.command
            pose = None if measured is None else np.asarray(measured, dtype=np.float64)
            self._measured_at_emit = pose if pose is not None and pose.shape == result.command.shape else None
        if not self.safety.armed and self.executor.live_chunks:
            self.executor.clear()  # a fault leaves nothing to resume from
        return TickResult(result.command, result.state, gate.reasons + tuple(result.interventions), target)

    def diagnostics(self, now: float | None = None) -> dict:
        """A flat dict of state, counters and ages for /diagnostics and logs."""
        now = self._last_now if now is None else now
        covered = self.executor.covered_until()
        values = {
            "state": self.safety.state,
            "fault_reason": self.safety.fault_reason,
            "ticks": self.ticks,
            "commands_emitted": self.commands_emitted,
            "gate_ok": self._last_gate.ok if self._last_gate else False,
            "gate_reasons": ",".join(self._last_gate.reasons) if self._last_gate else "no tick yet",
            "chunks_live": self.executor.live_chunks,
            "chunk_time_left_s": (covered - now) if covered is not None and now is not None else 0.0,
            "last_chunk_latency_s": self._last_chunk_latency,
            "holding_s": self.safety.hold_duration(self._last_steady) if self._last_steady is not None else 0.0,
            "chunk_blend": self.executor.blend,
            "crossfade_ticks": self.executor.crossfade_ticks,
        }
        values.update(self.chunk_counters)
        values.update({f"interventions:{kind}": count for kind, count in sorted(self.safety.counters.items())})
        return values
