import math

import numpy as np
import pytest

from vla_ros.control.safety import ArmingError, SafetyFilter, SafetyLimits
from vla_ros.robot.profile import load_profile

PROFILE = load_profile("aloha_stationary")
DT = PROFILE.dt
STEP = PROFILE.velocity_limit * DT
ACCEL = PROFILE.acceleration_limit * DT * DT


def armed_filter(**overrides):
    limits = SafetyLimits.from_profile(PROFILE, **{"soft_start_time": 0.0, **overrides})
    safety = SafetyFilter(limits, DT)
    safety.enable(0.0, PROFILE.start_pose)
    return safety


def drive(safety, target, ticks, start=0.0, measured=None):
    """Step `ticks` times towards `target`; the arm follows exactly unless `measured` is given."""
    commands, results = [], []
    pose = PROFILE.start_pose.copy() if safety.last_command is None else safety.last_command
    for k in range(ticks):
        result = safety.step(start + (k + 1) * DT, target, pose if measured is None else measured)
        results.append(result)
        commands.append(result.command)
        if result.command is not None:
            pose = result.command
    return commands, results


def test_nothing_is_emitted_before_enable():
    safety = SafetyFilter(SafetyLimits.from_profile(PROFILE), DT)
    assert safety.state == "disarmed"
    assert safety.step(0.02, PROFILE.start_pose, PROFILE.start_pose).command is None


def test_first_command_is_within_one_step_of_the_measured_pose():
    measured = PROFILE.start_pose + 0.01
    safety = SafetyFilter(SafetyLimits.from_profile(PROFILE), DT)
    safety.enable(0.0, measured)
    command = safety.step(DT, measured + 1.0, measured).command
    assert (np.abs(command - measured) <= np.minimum(STEP, ACCEL) + 1e-12).all()


def test_soft_start_reaches_the_target_without_exceeding_the_reduced_speed():
    scale = 0.25
    safety = SafetyFilter(SafetyLimits.from_profile(PROFILE, soft_start_time=10.0, soft_start_speed_scale=scale), DT)
    safety.enable(0.0, PROFILE.start_pose)
    target = PROFILE.start_pose + np.where(np.arange(14) % 7 == 6, 0.3, 0.4)
    commands, results = drive(safety, target, 400)
    steps = np.abs(np.diff(np.array([PROFILE.start_pose] + commands), axis=0))
    assert (steps <= STEP * scale + 1e-12).all()
    np.testing.assert_allclose(steps.max(axis=0), STEP * scale, rtol=1e-9)  # it does use the reduced speed
    np.testing.assert_allclose(commands[-1], target, atol=1e-12)
    assert {r.state for r in results} == {"ramping"}
    # After the soft start the full speed is allowed.
    later = drive(safety, target + 0.5, 200, start=10.0)[0]
    assert np.abs(np.diff(np.array(later), axis=0)).max() > (STEP * scale).max() * 1.5


def test_position_limit_is_approached_with_braking_and_never_crossed():
    safety = armed_filter()
    upper = PROFILE.safe_upper()
    commands, results = drive(safety, upper + 5.0, 300)
    commands = np.array(commands)
    assert (commands <= upper + 1e-12).all()
    np.testing.assert_allclose(commands[-1], upper, atol=1e-9)
    assert safety.counters["clamp_position"] > 0 and safety.counters["cap_velocity"] > 0
    assert "clamp_position" in results[-1].interventions


def test_a_non_finite_target_holds_the_last_safe_command():
    safety = armed_filter()
    drive(safety, PROFILE.start_pose, 5)
    held = safety.last_command
    bad = PROFILE.start_pose.copy()
    bad[3] = math.nan
    result = safety.step(1.0, bad, held)
    assert result.state == "holding" and result.interventions == ["non_finite"]
    np.testing.assert_array_equal(result.command, held)
    result = safety.step(1.02, PROFILE.start_pose + 0.01, held)
    assert result.state == "running"  # re-armed by the next good target


