"""Decoding of ROS message CONTENTS into numpy, without rclpy.

Duck-typed on message fields (``height``, ``width``, ``encoding``, ``step``, ``data``, ``name``,
``position``...) so the same code decodes live rclpy messages and the dataclasses that rosbags
deserialises from bags: recorded data and live data can never be decoded differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from vla_ros.robot.profile import ArmSpec, GripperMap, RobotProfile

# encoding -> (channels, numpy dtype of one channel)
IMAGE_ENCODINGS: dict[str, tuple[int, np.dtype]] = {
    "rgb8": (3, np.dtype(np.uint8)),
    "bgr8": (3, np.dtype(np.uint8)),
    "rgba8": (4, np.dtype(np.uint8)),
    "bgra8": (4, np.dtype(np.uint8)),
    "mono8": (1, np.dtype(np.uint8)),
    "16UC1": (1, np.dtype(np.uint16)),
}
COMPRESSED_FORMATS = ("jpeg", "png")


def _as_bytes(data: Any) -> memoryview:
    """A message's ``data`` field (bytes, array.array, list of ints, numpy) as raw bytes."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return memoryview(data).cast("B")
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data).view(np.uint8).reshape(-1))
    if hasattr(data, "tobytes"):  # array.array('B') from rclpy
        return memoryview(data.tobytes())
    return memoryview(bytes(data))


