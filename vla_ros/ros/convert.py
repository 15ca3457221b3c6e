"""numpy <-> ROS messages: images, joint states and joint trajectories (the command interfaces'
messages are built in vla_ros.ros.command_interfaces).

Image decoding uses cv_bridge when it is importable (a robot with ROS installed) and the pure
decoder in :mod:`vla_ros.robot.decode` otherwise; both give identical arrays, and every function
takes ``bridge`` explicitly so that tests exercise both paths. The pure decoder stays the
reference because bags are decoded without rclpy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from builtin_interfaces.msg import Duration, Time
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Header

from vla_ros.robot import decode
from vla_ros.robot.profile import ArmSpec, RobotProfile

_NO_BRIDGE = object()
COMPRESSED_SUFFIX = "/compressed"  # image_transport's convention for the compressed topic


def camera_topic(topic: str, compressed: bool) -> str:
    """The topic a camera's raw or compressed images travel on."""
    return topic + COMPRESSED_SUFFIX if compressed else topic


def default_bridge():
    """A cv_bridge.CvBridge when cv_bridge is importable, else None (use the pure decoder)."""
    try:
        from cv_bridge import CvBridge
    except ImportError:
        return None
    return CvBridge()


_default_bridge = _NO_BRIDGE


def _bridge(bridge):
    global _default_bridge
    if bridge is not _NO_BRIDGE:
        return bridge
    if _default_bridge is _NO_BRIDGE:
        _default_bridge = default_bridge()
    return _default_bridge


def make_header(stamp: Time | None = None, frame_id: str = "") -> Header:
    return Header(stamp=stamp if stamp is not None else Time(), frame_id=frame_id)


def seconds_to_duration(seconds: float) -> Duration:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration must be finite and >= 0, got {seconds!r}")
    nanoseconds = int(round(seconds * 1e9))
    return Duration(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def duration_to_seconds(duration: Any) -> float:
    return float(duration.sec) + float(duration.nanosec) * 1e-9


def time_to_seconds(stamp: Any) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def seconds_to_time(seconds: float) -> Time:
    nanoseconds = int(round(seconds * 1e9))
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


# --- images -------------------------------------------------------------------------------


def image_to_array(msg: Image, bridge=_NO_BRIDGE) -> np.ndarray:
    """sensor_msgs/Image -> RGB HxWx3 uint8, or HxW for mono8 / 16UC1 (see decode.image_to_array)."""
    bridge = _bridge(bridge)
    if bridge is None:
        return decode.image_to_array(msg)
    if msg.encoding not in decode.IMAGE_ENCODINGS:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}; supported: {sorted(decode.IMAGE_ENCODINGS)}")
    channels = decode.IMAGE_ENCODINGS[msg.encoding][0]
    try:
        array = bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8" if channels > 1 else "passthrough")
    except Exception as exc:  # cv_bridge raises its own error types for bad messages
        raise ValueError(f"cv_bridge could not convert a {msg.encoding} image: {exc}") from exc
    return np.ascontiguousarray(array)


def array_to_image(array: np.ndarray, encoding: str = "rgb8", stamp: Time | None = None,
                   frame_id: str = "", bridge=_NO_BRIDGE) -> Image:
    """RGB (or RGBA, mono8, 16UC1) array -> sensor_msgs/Image in ``encoding``, unpadded, little endian."""
    bridge = _bridge(bridge)
    header = make_header(stamp, frame_id)
    fields = decode.array_to_image_fields(array, encoding)  # validates the array for both paths
    if bridge is None:
        msg = Image(header=header, height=fields["height"], width=fields["width"], encoding=encoding,
                    is_bigendian=fields["is_bigendian"], step=fields["step"])
        msg.data = fields["data"]
        return msg
    channels = decode.IMAGE_ENCODINGS[encoding][0]
    ordered = np.asarray(array)
    if encoding in ("bgr8", "bgra8"):
        ordered = ordered[:, :, [2, 1, 0] if channels == 3 else [2, 1, 0, 3]]
    msg = bridge.cv2_to_imgmsg(np.ascontiguousarray(ordered), encoding=encoding, header=header)
    return msg