def test_estop_stops_in_the_same_tick_and_latches_until_reset():
    safety = armed_filter()
    target = PROFILE.start_pose + 1.0
    commands, _ = drive(safety, target, 30)  # moving at speed now
    assert np.abs(commands[-1] - commands[-2]).max() > 0
    safety.set_estop(True)
    pose = commands[-1]
    for k in range(60):
        result = safety.step(1.0 + k * DT, target, pose)
        assert result.state == "estopped" and "estop" in result.interventions
        np.testing.assert_array_equal(result.command, commands[-1])  # no motion from this tick on
    with pytest.raises(ArmingError, match="e-stop"):
        safety.enable(3.0, pose)
    safety.set_estop(False)
    assert safety.state == "disarmed"
    assert safety.step(3.0, target, pose).command is None
    safety.enable(3.0, pose)
    assert safety.step(3.02, target, pose).command is not None


def test_estop_at_rest_emits_exactly_the_last_command():
    safety = armed_filter()
    commands, _ = drive(safety, PROFILE.start_pose, 3)
    safety.set_estop(True)
    result = safety.step(1.0, PROFILE.start_pose + 1.0, commands[-1])
    np.testing.assert_array_equal(result.command, commands[-1])


def test_hold_times_out_into_a_fault_that_needs_re_enable():
    safety = armed_filter(hold_fault_timeout=0.1)
    drive(safety, PROFILE.start_pose, 3)
    pose = safety.last_command
    states = [safety.step(1.0 + k * DT, None, pose, "hold_stale").state for k in range(7)]
    assert states[:5] == ["holding"] * 5 and states[5:] == ["fault", "fault"]
    assert safety.fault_reason == "fault_hold_timeout"
    result = safety.step(1.2, PROFILE.start_pose + 0.3, pose)  # fresh targets do not re-arm
    np.testing.assert_array_equal(result.command, pose)  # the stop holds where the arm is
    assert result.state == "fault"
    safety.enable(1.3, pose)
    assert safety.state == "running"
    assert safety.step(1.32, PROFILE.start_pose, pose).command is not None


def test_tracking_bound_caps_and_an_unreachable_measured_pose_faults():
    safety = armed_filter()
    pose = PROFILE.start_pose
    lagging = pose - PROFILE.tracking_limit + 0.001  # the arm lags almost a full tracking limit
    _, results = drive(safety, pose + 0.5, 40, measured=lagging)
    assert "cap_tracking" in results[-1].interventions
    assert (np.abs(safety.last_command - lagging) <= PROFILE.tracking_limit + 1e-12).all()
    before = safety.last_command
    result = safety.step(2.0, pose, pose + 2.0)  # the arm is somewhere the command cannot follow
    assert result.state == "fault" and safety.fault_reason == "fault_tracking"
    np.testing.assert_array_equal(result.command, before)  # stopped at once: the last command again


def settle(safety, measured, ticks, start=3.0):
    return [safety.step(start + k * DT, None, measured).command for k in range(ticks)]


@pytest.mark.parametrize("stop", ["estop", "fault"])
def test_a_stop_settles_the_arm_onto_the_measured_pose_within_the_caps(stop):
    """A blocked arm: the command ran 0.3 rad ahead. After the stop the goal comes back to where
    the arm is (the servo stops pushing), from rest, within the velocity and acceleration caps,
    and then stays; after a fault the gripper keeps its command (it may hold an object)."""
    safety = armed_filter(hold_fault_timeout=0.05)
    drive(safety, PROFILE.start_pose + 0.3, 60)
    command = safety.last_command
    blocked = command - np.where(np.arange(14) % 7 == 6, 0.2, 0.3)
    if stop == "estop":
        safety.set_estop(True)
    else:
        for k in range(5):
            safety.step(2.0 + k * DT, None, blocked, "hold_stale")
        assert safety.state == "fault"
        command = safety.last_command
    commands = np.array([command, *settle(safety, blocked, 150)])
    steps = np.diff(commands, axis=0)
    assert (np.abs(steps) <= STEP + 1e-12).all()
    second = np.diff(steps[1:], axis=0)  # from the first settling tick on
    assert (np.abs(second) <= ACCEL + 1e-12).all()
    arm = np.arange(14) % 7 != 6
    np.testing.assert_allclose(commands[-1][arm], blocked[arm], atol=PROFILE.settle_deadband[arm].max())
    if stop == "estop":  # a person pressed stop: the grippers' squeeze is released too
        np.testing.assert_allclose(commands[-1][~arm], blocked[~arm], atol=PROFILE.settle_deadband[~arm].max())
    else:  # the commander failed: the grippers keep holding what they hold
        np.testing.assert_array_equal(commands[-1][~arm], command[~arm])
    np.testing.assert_array_equal(commands[-1], commands[-2])  # at rest, held
    moved_towards = np.sign(steps[1:][:, arm].sum(axis=0))
    assert (moved_towards == np.sign(blocked - command)[arm]).all()  # no overshoot and back


