import json
import math

import numpy as np
import pytest

from vla_ros.control import bench
from vla_ros.control.controller import Controller, ControllerConfig
from vla_ros.control.safety import ArmingError
from vla_ros.robot.profile import load_profile

PROFILE = load_profile("aloha_stationary")
DT = PROFILE.dt
STEP = PROFILE.velocity_limit * DT
ACCEL = PROFILE.acceleration_limit * DT * DT
DIRECTION = np.tile([0.3, -0.2, 0.2, 0.3, 0.25, -0.3, 0.1], 2)  # rad/s (gripper: per s)


def plan(t):
    return PROFILE.start_pose + DIRECTION * t


def stamps(now, joint_age=0.004, camera_age=0.03):
    return ({arm.name: now - joint_age for arm in PROFILE.arms},
            {name: now - camera_age for name in PROFILE.camera_names})


class Loop:
    """A controller driven tick by tick, the measured pose following the commands."""

    def __init__(self, **config):
        self.controller = Controller(PROFILE, ControllerConfig(**{"soft_start_time": 0.0, **config}))
        self.now = 10.0
        self.measured = PROFILE.start_pose.copy()
        self.commands = []

    def tick(self, **stamp_ages):
        self.now += DT
        result = self.controller.tick(self.now, self.measured, *stamps(self.now, **stamp_ages))
        if result.command is not None:
            self.measured = result.command
            self.commands.append(result.command)
        return result

    def chunk(self, capture, horizon=25, offset=0.0):
        return np.stack([plan(capture - 10.0 + k * DT) + offset for k in range(horizon)]), capture


def test_disarmed_publishes_nothing_even_with_chunks_and_fresh_inputs():
    loop = Loop()
    assert loop.controller.on_chunk(*loop.chunk(loop.now)) is False  # not armed: ignored
    assert all(loop.tick().command is None for _ in range(5))
    assert loop.tick().state == "disarmed"
    assert loop.controller.diagnostics()["chunks_ignored_not_armed"] == 1


def test_a_chunk_arriving_three_ticks_late_continues_the_motion_without_a_jump():
    loop = Loop(chunk_blend="replace")
    loop.controller.enable(loop.now, loop.measured)
    loop.controller.on_chunk(*loop.chunk(loop.now, horizon=40))
    for _ in range(30):
        loop.tick()
    np.testing.assert_allclose(loop.commands[-1], plan(loop.now + DT - 10.0), atol=1e-9)  # on the plan
    capture = loop.now
    for _ in range(3):  # inference takes three ticks
        loop.tick()
    assert loop.controller.on_chunk(*loop.chunk(capture))
    for _ in range(5):
        result = loop.tick()
        assert result.reasons == ()
    commands = np.array(loop.commands[-10:])
    steps = np.diff(commands, axis=0)
    np.testing.assert_allclose(steps, np.tile(DIRECTION * DT, (9, 1)), atol=1e-9)  # constant speed


def test_the_planned_targets_are_what_runs_from_a_capture_on_the_hold_before_a_chunk_and_nothing_when_disarmed():
    loop = Loop()
    assert loop.controller.planned_targets(loop.now, 4).shape == (0, 14)
    loop.controller.enable(loop.now, loop.measured)
    # no chunk yet: the arm holds where it is until one comes
    np.testing.assert_array_equal(loop.controller.planned_targets(loop.now, 3), np.tile(loop.measured, (3, 1)))
    loop.controller.on_chunk(*loop.chunk(loop.now, horizon=40))
    for _ in range(10):
        loop.tick()
    capture = loop.now - 2 * DT  # an observation two ticks old
    planned = loop.controller.planned_targets(capture, 6)
    np.testing.assert_allclose(planned, [plan(capture - 10.0 + k * DT) for k in range(6)], atol=1e-9)
    # each tick sends the target for one tick ahead: the last two sent are entries 2 and 3
    np.testing.assert_allclose(planned[2:4], loop.commands[-2:], atol=1e-9)
    loop.controller.disable()
    assert loop.controller.planned_targets(capture, 6).shape == (0, 14)