def compressed_to_array(msg: CompressedImage) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg, png) -> RGB HxWx3 uint8 (or HxW grey)."""
    return decode.compressed_to_array(msg)


def array_to_compressed(array: np.ndarray, fmt: str = "jpeg", stamp: Time | None = None,
                        frame_id: str = "", jpeg_quality: int = 90) -> CompressedImage:
    msg = CompressedImage(header=make_header(stamp, frame_id), format=fmt)
    msg.data = decode.encode_compressed(array, fmt, jpeg_quality)
    return msg


def any_image_to_array(msg: Image | CompressedImage, bridge=_NO_BRIDGE) -> np.ndarray:
    """Either image message type -> array (subscribers that accept raw or compressed)."""
    if hasattr(msg, "format"):
        return compressed_to_array(msg)
    return image_to_array(msg, bridge)


# --- joint states ---------------------------------------------------------------------------


def arm_joint_state(profile: RobotProfile, arm: ArmSpec, positions: np.ndarray, velocities: np.ndarray,
                    stamp: Time, mirror_finger_joint: str) -> JointState:
    """An arm's 7 state entries (gripper normalised) -> a JointState in the real stack's layout:
    arm joints, gripper joint angle, finger position, mirrored finger (negated)."""
    positions = np.asarray(positions, dtype=np.float64)
    velocities = np.asarray(velocities, dtype=np.float64)
    n = profile.joints_per_arm
    if positions.shape != (n,) or velocities.shape != (n,):
        raise ValueError(f"arm state must have {n} positions and velocities, got {positions.shape}, {velocities.shape}")
    gripper, gripper_velocity = positions[-1], velocities[-1]
    joint_span = profile.follower_joint.open - profile.follower_joint.close
    finger_span = profile.follower_finger.open - profile.follower_finger.close
    finger = float(profile.follower_finger.denormalize(gripper))
    msg = JointState(header=make_header(stamp))
    msg.name = [*profile.arm_joints, arm.gripper_joint, arm.finger_joint, mirror_finger_joint]
    msg.position = [*map(float, positions[:-1]), float(profile.follower_joint.denormalize(gripper)), finger, -finger]
    finger_velocity = float(gripper_velocity * finger_span)
    msg.velocity = [*map(float, velocities[:-1]), float(gripper_velocity * joint_span), finger_velocity, -finger_velocity]
    return msg


# --- joint trajectories ---------------------------------------------------------------------


def trajectory_to_arm_targets(profile: RobotProfile, arm: ArmSpec, msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """A JointTrajectory for ``arm`` -> ``(times (P,), targets (P, joints_per_arm))``, the gripper
    normalised with ``profile.follower_joint``. Joints are matched by name (any order); missing,
    duplicate or unknown names, ragged or non-finite points and non-increasing times raise."""
    expected = profile.command_joint_names(arm)
    names = [str(n) for n in msg.joint_names]
    if len(set(names)) != len(names):
        raise ValueError(f"trajectory for arm '{arm.name}' repeats joint names: {names}")
    missing = [n for n in expected if n not in names]
    unknown = [n for n in names if n not in expected]
    if missing or unknown:
        raise ValueError(f"trajectory for arm '{arm.name}' must name joints {list(expected)}; "
                         f"missing {missing}, unknown {unknown}")
    if len(msg.points) == 0:
        raise ValueError(f"trajectory for arm '{arm.name}' has no points")
    order = [names.index(n) for n in expected]
    targets = np.empty((len(msg.points), len(expected)))
    times = np.empty(len(msg.points))
    for i, point in enumerate(msg.points):
        positions = np.asarray(list(point.positions), dtype=np.float64)
        if positions.shape != (len(names),):
            raise ValueError(f"trajectory point {i} for arm '{arm.name}' has {positions.size} positions "
                             f"for {len(names)} joints")
        if not np.all(np.isfinite(positions)):
            raise ValueError(f"trajectory point {i} for arm '{arm.name}' has non-finite positions")
        targets[i] = positions[order]
        times[i] = duration_to_seconds(point.time_from_start)
    if times[0] < 0 or np.any(np.diff(times) <= 0):
        raise ValueError(f"trajectory for arm '{arm.name}' needs strictly increasing time_from_start, got {times.tolist()}")
    targets[:, -1] = profile.follower_joint.normalize(targets[:, -1])
    return times, targets
