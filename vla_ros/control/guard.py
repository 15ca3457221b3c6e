"""The arm guard's decisions: the last hop between whatever commands the arms and their driver.

The guard sits beside the driver (vla_ros.ros.arm_guard) and does not trust its upstream (the
policy node, or anything else publishing on its input). Vectors follow the profile's convention
(per arm: joints in rad, then the gripper normalised to [0, 1]); times are seconds on a monotonic
clock, so no ROS-time jump can stretch or shorten a timeout.

States: ``waiting`` (forwarding allowed, nothing forwarded since start or re-arm), ``armed``
(forwarding, the command timeout runs) and ``latched`` (forwarding nothing until re-armed).

Guarantees, per joint, for every goal the guard sends to the driver:
  1. A forwarded goal is finite, inside the position limits minus margin, and within ``step``
     (velocity * dt * step_tolerance) of the last goal the guard sent for that joint; the first
     goal for a joint after start or re-arm is within ``step`` of a measured pose at most
     ``max_state_age`` old or, for a joint the guard has already commanded, of the goal its
     driver still executes (either is where the joint is or is being held: no jump). A goal
     that fails is refused, counted, and the driver keeps the last goal.
  2. A hold commands the measured pose (at most ``max_state_age`` old, clipped to the hardware
     position limits, beyond which the servo firmware ignores goals): where the arm is, so it
     never makes the arm jump and leaves no servo pushing towards a goal away from the arm. The
     e-stop's hold includes the grippers: a person stopping the robot gets a squeeze released.
     A timeout's hold keeps each gripper's last goal instead: the timeout means the commander
     fell silent, not that anyone wants to let go, and the grippers run current-limited, so
     the last goal squeezes with the force the policy chose; holding the measured opening
     would drop what a gripper holds (and re-enabling a policy, which resumes each gripper
     from its last command, would then jump).
  3. In ``armed``, when no goal has been forwarded for ``command_timeout``, the guard latches and
     holds (the caller checks at the deadline, :meth:`Guard.deadline`). An e-stop latches and
     holds from any state.
  4. While latched nothing from upstream is forwarded. Only :meth:`Guard.rearm` leaves the latch,
     and it is refused while any e-stop source is asserted or the measured pose is stale.

Why these can always be met: (1) is a filter; refusing is always possible, and the driver then
keeps the previous goal, which met (1) or (2) itself. (2) needs a fresh measured pose; when there
is none at latch time (the joint states stopped too) the guard sends nothing, so the driver keeps
the last goal, which by (1) is within ``step`` of the previous one: the latch still holds and the
reason says the pose was unknown. (3) and (4) only ever withhold goals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WAITING, ARMED, LATCHED = "waiting", "armed", "latched"
# A goal is compared with float rounding in mind: xs_sdk goals travel as float32.
ROUNDING = 1e-6


@dataclass(frozen=True)
class GuardLimits:
    """Per-joint bounds of the full vector: usable range (hardware limits minus margin), the
    hardware range (holds are clipped to it) and the largest step between consecutive goals."""

    lower: np.ndarray
    upper: np.ndarray
    hardware_lower: np.ndarray
    hardware_upper: np.ndarray
    step: np.ndarray
    names: tuple[str, ...]
    joints_per_arm: int
    grippers: tuple[int, ...]

    @classmethod
    def from_profile(cls, profile, dt: float, step_tolerance: float) -> GuardLimits:
        """step = the profile's velocity limit * dt * step_tolerance: the policy node already caps
        each tick at velocity * dt, so a tolerance of 2 lets one lost or merged message pass."""
        if not (math.isfinite(dt) and dt > 0 and math.isfinite(step_tolerance) and step_tolerance >= 1):
            raise ValueError(f"GuardLimits: dt must be > 0 and step_tolerance >= 1, got {dt!r}, {step_tolerance!r}")
        return cls(lower=profile.safe_lower(), upper=profile.safe_upper(),
                   hardware_lower=profile.position_lower, hardware_upper=profile.position_upper,
                   step=profile.velocity_limit * dt * step_tolerance, names=profile.vector_names,
                   joints_per_arm=profile.joints_per_arm, grippers=profile.gripper_indices)


class Guard:
    """The state machine; not thread-safe (the node serialises calls). Every method that may
    latch returns the hold to send (a full vector) or None when there is nothing to send."""

    def __init__(self, limits: GuardLimits, command_timeout: float, max_state_age: float):
        if not (command_timeout > 0 and max_state_age > 0):
            raise ValueError("Guard: command_timeout and max_state_age must be > 0")
        self.limits, self.command_timeout, self.max_state_age = limits, command_timeout, max_state_age
        self.state, self.reason = WAITING, "started: waiting for the first command"
        # The step reference per joint: the last goal sent, else the measured pose at arming.
        self.goal = np.full(limits.lower.size, np.nan)
        self.sent = np.zeros(limits.lower.size, dtype=bool)  # joints the guard has commanded
        self.open = np.ones(limits.lower.size, dtype=bool)  # joints awaiting their first goal since (re-)arming
        self.measured: np.ndarray | None = None
        self.measured_at = -math.inf
        self.last_forward_at: float | None = None
        self.estop_sources: set[str] = set()
        self.counts: dict[str, int] = {}
        self.last_refusal = ""

    # --- inputs ---------------------------------------------------------------------------

    def on_measured(self, now: float, pose: np.ndarray) -> None:
        pose = np.asarray(pose, dtype=np.float64)
        if pose.shape == self.goal.shape and np.all(np.isfinite(pose)):
            self.measured, self.measured_at = pose.copy(), now

    def fresh_measured(self, now: float) -> np.ndarray | None:
        if self.measured is None or now - self.measured_at > self.max_state_age:
            return None
        return self.measured

    def on_goal(self, now: float, arm_index: int, joints: tuple[int, ...], targets: np.ndarray) -> np.ndarray | None:
        """A goal the driver's receiver accepted: the full goal vector to forward, or None
        (refused and counted; :attr:`last_refusal` says why)."""
        if self.state == LATCHED:
            return self._refuse("latched", f"latched ({self.reason}): re-arm to forward")
        targets = np.asarray(targets, dtype=np.float64)
        if targets.ndim != 2 or targets.shape[0] != 1:
            return self._refuse("not_one_point", f"a goal of {targets.shape[0] if targets.ndim == 2 else '?'} "
                                "points: the guard forwards one-point goals only")
        index = np.asarray(joints, dtype=int) + arm_index * self.limits.joints_per_arm
        values = targets[0]
        if not np.all(np.isfinite(values)):
            return self._refuse("non_finite", "non-finite goal")
        lower, upper = self.limits.lower[index], self.limits.upper[index]
        outside = np.nonzero((values < lower - ROUNDING) | (values > upper + ROUNDING))[0]
        if outside.size:
            k = outside[0]
            return self._refuse("limits", f"{self.limits.names[index[k]]} = {values[k]:.4f} outside "
                                          f"[{lower[k]:.4f}, {upper[k]:.4f}] (limits minus margin)")
        measured = self.fresh_measured(now)
        opening = self.open[index]
        if self.state == WAITING and measured is None:
            return self._refuse("no_joint_states", "no fresh joint states: the first goal must start "
                                                   "from the measured pose")
        # What the driver executes: the goals sent; armed, the goal vector starts at the measured
        # pose, so a joint not commanded yet is compared with where it was at arming.
        held = self.goal[index] if self.state == ARMED else np.where(self.sent[index], self.goal[index],
                                                                      measured[index])
        jump = np.abs(values - held)
        if opening.any() and measured is not None:
            jump = np.where(opening, np.minimum(jump, np.abs(values - measured[index])), jump)
        over = np.nonzero(jump > self.limits.step[index] + ROUNDING)[0]
        if over.size:
            k = over[0]
            origin = "the measured pose or the goal held" if opening[k] else "the last goal"
            return self._refuse("step", f"{self.limits.names[index[k]]} jumps {jump[k]:.4f} from {origin} "
                                        f"(cap {self.limits.step[index[k]]:.4f})")
        if self.state == WAITING:
            self.goal = self._keep_gripper_goals(measured)
            self._enter(ARMED, "forwarding")
        self.goal[index] = values
        self.sent[index] = True
        self.open[index] = False
        self.last_forward_at = now
        self._count("forwarded")
        return self.goal.copy()

    # --- stops ----------------------------------------------------------------------------

    def deadline(self) -> float | None:
        """When the command timeout falls due (armed only)."""
        if self.state != ARMED or self.last_forward_at is None:
            return None
        return self.last_forward_at + self.command_timeout

    def check_timeout(self, now: float) -> np.ndarray | None:
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return None
        return self._latch(now, f"no valid command for {now - self.last_forward_at:.3f} s", "timeout",
                           keep_grippers=True)

    def set_estop(self, now: float, source: str, asserted: bool) -> np.ndarray | None:
        """Assert or release one e-stop source (the topic, the service). Asserting latches and
        holds, once: a source that repeats its assertion changes nothing. Releasing only allows
        a re-arm."""
        if not asserted:
            self.estop_sources.discard(source)
            return None
        if source in self.estop_sources:
            return None  # already latched and held
        self.estop_sources.add(source)
        return self._latch(now, f"e-stop ({source})", "estop", keep_grippers=False)

    def rearm(self, now: float) -> tuple[bool, str]:
        if self.estop_sources:
            return False, f"refused: e-stop asserted by {', '.join(sorted(self.estop_sources))}; release it first"
        if self.fresh_measured(now) is None:
            return False, "refused: no fresh joint states from every arm"
        if self.state != LATCHED:
            return True, f"already {self.state}"
        self._enter(WAITING, "re-armed: waiting for the first command")
        self.open[:] = True
        self._count("rearms")
        return True, "re-armed: the first goal must be within the step cap of the measured pose"

    def _keep_gripper_goals(self, pose: np.ndarray) -> np.ndarray:
        """``pose`` with each gripper the guard has commanded at its last goal."""
        pose = pose.copy()
        grippers = list(self.limits.grippers)
        pose[grippers] = np.where(self.sent[grippers], self.goal[grippers], pose[grippers])
        return pose

    def _latch(self, now: float, reason: str, kind: str, keep_grippers: bool) -> np.ndarray | None:
        hold = self.fresh_measured(now)
        if hold is not None:
            hold = np.clip(hold, self.limits.hardware_lower, self.limits.hardware_upper)
            if keep_grippers:
                hold = self._keep_gripper_goals(hold)
            self.goal = hold.copy()
            self.sent[:] = True
            self._count("holds")
        else:
            reason += "; no fresh joint states: nothing sent, the driver keeps the last goal"
        self._count(f"latches:{kind}")
        self._enter(LATCHED, reason)
        return hold

    # --- bookkeeping ----------------------------------------------------------------------

    def _enter(self, state: str, reason: str) -> None:
        self.state, self.reason = state, reason

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def _refuse(self, kind: str, text: str) -> None:
        self._count(f"refused:{kind}")
        self.last_refusal = text
        return None