def test_a_misaligned_chunk_would_jump_and_is_what_the_alignment_prevents():
    # The same late chunk stamped with its arrival time instead of its capture time: the target
    # sequence steps back by three ticks of motion. This is the jump the capture stamp avoids.
    loop = Loop(chunk_blend="replace")
    loop.controller.enable(loop.now, loop.measured)
    loop.controller.on_chunk(*loop.chunk(loop.now, horizon=40))
    for _ in range(30):
        loop.tick()
    values, _ = loop.chunk(loop.now)
    for _ in range(3):
        loop.tick()
    target_before = loop.controller.executor.target(loop.now)
    loop.controller.on_chunk(values, loop.now)
    assert np.abs(loop.controller.executor.target(loop.now) - target_before).max() > 2 * DT * 0.25


def test_stale_inputs_hold_within_one_tick_and_recover():
    loop = Loop()
    loop.controller.enable(loop.now, loop.measured)
    loop.controller.on_chunk(*loop.chunk(loop.now, horizon=200))
    for _ in range(20):
        assert loop.tick().state == "running"
    result = loop.tick(joint_age=0.5)
    assert result.state == "holding"
    assert "hold_stale" in result.reasons and "joint_states_stale:left" in result.reasons
    moving = loop.commands[-2] - loop.commands[-3]
    assert (np.abs(result.command - loop.commands[-2] - moving) <= ACCEL + 1e-12).all()  # braking
    for _ in range(3):
        assert loop.tick(camera_age=0.5).state == "holding"
    result = loop.tick()
    assert result.state == "running" and "hold_stale" not in result.reasons
    diagnostics = loop.controller.diagnostics()
    assert diagnostics["interventions:hold_stale"] == 4


def test_running_out_of_chunks_holds_and_faults_after_the_timeout():
    loop = Loop(hold_fault_timeout=0.1)
    loop.controller.enable(loop.now, loop.measured)
    loop.controller.on_chunk(*loop.chunk(loop.now, horizon=5))
    states = [loop.tick().state for _ in range(14)]
    assert states[:3] == ["running"] * 3
    assert "holding" in states and states[-1] == "fault"
    held = loop.tick().command  # the stop holds where the arm is, it does not let go
    np.testing.assert_array_equal(held, loop.commands[-2])
    assert not loop.controller.wants_chunks()
    loop.controller.enable(loop.now, loop.measured)
    assert loop.controller.wants_chunks()


def test_estop_holds_in_the_same_tick_and_reset_leaves_it_disarmed():
    loop = Loop()
    loop.controller.enable(loop.now, loop.measured)
    loop.controller.on_chunk(*loop.chunk(loop.now, horizon=200))
    for _ in range(10):
        loop.tick()
    loop.controller.set_estop(True)
    result = loop.tick()
    assert result.state == "estopped" and "estop" in result.reasons
    assert loop.controller.executor.live_chunks == 0 and not loop.controller.wants_chunks()
    with pytest.raises(ArmingError):
        loop.controller.enable(loop.now, loop.measured)
    loop.controller.set_estop(False)
    assert loop.tick().command is None and loop.controller.diagnostics()["state"] == "disarmed"


def test_safety_durations_run_on_the_steady_clock_whatever_ros_time_does():
    """The hold timeout (and soft start) use `steady`: a ROS clock jumping back does not disable
    the timeout, and one jumping forward does not fault at once."""
    for jump in (-50.0, +50.0):
        controller = Controller(PROFILE, ControllerConfig(soft_start_time=0.0, hold_fault_timeout=0.2))
        now, steady = 10.0, 500.0
        controller.enable(now, PROFILE.start_pose, steady=steady)
        states = []
        for k in range(30):  # no chunk at all: holding from the first tick
            now += DT + (jump if k == 3 else 0.0)
            steady += DT
            states.append(controller.tick(now, PROFILE.start_pose, *stamps(now), steady=steady).state)
        assert states[:9] == ["holding"] * 9, (jump, states)  # 0.18 s of steady time
        assert states[12:] == ["fault"] * 18, (jump, states)  # faulted once 0.2 s had passed