def test_a_stop_ignores_an_implausible_measured_pose_and_dry_runs_do_not_track():
    safety = armed_filter()
    drive(safety, PROFILE.start_pose + 0.1, 30)
    command = safety.last_command
    safety.set_estop(True)
    garbage = command + 3.0 * PROFILE.tracking_limit
    for held in settle(safety, garbage, 20):
        np.testing.assert_array_equal(held, command)
    dry = SafetyFilter(SafetyLimits.from_profile(PROFILE, soft_start_time=0.0), DT, track=False)
    dry.enable(0.0, PROFILE.start_pose)
    far = PROFILE.start_pose - 1.0  # the arm never follows a dry run
    commands, results = drive(dry, PROFILE.start_pose + 0.4, 100, measured=far)
    assert {r.state for r in results} == {"running"}
    np.testing.assert_allclose(commands[-1], np.clip(PROFILE.start_pose + 0.4, dry.limits.lower, dry.limits.upper))


def test_re_arming_keeps_the_grippers_last_command():
    safety = armed_filter()
    drive(safety, PROFILE.start_pose, 2)
    measured = PROFILE.start_pose.copy()
    measured[[6, 13]] = 0.35  # an object keeps the fingers open; the command says closed
    keep = np.full(14, np.nan)
    keep[[6, 13]] = 0.0
    safety.disable()
    safety.enable(1.0, measured, keep)
    held = safety.step(1.02, None, measured, "hold_no_chunk").command
    assert held[6] == held[13] == 0.0
    np.testing.assert_array_equal(held[:6], measured[:6])


@pytest.mark.parametrize("measured,match", [
    (None, "shape"), (np.zeros(3), "shape"), (np.full(14, np.nan), "non-finite"),
    (PROFILE.start_pose + np.eye(14)[1] * 5.0, "left_shoulder"),
])
def test_enable_refuses_an_unusable_measured_pose(measured, match):
    safety = SafetyFilter(SafetyLimits.from_profile(PROFILE), DT)
    with pytest.raises(ArmingError, match=match):
        safety.enable(0.0, measured)
    assert safety.state == "disarmed"


def test_a_pose_just_outside_the_range_is_brought_inside_by_the_first_command():
    safety = SafetyFilter(SafetyLimits.from_profile(PROFILE, soft_start_time=0.0), DT)
    measured = PROFILE.start_pose.copy()
    measured[6] = -0.5 * ACCEL[6]  # gripper reading slightly below "closed"
    safety.enable(0.0, measured)
    command = safety.step(DT, PROFILE.start_pose, measured).command
    assert command[6] >= 0.0


@pytest.mark.parametrize("overrides,match", [
    ({"velocity": np.zeros(14)}, "velocity"), ({"lower": np.zeros(3)}, "lower"),
    ({"tracking": np.full(14, np.inf)}, "tracking"), ({"upper": PROFILE.safe_lower()}, "lower"),
    ({"soft_start_speed_scale": 0.0}, "soft_start_speed_scale"), ({"hold_fault_timeout": -1.0}, "hold_fault_timeout"),
    ({"soft_start_time": math.nan}, "soft_start_time"), ({"speed": 1.0}, "unknown field"),
])
def test_limits_validation_names_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        SafetyLimits.from_profile(PROFILE, **overrides)


def test_limits_come_from_the_profile_minus_margin():
    limits = SafetyLimits.from_profile(PROFILE)
    np.testing.assert_array_equal(limits.upper, PROFILE.position_upper - PROFILE.limit_margin)
    assert limits.names == PROFILE.vector_names
    assert limits.soft_start_time > 0 and limits.hold_fault_timeout > 0 and 0 < limits.soft_start_speed_scale < 1
