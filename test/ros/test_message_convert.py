"""numpy <-> ROS message conversions: images through cv_bridge (where installed) and the pure
fallback give identical arrays; targets <-> JointTrajectory; the simulated JointState layout."""

import numpy as np
import pytest
from builtin_interfaces.msg import Duration, Time
from sensor_msgs.msg import Image
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_ros.robot import decode
from vla_ros.robot.profile import load_profile
from vla_ros.ros import convert

PROFILE = load_profile("aloha_stationary")
RNG = np.random.default_rng(1)
RGB = RNG.integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
RGBA = RNG.integers(0, 256, size=(6, 9, 4), dtype=np.uint8)
DEPTH = RNG.integers(0, 65536, size=(6, 9), dtype=np.uint16)
ARRAYS = {"rgb8": RGB, "bgr8": RGB, "rgba8": RGBA, "bgra8": RGBA, "mono8": RGB[:, :, 1].copy(), "16UC1": DEPTH}


@pytest.fixture(params=["fallback", "cv_bridge"])
def bridge(request):
    if request.param == "fallback":
        return None
    cv_bridge = pytest.importorskip("cv_bridge", reason="cv_bridge is not installed here")
    return cv_bridge.CvBridge()


def expected_array(encoding):
    array = ARRAYS[encoding]
    return array[:, :, :3] if encoding in ("rgba8", "bgra8") else array


@pytest.mark.parametrize("encoding", sorted(ARRAYS))
def test_image_round_trip(bridge, encoding):
    msg = convert.array_to_image(ARRAYS[encoding], encoding, Time(sec=3, nanosec=4), "cam", bridge=bridge)
    assert isinstance(msg, Image)
    assert (msg.encoding, msg.height, msg.width, msg.header.frame_id) == (encoding, 6, 9, "cam")
    assert msg.header.stamp.sec == 3
    np.testing.assert_array_equal(convert.image_to_array(msg, bridge=bridge), expected_array(encoding))


@pytest.mark.parametrize("encoding", sorted(ARRAYS))
def test_bridge_and_fallback_agree_on_padded_big_endian(bridge, encoding):
    """A message with row padding (and big-endian for 16UC1) decodes the same on both paths."""
    fields = decode.array_to_image_fields(ARRAYS[encoding], encoding)
    rows = np.frombuffer(fields["data"], np.uint8).reshape(fields["height"], fields["step"])
    if encoding == "16UC1":
        rows = rows.reshape(fields["height"], -1, 2)[:, :, ::-1].reshape(fields["height"], -1)
    padded = np.concatenate([rows, np.zeros((fields["height"], 5), np.uint8)], axis=1)
    msg = Image(height=fields["height"], width=fields["width"], encoding=encoding,
                is_bigendian=int(encoding == "16UC1"), step=padded.shape[1])
    msg.data = padded.tobytes()
    np.testing.assert_array_equal(convert.image_to_array(msg, bridge=bridge), decode.image_to_array(msg))
    np.testing.assert_array_equal(convert.image_to_array(msg, bridge=bridge), expected_array(encoding))


def test_default_bridge_matches_fallback():
    msg = convert.array_to_image(RGB, "bgr8")
    np.testing.assert_array_equal(convert.image_to_array(msg), convert.image_to_array(msg, bridge=None))


def test_unsupported_encoding_rejected(bridge):
    msg = convert.array_to_image(RGB, "rgb8", bridge=None)
    msg.encoding = "bayer_rggb8"
    with pytest.raises(ValueError, match="unsupported image encoding"):
        convert.image_to_array(msg, bridge=bridge)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_round_trip(fmt):
    msg = convert.array_to_compressed(RGB, fmt, Time(sec=1), "cam")
    assert msg.format == fmt and msg.header.frame_id == "cam"
    decoded = convert.any_image_to_array(msg)
    assert decoded.shape == RGB.shape
    if fmt == "png":
        np.testing.assert_array_equal(decoded, RGB)


# --- trajectories ----------------------------------------------------------------------------

def trajectory(names, points):
    msg = JointTrajectory(joint_names=list(names))
    for t, positions in points:
        msg.points.append(JointTrajectoryPoint(positions=list(positions), time_from_start=convert.seconds_to_duration(t)))
    return msg


GOOD_NAMES = PROFILE.command_joint_names(PROFILE.arms[0])


@pytest.mark.parametrize("msg, message", [
    (trajectory(GOOD_NAMES[:6], [(0.1, [0.0] * 6)]), r"missing \['gripper'\]"),
    (trajectory([*GOOD_NAMES, "extra"], [(0.1, [0.0] * 8)]), r"unknown \['extra'\]"),
    (trajectory([*GOOD_NAMES[:6], "waist"], [(0.1, [0.0] * 7)]), "repeats"),
    (trajectory(GOOD_NAMES, []), "no points"),
    (trajectory(GOOD_NAMES, [(0.1, [0.0] * 6)]), "6 positions for 7 joints"),
    (trajectory(GOOD_NAMES, [(0.1, [0.0] * 6 + [float("inf")])]), "non-finite"),
    (trajectory(GOOD_NAMES, [(0.2, [0.0] * 7), (0.1, [0.0] * 7)]), "strictly increasing"),
])
def test_malformed_trajectories_rejected(msg, message):
    with pytest.raises(ValueError, match=message):
        convert.trajectory_to_arm_targets(PROFILE, PROFILE.arms[0], msg)


def test_durations():
    assert convert.seconds_to_duration(1.25) == Duration(sec=1, nanosec=250_000_000)
    assert convert.duration_to_seconds(Duration(sec=2, nanosec=500_000_000)) == 2.5
    assert convert.time_to_seconds(convert.seconds_to_time(3.75)) == 3.75
    with pytest.raises(ValueError):
        convert.seconds_to_duration(-1.0)


# --- joint states ----------------------------------------------------------------------------

def test_arm_joint_state_layout_round_trips_through_decoder():
    arm = PROFILE.arms[1]
    positions = np.array([0.1, -0.9, 1.1, 0.0, -0.3, 0.2, 0.4])
    velocities = np.array([1.0, 0, 0, 0, 0, 0, 2.0])
    msg = convert.arm_joint_state(PROFILE, arm, positions, velocities, Time(sec=7), "right_finger")
    assert msg.name == [*PROFILE.arm_joints, "gripper", "left_finger", "right_finger"]
    finger = float(PROFILE.follower_finger.denormalize(0.4))
    assert msg.position[6] == pytest.approx(float(PROFILE.follower_joint.denormalize(0.4)))
    assert msg.position[7:] == pytest.approx([finger, -finger])
    finger_span = PROFILE.follower_finger.open - PROFILE.follower_finger.close
    assert msg.velocity[7:] == pytest.approx([2.0 * finger_span, -2.0 * finger_span])
    np.testing.assert_allclose(decode.joint_state_to_arm_vector(PROFILE, arm, msg), positions)
