"""TickResult.target: the chunk executor's target that the safety filter was given, so that the
policy's own smoothness can be measured apart from the filter's (vla-ros rollout)."""

import numpy as np

from vla_ros.control.controller import Controller, ControllerConfig
from vla_ros.robot.profile import load_profile

PROFILE = load_profile("aloha_stationary")
DT = PROFILE.dt


def _stamps(now):
    return {arm.name: now for arm in PROFILE.arms}, {name: now for name in PROFILE.camera_names}


def test_the_target_is_the_executors_and_none_while_holding():
    controller = Controller(PROFILE, ControllerConfig(chunk_blend="replace", soft_start_time=0.0))
    now, pose = 5.0, PROFILE.start_pose.copy()
    controller.enable(now, pose)
    assert controller.tick(now, pose, *_stamps(now)).target is None  # no chunk yet: holding
    # A jump of 0.2 rad on one joint: the filter approaches it, the target says where it is going.
    chunk = np.tile(pose + 0.2 * (np.arange(14) == 2), (20, 1))
    controller.on_chunk(chunk, now, now)
    for _ in range(3):
        now += DT
        result = controller.tick(now, pose, *_stamps(now))
        assert np.array_equal(result.target, chunk[0])
        assert not np.array_equal(result.command, result.target)
        pose = result.command
    controller.disable()
    assert controller.tick(now + DT, pose, *_stamps(now + DT)).target is None
