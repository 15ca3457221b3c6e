"""Property tests: whatever goes in, every emitted command respects position limits (minus
margin), the step and acceleration caps between consecutive commands of a session (enable to
disable / e-stop reset), the tracking bound against the measured pose of its tick while armed,
and is finite. A stop (e-stop or fault) stops at once (the same command again), then settles
within the caps onto a plausible measured pose. Streams are adversarial:
huge values, NaN/inf, sign flips, teleports, random measured poses, random latencies and chunk
overlaps, e-stop toggles, stale periods, disable/enable. Each test counts the ticks it generated."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vla_ros.control.chunks import BLEND_MODES
from vla_ros.control.controller import Controller, ControllerConfig
from vla_ros.control.safety import ArmingError, SafetyFilter, SafetyLimits
from vla_ros.robot.profile import load_profile

PROFILE = load_profile("aloha_stationary")
DT = PROFILE.dt
TOLERANCE = 1e-9  # float rounding only; a real violation is many orders larger

knobs = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "adversity": st.floats(0.0, 0.3),      # chance per tick of a hostile target / chunk
    "teleport": st.floats(0.0, 0.05),      # chance per tick that the measured pose jumps
    "noise": st.floats(0.0, 1.2),          # measured-pose noise, as a fraction of the tracking limit
    "estop": st.floats(0.0, 0.03),         # chance per tick of an e-stop toggle
    "stale": st.floats(0.0, 0.04),         # chance per tick of a stale period starting
    "drift": st.floats(0.001, 0.2),        # target random-walk step (rad per tick)
})


class Invariants:
    """Checks every emitted command of a stream against the limits, session by session."""

    def __init__(self, limits: SafetyLimits, dt: float):
        self.limits = limits
        self.step_cap = limits.velocity * dt
        self.accel_cap = limits.acceleration * dt * dt
        self.previous = self.before_previous = None
        self.emitted = 0
        self.moving = 0  # ticks that followed a target (ramping/running)

    def session_started(self, start):
        """After enable the command is at rest at its start (the measured pose; grippers may keep
        their last command)."""
        self.previous = self.before_previous = np.array(start, dtype=np.float64)

    def session_ended(self):
        self.previous = self.before_previous = None

    def check(self, command, measured, state):
        self.moving += state in ("ramping", "running")
        if command is None:
            return
        self.emitted += 1
        assert self.previous is not None, "a command outside an armed session"
        assert np.isfinite(command).all(), command
        assert (command >= self.limits.lower - TOLERANCE).all(), command - self.limits.lower
        assert (command <= self.limits.upper + TOLERANCE).all(), self.limits.upper - command
        stopping = state in ("estopped", "fault")
        if measured is not None and np.isfinite(measured).all() and not stopping:
            assert (np.abs(command - measured) <= self.limits.tracking + TOLERANCE).all()
        step = command - self.previous
        if stopping and (step == 0).all():
            pass  # a stop stops now: the last command again, exempt from the acceleration cap only
        else:
            assert (np.abs(step) <= self.step_cap + TOLERANCE).all(), step
            second = step - (self.previous - self.before_previous)
            assert (np.abs(second) <= self.accel_cap + TOLERANCE).all(), second
        self.before_previous, self.previous = self.previous, np.array(command)


def hostile_vector(rng, base):
    """Huge values, NaN/inf, sign flips, teleports: one of them, on some or all joints."""
    kind = rng.integers(6)
    out = np.array(base, dtype=np.float64)
    joints = rng.random(out.size) < 0.5 if rng.random() < 0.5 else np.ones(out.size, bool)
    if kind == 0:
        out[joints] = rng.choice([1e6, -1e6, 1e300, -1e300, 1.7e308], joints.sum())
    elif kind == 1:
        out[joints] = rng.choice([np.nan, np.inf, -np.inf], joints.sum())
    elif kind == 2:
        out[joints] = -out[joints]
    elif kind == 3:
        out[joints] = rng.uniform(-4.0, 4.0, joints.sum())
    elif kind == 4:
        out[joints] += rng.choice([-1.0, 1.0], joints.sum()) * rng.uniform(0.05, 2.0)
    else:
        out[joints] = rng.choice([0.0, 1e-300, -5e-324], joints.sum())
    return out


SAFE_LOWER, SAFE_UPPER = PROFILE.safe_lower(), PROFILE.safe_upper()


def next_measured(rng, knob, command, measured):
    """The arm follows the command with noise; sometimes it teleports or reads garbage. Without
    commands it rests inside its range (put back there by the operator after a teleport)."""
    if command is None:
        rest = np.clip(np.nan_to_num(measured, nan=0.0), SAFE_LOWER, SAFE_UPPER)
        return rest + rng.uniform(-1e-3, 1e-3, PROFILE.action_dim)
    if rng.random() < knob["teleport"]:
        choice = rng.integers(3)
        if choice == 0:
            return rng.uniform(-3.5, 3.5, PROFILE.action_dim)
        if choice == 1:
            return np.full(PROFILE.action_dim, np.nan)
        return measured + rng.normal(0, 0.3, PROFILE.action_dim)
    return command + rng.uniform(-1, 1, PROFILE.action_dim) * PROFILE.tracking_limit * knob["noise"]


def run_filter_stream(knob, ticks):
    rng = np.random.default_rng(knob["seed"])
    limits = SafetyLimits.from_profile(PROFILE, soft_start_time=float(rng.choice([0.0, 0.1, 0.5])),
                                       hold_fault_timeout=float(rng.choice([0.05, 0.3, 2.0])))
    safety = SafetyFilter(limits, DT)
    check = Invariants(limits, DT)
    now = 50.0
    measured = PROFILE.start_pose + rng.uniform(-0.03, 0.03, PROFILE.action_dim)
    target = PROFILE.start_pose.copy()
    command = None
    stale_left = 0
    for _ in range(ticks):
        now += DT
        if safety.state == "estopped" and rng.random() < 0.1:
            safety.set_estop(False)
            check.session_ended()
        elif rng.random() < knob["estop"]:
            safety.set_estop(True)
        if rng.random() < 0.004:
            safety.disable()
            check.session_ended()
        if safety.state in ("disarmed", "fault") and rng.random() < 0.2:
            try:
                safety.enable(now, measured)
                check.session_started(safety.last_command)
            except ArmingError:
                pass
        target = np.clip(target + rng.normal(0, knob["drift"], target.size), -3.5, 3.5)
        given_target = hostile_vector(rng, target) if rng.random() < knob["adversity"] else target
        if stale_left == 0 and rng.random() < knob["stale"]:
            stale_left = int(rng.integers(1, 30))
        hold_reason = None
        if stale_left:
            stale_left -= 1
            given_target, hold_reason = None, str(rng.choice(["hold_stale", "hold_no_chunk"]))
        elif rng.random() < 0.002:
            given_target = np.zeros(3)  # wrong shape
        measured = next_measured(rng, knob, command, measured)
        result = safety.step(now, given_target, measured, hold_reason)
        if result.command is None and command is not None and safety.state == "disarmed":
            check.session_ended()
        check.check(result.command, measured, result.state)
        command = result.command
    return check.moving


def run_controller_stream(knob, ticks):
    rng = np.random.default_rng(knob["seed"])
    config = ControllerConfig(chunk_blend=str(rng.choice(BLEND_MODES)), crossfade_ticks=int(rng.integers(0, 8)),
                              soft_start_time=float(rng.choice([0.0, 0.2])), hold_fault_timeout=0.3,
                              max_chunks=int(rng.integers(1, 6)))
    controller = Controller(PROFILE, config)
    check = Invariants(controller.limits, DT)
    now = 100.0
    measured = PROFILE.start_pose + rng.uniform(-0.02, 0.02, PROFILE.action_dim)
    command = None
    plan_phase = rng.uniform(0, 2 * math.pi, PROFILE.action_dim)
    pending = []  # (arrival tick, chunk, capture time)
    stale_left = 0
    for tick in range(ticks):
        now += DT
        if controller.safety.state == "estopped" and rng.random() < 0.1:
            controller.set_estop(False)
            check.session_ended()
        elif rng.random() < knob["estop"]:
            controller.set_estop(True)
        if controller.safety.state in ("disarmed", "fault") and rng.random() < 0.2:
            try:
                controller.enable(now, measured)
                check.session_started(controller.safety.last_command)
            except ArmingError:
                pass
        if rng.random() < 0.25:  # a prediction: random horizon, latency and overlap
            capture = now - rng.uniform(0, 0.06)
            horizon = int(rng.integers(1, 25))
            times = capture + DT * np.arange(horizon)
            chunk = PROFILE.start_pose + 0.4 * np.sin(times[:, None] * 1.5 + plan_phase)
            chunk += rng.normal(0, 0.01, chunk.shape)
            if rng.random() < knob["adversity"]:
                chunk = np.stack([hostile_vector(rng, row) for row in chunk])
                if rng.random() < 0.1:
                    chunk = chunk[:, :5]
                if rng.random() < 0.1:
                    capture = float(rng.choice([np.nan, capture + 5.0, capture - 5.0]))
            pending.append((tick + int(rng.integers(0, 12)), chunk, capture))
        for item in [p for p in pending if p[0] <= tick]:
            pending.remove(item)
            controller.on_chunk(item[1], item[2])
        if stale_left == 0 and rng.random() < knob["stale"]:
            stale_left = int(rng.integers(1, 25))
        joint_stamps = {arm.name: now - 0.005 for arm in PROFILE.arms}
        camera_stamps = {name: now - 0.03 for name in PROFILE.camera_names}
        if stale_left:
            stale_left -= 1
            victim = rng.integers(3)
            if victim == 0:
                joint_stamps[PROFILE.arms[0].name] = now - 1.0
            elif victim == 1:
                camera_stamps[PROFILE.camera_names[-1]] = None
            else:
                camera_stamps[PROFILE.camera_names[0]] = now - 0.5
        measured = next_measured(rng, knob, command, measured)
        result = controller.tick(now, measured, joint_stamps, camera_stamps)
        if result.command is None and controller.safety.state == "disarmed":
            check.session_ended()
        check.check(result.command, measured, result.state)
        command = result.command
    return check.moving


def run_counted(stream, examples, ticks):
    """Run `stream` under hypothesis; return (ticks generated, ticks spent following targets)."""
    counts = []

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(knobs)
    def property_holds(knob):
        counts.append(stream(knob, ticks))

    property_holds()
    return len(counts) * ticks, sum(counts)


@pytest.mark.slow
def test_safety_filter_never_emits_an_unsafe_command():
    generated, moving = run_counted(run_filter_stream, examples=150, ticks=400)
    assert generated >= 60_000
    assert moving > generated // 4  # the streams do arm and move, not only hold and fault


@pytest.mark.slow
def test_controller_never_emits_an_unsafe_command():
    generated, moving = run_counted(run_controller_stream, examples=140, ticks=320)
    assert generated >= 40_000  # with the filter test: over 100,000 generated ticks
    assert moving > generated // 4


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=14, max_size=14),
                min_size=1, max_size=40),
       st.lists(st.floats(-0.5, 0.5), min_size=14, max_size=14))
def test_explicit_hostile_targets_are_contained(targets, start_offset):
    """Hypothesis-chosen raw values (any float) as targets, from a random start pose."""
    limits = SafetyLimits.from_profile(PROFILE, soft_start_time=0.0)
    safety = SafetyFilter(limits, DT)
    measured = np.clip(PROFILE.start_pose + np.array(start_offset), limits.lower, limits.upper)
    safety.enable(0.0, measured)
    check = Invariants(limits, DT)
    check.session_started(measured)
    for k, target in enumerate(targets):
        result = safety.step((k + 1) * DT, np.array(target), measured)
        check.check(result.command, measured, result.state)
        if result.command is not None:
            measured = result.command
