"""Pure decoding of image and joint-state message contents: every encoding, row padding, byte
order and compressed format; joint states matched by name with both gripper maps."""

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_ros.robot import decode
from vla_ros.robot.profile import load_profile

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, size=(5, 7, 1), dtype=np.uint8)
DEPTH = RNG.integers(0, 65536, size=(5, 7), dtype=np.uint16)


def image_msg(encoding, pixel_bytes: np.ndarray, padding: int = 0, bigendian: bool = False):
    """Image fields written by hand from per-row pixel bytes (H x row_bytes) plus padding."""
    height = pixel_bytes.shape[0]
    rows = pixel_bytes.reshape(height, -1)
    padded = np.concatenate([rows, np.full((height, padding), 0xAB, np.uint8)], axis=1)
    return SimpleNamespace(height=height, width=7, encoding=encoding, is_bigendian=int(bigendian),
                           step=padded.shape[1], data=padded.tobytes())


def as_bytes(array):
    return np.ascontiguousarray(array).view(np.uint8).reshape(array.shape[0], -1)


CASES = {
    "rgb8": (lambda: as_bytes(RGB), RGB),
    "bgr8": (lambda: as_bytes(RGB[:, :, ::-1]), RGB),
    "rgba8": (lambda: as_bytes(np.concatenate([RGB, ALPHA], axis=2)), RGB),
    "bgra8": (lambda: as_bytes(np.concatenate([RGB[:, :, ::-1], ALPHA], axis=2)), RGB),
    "mono8": (lambda: as_bytes(RGB[:, :, 0]), RGB[:, :, 0]),
    "16UC1": (lambda: as_bytes(DEPTH.astype("<u2")), DEPTH),
}


@pytest.mark.parametrize("padding", [0, 3, 64])
@pytest.mark.parametrize("encoding", sorted(CASES))
def test_every_encoding_with_row_padding(encoding, padding):
    make_bytes, expected = CASES[encoding]
    decoded = decode.image_to_array(image_msg(encoding, make_bytes(), padding))
    assert decoded.dtype == expected.dtype
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("padding", [0, 2])
def test_16uc1_big_endian(padding):
    msg = image_msg("16UC1", as_bytes(DEPTH.astype(">u2")), padding, bigendian=True)
    decoded = decode.image_to_array(msg)
    assert decoded.dtype == np.uint16 and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, DEPTH)


def test_big_endian_flag_is_irrelevant_for_bytes():
    np.testing.assert_array_equal(decode.image_to_array(image_msg("rgb8", as_bytes(RGB), bigendian=True)), RGB)


@pytest.mark.parametrize("data_type", [bytes, bytearray, list, np.asarray])
def test_data_field_types(data_type):
    msg = image_msg("rgb8", as_bytes(RGB))
    msg.data = data_type(msg.data) if data_type is not np.asarray else np.frombuffer(msg.data, np.uint8)
    np.testing.assert_array_equal(decode.image_to_array(msg), RGB)


def test_rosbags_dataclass_decodes():
    from rosbags.typesys import Stores, get_typestore

    types = get_typestore(Stores.ROS2_HUMBLE).types
    fields = decode.array_to_image_fields(RGB, "bgr8")
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id="c")
    msg = types["sensor_msgs/msg/Image"](header=header, **{**fields, "data": np.frombuffer(fields["data"], np.uint8)})
    np.testing.assert_array_equal(decode.image_to_array(msg), RGB)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "16UC1"])
def test_fields_round_trip(encoding):
    array = {"mono8": RGB[:, :, 0], "16UC1": DEPTH}.get(encoding, RGB)
    fields = decode.array_to_image_fields(array, encoding)
    assert fields["step"] * fields["height"] == len(fields["data"])
    np.testing.assert_array_equal(decode.image_to_array(SimpleNamespace(**fields)), array)


def test_rgba_fields_round_trip_drops_alpha():
    rgba = np.concatenate([RGB, ALPHA], axis=2)
    for encoding in ("rgba8", "bgra8"):
        fields = decode.array_to_image_fields(rgba, encoding)
        np.testing.assert_array_equal(decode.image_to_array(SimpleNamespace(**fields)), RGB)


@settings(max_examples=30, deadline=None)
@given(height=st.integers(1, 6), width=st.integers(1, 6), padding=st.integers(0, 9),
       encoding=st.sampled_from(sorted(CASES)), bigendian=st.booleans())
def test_any_size_and_padding(height, width, padding, encoding, bigendian):
    channels, dtype = decode.IMAGE_ENCODINGS[encoding]
    values = np.arange(height * width * channels, dtype=np.uint32) * 2654435761 % np.iinfo(dtype).max
    pixels = values.astype(dtype).reshape(height, width, channels)
    stored = pixels.astype(dtype.newbyteorder(">" if bigendian else "<"))
    rows = np.ascontiguousarray(stored).view(np.uint8).reshape(height, -1)
    padded = np.concatenate([rows, np.zeros((height, padding), np.uint8)], axis=1)
    msg = SimpleNamespace(height=height, width=width, encoding=encoding, is_bigendian=bigendian,
                          step=padded.shape[1], data=padded.tobytes())
    decoded = decode.image_to_array(msg)
    assert decoded.shape[:2] == (height, width)
    if encoding in ("rgb8", "mono8", "16UC1"):
        np.testing.assert_array_equal(decoded.reshape(height, width, -1), pixels)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"encoding": "yuv422"}, "unsupported image encoding"),
        ({"data": b"\x00" * 10}, r"expected step\*height"),
        ({"step": 20}, "smaller than one row"),
        ({"height": 0, "data": b""}, "no pixels"),
    ],
)
def test_bad_images_raise_clear_errors(change, message):
    msg = image_msg("rgb8", as_bytes(RGB))
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ValueError, match=message):
        decode.image_to_array(msg)


