"""The arm guard's core: what it forwards, what it refuses, when it holds and latches, and what
re-arming needs. The property test drives it with adversarial streams and checks the invariants
its docstring states on every goal it sends."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vla_ros.control.guard import ARMED, LATCHED, WAITING, Guard, GuardLimits
from vla_ros.robot.profile import load_profile

PROFILE = load_profile("aloha_stationary")
DT = PROFILE.dt
N = PROFILE.joints_per_arm
ARM = tuple(range(N - 1))
GRIPPER = (N - 1,)
TIMEOUT, AGE = 0.1, 0.1


def make_guard(step_tolerance=2.0) -> tuple[Guard, GuardLimits]:
    limits = GuardLimits.from_profile(PROFILE, DT, step_tolerance)
    return Guard(limits, TIMEOUT, AGE), limits


def armed_guard(now=0.0):
    guard, limits = make_guard()
    pose = PROFILE.start_pose.copy()
    guard.on_measured(now, pose)
    assert guard.on_goal(now, 0, ARM, pose[None, :N - 1]) is not None
    return guard, limits, pose


def test_limits_come_from_the_profile():
    _, limits = make_guard(step_tolerance=1.5)
    np.testing.assert_allclose(limits.step, PROFILE.velocity_limit * DT * 1.5)
    np.testing.assert_allclose(limits.lower, PROFILE.position_lower + PROFILE.limit_margin)
    with pytest.raises(ValueError):
        GuardLimits.from_profile(PROFILE, DT, 0.5)


def test_first_goal_needs_a_fresh_measured_pose_and_starts_within_a_step_of_it():
    guard, limits = make_guard()
    pose = PROFILE.start_pose.copy()
    target = pose[:N - 1][None, :]
    assert guard.on_goal(0.0, 0, ARM, target) is None and guard.counts == {"refused:no_joint_states": 1}
    guard.on_measured(0.0, pose)
    assert guard.on_goal(0.5, 0, ARM, target) is None, "a measured pose 0.5 s old is not fresh"
    guard.on_measured(1.0, pose)
    far = target.copy()
    far[0, 1] += 1.5 * limits.step[1]
    assert guard.on_goal(1.0, 0, ARM, far) is None and "measured pose" in guard.last_refusal
    assert guard.state == WAITING
    near = target.copy()
    near[0, 1] += 0.9 * limits.step[1]
    sent = guard.on_goal(1.0, 0, ARM, near)
    assert guard.state == ARMED
    expected = pose.copy()
    expected[1] = near[0, 1]
    np.testing.assert_array_equal(sent, expected)


def test_out_of_limit_and_over_cap_goals_are_refused_and_the_last_goal_stays():
    guard, limits, pose = armed_guard()
    before = guard.goal.copy()
    outside = pose[:N - 1].copy()
    outside[2] = PROFILE.position_upper[2]  # on the hardware limit: inside the margin
    assert guard.on_goal(0.01, 0, ARM, outside[None]) is None and "limits minus margin" in guard.last_refusal
    jump = pose[:N - 1].copy()
    jump[0] += 2.5 * limits.step[0]
    assert guard.on_goal(0.02, 0, ARM, jump[None]) is None and "cap" in guard.last_refusal
    nan = pose[:N - 1].copy()
    nan[3] = np.nan
    assert guard.on_goal(0.03, 0, ARM, nan[None]) is None
    two_points = np.stack([pose[:N - 1], pose[:N - 1]])
    assert guard.on_goal(0.03, 0, ARM, two_points) is None
    np.testing.assert_array_equal(guard.goal, before)
    assert guard.counts["refused:limits"] == guard.counts["refused:step"] == 1
    assert guard.counts["refused:non_finite"] == guard.counts["refused:not_one_point"] == 1
    # Steps are measured from the last goal sent, joint by joint, arm by arm.
    step = pose[N:].copy()
    step[-1] += 0.9 * limits.step[N + N - 1]
    assert guard.on_goal(0.04, 1, GRIPPER, step[-1:][None]) is not None
    assert guard.goal[2 * N - 1] == pytest.approx(step[-1])


def test_timeout_holds_the_measured_pose_then_latches_until_rearmed():
    guard, limits, pose = armed_guard()
    assert guard.deadline() == pytest.approx(TIMEOUT)
    assert guard.check_timeout(0.099) is None
    moved = pose + 0.01  # the arm is not exactly at the last goal (sag, tracking error)
    guard.on_measured(0.09, moved)
    hold = guard.check_timeout(0.1)
    np.testing.assert_array_equal(hold, moved)
    assert guard.state == LATCHED and "no valid command" in guard.reason
    assert guard.counts["latches:timeout"] == 1 and guard.counts["holds"] == 1
    assert guard.on_goal(0.11, 0, ARM, moved[None, :N - 1]) is None, "forwarded while latched"
    assert guard.deadline() is None
    ok, message = guard.rearm(0.5)
    assert not ok and "joint states" in message
    guard.on_measured(0.5, moved)
    assert guard.rearm(0.5)[0] and guard.state == WAITING
    assert guard.on_goal(0.5, 0, ARM, moved[None, :N - 1]) is not None


def test_timeout_keeps_a_commanded_gripper_closed_and_the_estop_lets_go():
    guard, _, pose = armed_guard()
    closed = pose[N - 1] - 0.05
    assert guard.on_goal(0.02, 0, GRIPPER, np.array([[closed]])) is not None
    blocked = pose.copy()
    blocked[N - 1] += 0.2  # the fingers stopped on an object: measured wider than the goal
    guard.on_measured(0.1, blocked)
    hold = guard.check_timeout(0.13)
    assert hold[N - 1] == closed, "a timeout must not open a gripper that holds something"
    assert hold[2 * N - 1] == blocked[2 * N - 1], "an arm never commanded holds its measured pose"
    np.testing.assert_array_equal(hold[:N - 1], blocked[:N - 1])
    # After re-arming, the gripper is compared with the goal its driver still executes.
    assert guard.rearm(0.13)[0]
    assert guard.on_goal(0.14, 0, GRIPPER, np.array([[closed]])) is not None
    assert guard.set_estop(0.15, "service", True)[N - 1] == blocked[N - 1]


def test_after_a_rearm_a_gripper_may_resume_from_its_measured_opening_too():
    """A simulation reset (or an operator) moved a held gripper: its first goal after the re-arm
    starts where it is measured, not only at the goal the driver held; later goals are capped
    against the last goal again."""
    guard, limits, pose = armed_guard()
    held = pose[N - 1] - 0.05
    assert guard.on_goal(0.02, 0, GRIPPER, np.array([[held]])) is not None
    guard.on_measured(0.1, pose)
    assert guard.check_timeout(0.13) is not None and guard.state == LATCHED
    moved = pose.copy()
    moved[N - 1] = held + 0.5  # far from the held goal
    guard.on_measured(0.2, moved)
    assert guard.rearm(0.2)[0]
    assert guard.on_goal(0.21, 0, ARM, moved[None, :N - 1]) is not None
    assert guard.on_goal(0.21, 0, GRIPPER, np.array([[moved[N - 1]]])) is not None
    jump = moved[N - 1] - 3 * limits.step[N - 1]
    assert guard.on_goal(0.22, 0, GRIPPER, np.array([[jump]])) is None  # capped against the last goal


def test_no_fresh_pose_at_timeout_sends_nothing_but_latches():
    guard, _, _ = armed_guard()
    assert guard.check_timeout(0.5) is None
    assert guard.state == LATCHED and "nothing sent" in guard.reason


def test_hold_is_clipped_to_the_hardware_limits():
    guard, _, pose = armed_guard()
    beyond = pose.copy()
    beyond[N - 1] = PROFILE.position_upper[N - 1] + 0.01  # a gripper reading past fully open
    guard.on_measured(0.05, beyond)
    hold = guard.set_estop(0.06, "topic", True)
    assert hold[N - 1] == PROFILE.position_upper[N - 1]


def test_estop_latches_from_any_state_and_rearm_waits_for_every_release():
    guard, _ = make_guard()
    pose = PROFILE.start_pose.copy()
    assert guard.set_estop(0.0, "topic", True) is None, "no measured pose yet: nothing to hold"
    assert guard.state == LATCHED
    guard.on_measured(0.0, pose)
    np.testing.assert_array_equal(guard.set_estop(0.0, "service", True), pose)
    assert guard.set_estop(0.0, "service", True) is None, "a repeated assertion holds again"
    guard.set_estop(0.0, "service", False)
    ok, message = guard.rearm(0.0)
    assert not ok and "topic" in message
    guard.set_estop(0.0, "topic", False)
    assert guard.rearm(0.0) == (True, "re-armed: the first goal must be within the step cap of the measured pose")
    assert guard.counts["latches:estop"] == 2


goal_kinds = st.sampled_from(["follow"] * 10 + ["jump", "outside", "nan", "silence", "estop", "release",
                                               "rearm", "rearm", "stale"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), kinds=st.lists(goal_kinds, min_size=20, max_size=200))
def test_every_goal_sent_respects_the_invariants(seed, kinds):
    rng = np.random.default_rng(seed)
    guard, limits = make_guard()
    arm_pose = PROFILE.start_pose.copy()
    now, fresh = 0.0, True
    sent_reference = np.full(arm_pose.size, np.nan)  # the step reference, per joint
    sent = np.zeros(arm_pose.size, dtype=bool)  # joints the driver has been told something
    grippers = list(PROFILE.gripper_indices)

    def kept_grippers(pose):
        pose = pose.copy()
        pose[grippers] = np.where(sent[grippers], sent_reference[grippers], pose[grippers])
        return pose

    forwarded = 0
    for kind in kinds:
        now += DT * rng.uniform(0.5, 1.5)
        if kind == "silence":
            now += rng.uniform(0.0, 0.3)
        fresh = fresh if kind not in ("stale", "rearm") else kind == "rearm"
        if fresh:
            guard.on_measured(now, arm_pose + rng.normal(0, 0.005, arm_pose.size))
        state = guard.state
        deadline = guard.deadline()
        hold = guard.check_timeout(now)
        if deadline is not None and now >= deadline:
            assert guard.state == LATCHED, "the timeout fell due but the guard did not latch"
        elif hold is not None:
            raise AssertionError("a hold without a timeout")
        keep = hold is not None
        if kind == "estop" and hold is None:
            hold = guard.set_estop(now, "topic", True)
        elif kind == "release":
            guard.set_estop(now, "topic", False)
        elif kind == "rearm":
            guard.rearm(now)
        if hold is not None:
            expected = np.clip(guard.measured, limits.hardware_lower, limits.hardware_upper)
            np.testing.assert_array_equal(hold, kept_grippers(expected) if keep else expected)
            assert now - guard.measured_at <= AGE
            sent_reference, sent[:] = hold.copy(), True
            arm_pose = hold.copy()
        if kind not in ("follow", "jump", "outside", "nan"):
            continue
        arm_index = int(rng.integers(0, 2))
        joints = ARM if rng.random() < 0.5 else GRIPPER
        index = np.array(joints) + arm_index * N
        base = guard.goal[index] if np.all(np.isfinite(guard.goal[index])) else arm_pose[index]
        target = base + rng.uniform(-1, 1, len(joints)) * limits.step[index] * 0.9
        if kind == "jump":
            target = base + rng.choice([-1, 1], len(joints)) * limits.step[index] * rng.uniform(0.5, 5)
        elif kind == "outside":
            target = limits.upper[index] + rng.uniform(-0.01, 0.5, len(joints))
        elif kind == "nan":
            target = np.where(rng.random(len(joints)) < 0.5, np.nan, target)
        state = guard.state
        result = guard.on_goal(now, arm_index, joints, target[None])
        if result is None:
            continue
        forwarded += 1
        assert state != LATCHED, "forwarded while latched"
        assert np.all(np.isfinite(result[index]))
        assert np.all(result[index] >= limits.lower[index] - 1e-6) and np.all(result[index] <= limits.upper[index] + 1e-6)
        reference = kept_grippers(guard.measured) if state == WAITING else sent_reference
        assert np.all(np.abs(result[index] - reference[index]) <= limits.step[index] + 1e-6)
        if state == WAITING:
            assert now - guard.measured_at <= AGE
            sent_reference = reference.copy()
        sent_reference[index], sent[index] = result[index], True
        arm_pose = result.copy()
    assert guard.counts.get("forwarded", 0) == forwarded