def test_re_arming_mid_grasp_keeps_the_grippers_closed():
    """A closed gripper holds an object, so its finger reads open: re-arming starts each gripper
    at its last command, not at the measured opening, until a chunk moves it."""
    loop = Loop()
    loop.controller.enable(loop.now, loop.measured)
    closed = PROFILE.start_pose.copy()
    closed[[6, 13]] = 0.0
    loop.controller.on_chunk(np.tile(closed, (200, 1)), loop.now)
    for _ in range(60):
        loop.tick()
    assert loop.commands[-1][6] == loop.commands[-1][13] == 0.0
    grasping = loop.commands[-1].copy()
    grasping[[6, 13]] = 0.4  # the cube between the fingers keeps them open
    loop.controller.tick(loop.now, grasping, *stamps(loop.now))
    loop.controller.disable()
    loop.controller.enable(loop.now, grasping)
    loop.measured = grasping
    first = loop.tick()
    assert first.command[6] == first.command[13] == 0.0
    # A gripper measured elsewhere than when its last command went out was moved since (a
    # simulation reset, an operator): it starts where it is, wider or not.
    for _ in range(5):
        loop.tick()
    loop.controller.disable()
    reset = loop.commands[-1].copy()
    reset[[6, 13]] = 0.7  # moved 0.3 from where it was measured: further than the servo goes in two ticks
    loop.controller.enable(loop.now, reset)
    loop.measured = reset
    assert loop.tick().command[6] == 0.7


def test_bad_chunks_are_counted_not_raised():
    loop = Loop()
    loop.controller.enable(loop.now, loop.measured)
    assert not loop.controller.on_chunk(np.zeros((5, 3)), loop.now)
    assert not loop.controller.on_chunk(np.full((5, 14), np.nan), loop.now)
    assert not loop.controller.on_chunk(np.full((5, 14), 1e300), loop.now)
    assert not loop.controller.on_chunk(np.zeros((5, 14)), math.nan)
    assert not loop.controller.on_chunk("not a chunk", loop.now)
    diagnostics = loop.controller.diagnostics(loop.now)
    assert diagnostics["chunks_rejected:malformed"] == 3
    assert diagnostics["chunks_rejected:non_finite"] == 1
    assert diagnostics["chunks_rejected:out_of_range"] == 1
    assert all(isinstance(v, (int, float, str, bool)) for v in diagnostics.values())


def test_measured_none_holds_instead_of_crashing():
    loop = Loop()
    loop.controller.enable(loop.now, loop.measured)
    result = loop.controller.tick(loop.now + DT, None, {}, {})
    assert result.state == "holding" and "joint_states_missing:left" in result.reasons


@pytest.mark.parametrize("field,value", [
    ("dt", 0.0), ("dt", math.nan), ("max_joint_state_age", -0.1), ("max_camera_age", "0.1"),
    ("max_camera_spread", -1.0), ("chunk_blend", "average"), ("crossfade_ticks", 1.5),
    ("crossfade_ticks", -1), ("max_chunks", 0), ("soft_start_time", -1.0),
    ("soft_start_speed_scale", 0.0), ("soft_start_speed_scale", 1.5), ("hold_fault_timeout", 0.0),
    ("velocity_scale", 2.0), ("acceleration_scale", math.inf), ("ensemble_weight", 100.0),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"ControllerConfig.{field}"):
        ControllerConfig(**{field: value})


def test_scales_and_times_reach_the_safety_limits():
    controller = Controller(PROFILE, ControllerConfig(velocity_scale=0.5, acceleration_scale=0.25,
                                                      hold_fault_timeout=0.7, dt=0.01))
    np.testing.assert_allclose(controller.limits.velocity, PROFILE.velocity_limit * 0.5)
    np.testing.assert_allclose(controller.limits.acceleration, PROFILE.acceleration_limit * 0.25)
    assert controller.limits.hold_fault_timeout == 0.7 and controller.dt == 0.01


def test_bench_prints_json(capsys):
    assert bench.main(["--ticks", "300", "--blend", "crossfade"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ticks"] == 300 and report["commands_emitted"] == 300
    assert report["final_state"] == "running"
    assert 0 < report["p50_us"] <= report["p99_us"] <= report["max_us"]