@pytest.mark.parametrize("array, encoding", [(RGB, "mono8"), (RGB[:, :, 0], "rgb8"), (DEPTH, "rgb8"),
                                             (RGB.astype(np.uint16), "rgb8"), (RGB, "rgba8")])
def test_bad_arrays_for_encoding(array, encoding):
    with pytest.raises(ValueError, match=encoding):
        decode.array_to_image_fields(array, encoding)


def test_png_round_trip_is_exact():
    msg = SimpleNamespace(format="png", data=decode.encode_compressed(RGB, "png"))
    np.testing.assert_array_equal(decode.compressed_to_array(msg), RGB)
    grey = SimpleNamespace(format="png", data=decode.encode_compressed(DEPTH, "png"))
    np.testing.assert_array_equal(decode.compressed_to_array(grey), DEPTH)


def test_jpeg_round_trip_keeps_colour_order():
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :, 0] = 200  # pure red: a swapped channel order would give blue
    msg = SimpleNamespace(format="rgb8; jpeg compressed bgr8", data=decode.encode_compressed(image, "jpeg"))
    decoded = decode.compressed_to_array(msg)
    assert decoded.shape == image.shape
    assert np.abs(decoded.astype(int) - image).max() <= 8


def test_compressed_by_other_encoder_decodes():
    ok, buffer = cv2.imencode(".png", RGB[:, :, ::-1])  # OpenCV writes BGR
    np.testing.assert_array_equal(decode.compressed_to_array(SimpleNamespace(format="png", data=buffer.tobytes())), RGB)


@pytest.mark.parametrize("fmt, data, message", [("tiff", b"xx", "unsupported CompressedImage format"),
                                                ("jpeg", b"", "no data"),
                                                ("png", b"not an image", "could not be decoded")])
def test_bad_compressed_images(fmt, data, message):
    with pytest.raises(ValueError, match=message):
        decode.compressed_to_array(SimpleNamespace(format=fmt, data=data))


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError, match="unsupported compressed format"):
        decode.encode_compressed(RGB, "bmp")
    with pytest.raises(ValueError, match="cannot jpeg-encode"):
        decode.encode_compressed(DEPTH, "jpeg")


# --- joint states -----------------------------------------------------------------------------

PROFILE = load_profile("aloha_stationary")
LEFT = PROFILE.arms[0]
ARM = np.array([0.1, -0.9, 1.1, 0.05, -0.3, 0.2])


def joint_state(names, positions):
    return SimpleNamespace(name=list(names), position=list(positions), velocity=[], effort=[])


def follower_msg(finger_normalised=0.25, reverse=False, extra=True):
    names = [*PROFILE.arm_joints, "gripper", LEFT.finger_joint, "right_finger"]
    finger = float(PROFILE.follower_finger.denormalize(finger_normalised))
    positions = [*ARM, 1.0, finger, -finger]
    if not extra:
        names, positions = names[:6] + [names[7]], positions[:6] + [positions[7]]
    if reverse:
        names, positions = names[::-1], positions[::-1]
    return joint_state(names, positions)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("extra", [False, True])
def test_follower_vector_by_name(reverse, extra):
    vector = decode.joint_state_to_arm_vector(PROFILE, LEFT, follower_msg(0.25, reverse, extra))
    np.testing.assert_allclose(vector, [*ARM, 0.25])


def test_follower_gripper_uses_finger_map():
    for raw, expected in ((PROFILE.follower_finger.open, 1.0), (PROFILE.follower_finger.close, 0.0)):
        msg = follower_msg()
        msg.position[7] = raw
        assert decode.joint_state_to_arm_vector(PROFILE, LEFT, msg)[-1] == pytest.approx(expected)


def test_leader_gripper_uses_leader_joint_map():
    names = [*PROFILE.arm_joints, LEFT.leader_gripper_joint, "left_finger", "right_finger"]
    msg = joint_state(names, [*ARM, PROFILE.leader_joint.open, 0.0, 0.0])
    np.testing.assert_allclose(decode.leader_joint_state_to_arm_vector(PROFILE, LEFT, msg), [*ARM, 1.0])
    msg.position[6] = PROFILE.leader_joint.close
    assert decode.leader_joint_state_to_arm_vector(PROFILE, LEFT, msg)[-1] == pytest.approx(0.0)


def test_missing_names_are_named():
    msg = follower_msg()
    del msg.name[1], msg.position[1]
    with pytest.raises(ValueError, match=r"lacks joints \['shoulder'\]"):
        decode.joint_state_to_arm_vector(PROFILE, LEFT, msg)


def test_missing_finger_is_named():
    msg = joint_state(PROFILE.arm_joints, ARM)
    with pytest.raises(ValueError, match="left_finger"):
        decode.joint_state_to_arm_vector(PROFILE, LEFT, msg)


def test_non_finite_and_ragged_states_rejected():
    msg = follower_msg()
    msg.position[2] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite positions for \['elbow'\]"):
        decode.joint_state_to_arm_vector(PROFILE, LEFT, msg)
    msg = follower_msg()
    msg.position.pop()
    with pytest.raises(ValueError, match="9 names but 8 positions"):
        decode.joint_state_to_arm_vector(PROFILE, LEFT, msg)


def test_non_finite_in_ignored_joint_is_fine():
    msg = follower_msg()
    msg.position[8] = float("inf")  # right_finger is not read
    assert np.all(np.isfinite(decode.joint_state_to_arm_vector(PROFILE, LEFT, msg)))
