import math

import pytest

from vla_ros.control.gating import GatingConfig, InputGate

ARMS = ("left", "right")
CAMERAS = ("cam_high", "cam_low")


def gate(**config):
    return InputGate(GatingConfig(**config), ARMS, CAMERAS)


def fresh(now):
    return {a: now - 0.005 for a in ARMS}, {c: now - 0.03 - 0.01 * i for i, c in enumerate(CAMERAS)}


def test_fresh_inputs_pass_and_capture_time_is_the_oldest_camera_stamp():
    joints, cameras = fresh(10.0)
    result = gate().check(10.0, joints, cameras)
    assert result.ok and result.reasons == () and result.reason == ""
    assert result.capture_time == pytest.approx(10.0 - 0.04)


def test_each_problem_has_its_own_reason():
    joints, cameras = fresh(10.0)
    joints["right"] = 9.0
    cameras["cam_low"] = None
    result = gate().check(10.0, joints, cameras)
    assert not result.ok
    assert result.reasons == ("joint_states_stale:right", "camera_missing:cam_low")
    assert result.capture_time is None  # a camera frame is missing: the observation cannot be dated


def test_stale_camera_spread_future_and_invalid_stamps():
    joints, _ = fresh(10.0)
    result = gate(max_camera_spread=0.05).check(10.0, joints, {"cam_high": 9.99, "cam_low": 9.90})
    assert result.reasons == ("camera_spread",)
    result = gate().check(10.0, joints, {"cam_high": 9.5, "cam_low": 11.0})
    assert result.reasons == ("camera_stale:cam_high", "camera_from_future:cam_low", "camera_spread")
    result = gate().check(10.0, {"left": math.nan}, {"cam_high": "x", "cam_low": 9.99})
    assert result.reasons == ("joint_states_stamp_invalid:left", "joint_states_missing:right",
                              "camera_stamp_invalid:cam_high")
    assert gate().check(math.inf, joints, {}).reasons == ("now_invalid",)


def test_without_cameras_the_joint_states_date_the_observation():
    result = InputGate(GatingConfig(), ARMS, ()).check(5.0, {"left": 4.99, "right": 4.98}, {})
    assert result.ok and result.capture_time == pytest.approx(4.98)


@pytest.mark.parametrize("field,value", [("max_joint_state_age", 0.0), ("max_camera_age", -1.0),
                                         ("max_camera_spread", math.nan), ("max_camera_age", True)])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        GatingConfig(**{field: value})