def image_to_array(msg: Any) -> np.ndarray:
    """sensor_msgs/Image fields -> HxWx3 RGB uint8 (colour encodings), HxW uint8 (mono8) or
    HxW uint16 (16UC1). Alpha is dropped and BGR reordered so callers always get RGB."""
    encoding = str(msg.encoding)
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"unsupported image encoding {encoding!r}; supported: {sorted(IMAGE_ENCODINGS)}")
    channels, dtype = IMAGE_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ValueError(f"image has no pixels: {width}x{height}")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ValueError(f"image step {step} is smaller than one row of {width} {encoding} pixels ({row_bytes} bytes)")
    raw = _as_bytes(msg.data)
    if len(raw) != step * height:
        raise ValueError(f"image data has {len(raw)} bytes, expected step*height = {step}*{height} = {step * height}")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, step)[:, :row_bytes]
    byte_order = ">" if msg.is_bigendian else "<"
    pixels = np.ascontiguousarray(rows).view(dtype.newbyteorder(byte_order)).reshape(height, width, channels)
    pixels = pixels.astype(dtype, copy=False)  # native byte order
    if encoding == "bgr8":
        return np.ascontiguousarray(pixels[:, :, ::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(pixels[:, :, :3])
    if encoding == "bgra8":
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    if channels == 1:
        return np.ascontiguousarray(pixels[:, :, 0])
    return np.ascontiguousarray(pixels)


def array_to_image_fields(array: np.ndarray, encoding: str = "rgb8") -> dict[str, Any]:
    """The Image fields (height, width, encoding, is_bigendian, step, data) for an array.

    ``array`` is RGB (HxWx3 uint8) for rgb8/bgr8, RGBA for rgba8/bgra8, HxW uint8 for mono8 and
    HxW uint16 for 16UC1: the inverse of :func:`image_to_array` up to the dropped alpha."""
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"unsupported image encoding {encoding!r}; supported: {sorted(IMAGE_ENCODINGS)}")
    channels, dtype = IMAGE_ENCODINGS[encoding]
    array = np.asarray(array)
    if array.dtype != dtype:
        raise ValueError(f"{encoding} needs a {dtype} array, got {array.dtype}")
    expected_ndim = 2 if channels == 1 else 3
    if array.ndim != expected_ndim or (channels > 1 and array.shape[2] != channels):
        shape = "HxW" if channels == 1 else f"HxWx{channels}"
        raise ValueError(f"{encoding} needs an {shape} array, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image has no pixels: shape {array.shape}")
    if encoding in ("bgr8", "bgra8"):
        order = [2, 1, 0] if channels == 3 else [2, 1, 0, 3]
        array = array[:, :, order]
    array = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<"))
    height, width = array.shape[:2]
    return {
        "height": height,
        "width": width,
        "encoding": encoding,
        "is_bigendian": 0,
        "step": width * channels * dtype.itemsize,
        "data": array.tobytes(),
    }


def compressed_format(format_field: str) -> str:
    """'jpeg' or 'png' from a CompressedImage ``format`` ('jpeg', 'rgb8; jpeg compressed bgr8')."""
    text = str(format_field).lower()
    if "png" in text:
        return "png"
    if "jpeg" in text or "jpg" in text:
        return "jpeg"
    raise ValueError(f"unsupported CompressedImage format {format_field!r}; supported: {COMPRESSED_FORMATS}")


def compressed_to_array(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage fields -> HxWx3 RGB uint8 (colour) or HxW (grey, 16-bit png)."""
    compressed_format(msg.format)
    raw = np.frombuffer(_as_bytes(msg.data), dtype=np.uint8)
    if raw.size == 0:
        raise ValueError("CompressedImage has no data")
    decoded = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ValueError(f"CompressedImage data ({raw.size} bytes, format {msg.format!r}) could not be decoded")
    if decoded.ndim == 2:
        return decoded
    if decoded.shape[2] == 4:
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def encode_compressed(array: np.ndarray, fmt: str = "jpeg", jpeg_quality: int = 90) -> bytes:
    """RGB HxWx3 uint8 (or HxW grey) -> jpeg/png bytes for CompressedImage.data."""
    if fmt not in COMPRESSED_FORMATS:
        raise ValueError(f"unsupported compressed format {fmt!r}; supported: {COMPRESSED_FORMATS}")
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif not (array.ndim == 2 and (array.dtype == np.uint8 or (fmt == "png" and array.dtype == np.uint16))):
        raise ValueError(f"cannot {fmt}-encode an array of shape {array.shape} and dtype {array.dtype}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == "jpeg" else []
    ok, buffer = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", array, params)
    if not ok:
        raise ValueError(f"{fmt} encoding failed for an array of shape {array.shape}")
    return buffer.tobytes()


def joint_positions_by_name(msg: Any, names: Sequence[str], what: str = "JointState") -> np.ndarray:
    """Positions of ``names`` looked up by name in a JointState-like message (any order, extra
    names ignored); missing names, length mismatches and non-finite values are errors."""
    msg_names = [str(n) for n in msg.name]
    positions = np.asarray(list(msg.position), dtype=np.float64)
    if positions.shape != (len(msg_names),):
        raise ValueError(f"{what} has {len(msg_names)} names but {positions.size} positions")
    index = {name: i for i, name in enumerate(msg_names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise ValueError(f"{what} lacks joints {missing} (it has {msg_names})")
    values = positions[[index[n] for n in names]]
    bad = [n for n, v in zip(names, values) if not np.isfinite(v)]
    if bad:
        raise ValueError(f"{what} has non-finite positions for {bad}")
    return values


def _arm_vector(profile: RobotProfile, arm: ArmSpec, msg: Any, gripper_name: str, gripper_map: GripperMap) -> np.ndarray:
    what = f"JointState of arm '{arm.name}'"
    values = joint_positions_by_name(msg, (*profile.arm_joints, gripper_name), what)
    values[-1] = float(gripper_map.normalize(values[-1]))
    return values


def joint_state_to_arm_vector(profile: RobotProfile, arm: ArmSpec, msg: Any) -> np.ndarray:
    """A follower arm's JointState -> its 7 entries of the state vector; the gripper entry is
    the FINGER position normalised with ``profile.follower_finger`` (what the datasets record)."""
    return _arm_vector(profile, arm, msg, arm.finger_joint, profile.follower_finger)


def leader_joint_state_to_arm_vector(profile: RobotProfile, arm: ArmSpec, msg: Any) -> np.ndarray:
    """A leader arm's JointState -> its 7 entries of the action vector; the gripper entry is the
    leader GRIPPER JOINT angle normalised with ``profile.leader_joint`` (teleop recording)."""
    return _arm_vector(profile, arm, msg, arm.leader_gripper_joint, profile.leader_joint)
