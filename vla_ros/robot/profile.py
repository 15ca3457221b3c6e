"""Robot profiles: every hardware constant of a robot variant, loaded from one YAML file.

A profile is data, not code: joint names and order, limits, gripper normalisation maps, start
pose, cameras and topics. The loader validates everything up front and fails with a message that
names the file, the key and the problem, because a wrong constant here moves real arms.

The 14-dim vector convention used everywhere in vla_ros (ACT, openpi and LeRobot use the same):
``[arm0 joints..., arm0 gripper, arm1 joints..., arm1 gripper]`` with grippers normalised to
[0, 1], 0 = closed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

PACKAGE_NAME = "vla_ros"


class ProfileError(ValueError):
    """A robot profile is missing, malformed or inconsistent."""

    def __init__(self, source: str, key: str, problem: str):
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"robot profile {source}: key '{key}': {problem}")


@dataclass(frozen=True)
class GripperMap:
    """Linear map between a raw gripper reading (m or rad) and [0, 1] with 0 = closed."""

    open: float
    close: float

    def normalize(self, raw):
        return (np.asarray(raw, dtype=np.float64) - self.close) / (self.open - self.close)

    def denormalize(self, value):
        return np.asarray(value, dtype=np.float64) * (self.open - self.close) + self.close


# How a follower's driver takes goals; each is defined by its receiver's own contract:
# - interbotix: the Interbotix xs_sdk driver: interbotix_xs_msgs/JointGroupCommand (the arm group's
#   joint positions, rad) on arm_command_topic and JointSingleCommand (the gripper joint angle, rad)
#   on gripper_command_topic. The driver holds the last goal forever and reads no stamps.
# - ros2_control: two joint_trajectory_controllers per arm: the arm joints only on
#   arm_command_topic, the finger joint (m) on gripper_command_topic; header stamp zero.
# - trajectory: one JointTrajectory with the arm joints and the gripper joint (rad), for custom stacks.
COMMAND_INTERFACES = ("interbotix", "ros2_control", "trajectory")


@dataclass(frozen=True)
class ArmSpec:
    name: str
    joint_states_topic: str
    leader_joint_states_topic: str
    arm_command_topic: str
    gripper_command_topic: str  # "" with the trajectory interface
    driver_namespace: str  # the driver node's namespace (its services), "" when unknown
    gripper_joint: str
    finger_joint: str
    leader_gripper_joint: str


@dataclass(frozen=True)
class CameraSpec:
    name: str
    topic: str
    width: int
    height: int


@dataclass(frozen=True)
class RobotProfile:
    """A validated robot profile. Per-joint arrays are already expanded to the full vector."""

    name: str
    source: str
    control_rate_hz: float
    command_interface: str
    interbotix_arm_group: str
    arm_joints: tuple[str, ...]
    arms: tuple[ArmSpec, ...]
    cameras: tuple[CameraSpec, ...]
    follower_finger: GripperMap
    follower_joint: GripperMap
    leader_finger: GripperMap
    leader_joint: GripperMap
    position_lower: np.ndarray
    position_upper: np.ndarray
    velocity_limit: np.ndarray
    acceleration_limit: np.ndarray
    tracking_limit: np.ndarray
    settle_deadband: np.ndarray
    limit_margin: np.ndarray
    start_pose: np.ndarray

    @property
    def dt(self) -> float:
        return 1.0 / self.control_rate_hz

    @property
    def joints_per_arm(self) -> int:
        """Arm joints plus the gripper."""
        return len(self.arm_joints) + 1

    @property
    def action_dim(self) -> int:
        return self.joints_per_arm * len(self.arms)

    @property
    def vector_names(self) -> tuple[str, ...]:
        """Names of the entries of the state/action vector, e.g. 'left_waist', 'left_gripper'."""
        return tuple(
            f"{arm.name}_{joint}" for arm in self.arms for joint in (*self.arm_joints, "gripper")
        )

    @property
    def gripper_indices(self) -> tuple[int, ...]:
        n = self.joints_per_arm
        return tuple(i * n + n - 1 for i in range(len(self.arms)))

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(cam.name for cam in self.cameras)

    def arm_slice(self, arm_index: int) -> slice:
        n = self.joints_per_arm
        return slice(arm_index * n, (arm_index + 1) * n)

    def command_joint_names(self, arm: ArmSpec) -> tuple[str, ...]:
        """Joint names of one arm's single JointTrajectory (trajectory interface): the arm joints,
        then the gripper joint."""
        return (*self.arm_joints, arm.gripper_joint)

    def safe_lower(self) -> np.ndarray:
        return self.position_lower + self.limit_margin

    def safe_upper(self) -> np.ndarray:
        return self.position_upper - self.limit_margin


def config_dir() -> Path:
    """The directory holding the bundled profiles: the installed share dir, else the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory(PACKAGE_NAME)) / "config"
        if share.is_dir():
            return share
    except Exception:  # no ament index: a checkout, or an install used without AMENT_PREFIX_PATH
        pass
    # An install not on the ament path (an unsourced colcon workspace, a venv run by hand) keeps its
    # data files in <prefix>/share/vla_ros, where <prefix> is an ancestor of the installed code
    # (<prefix>/lib/python3.X/site-packages/vla_ros, or local/lib/.../dist-packages on Debian).
    here = Path(__file__).resolve()
    for prefix in here.parents[2:]:
        installed = prefix / "share" / PACKAGE_NAME / "config"
        if installed.is_dir():
            return installed
    return here.parents[2] / "config"


def resolve_profile_path(name_or_path: str | os.PathLike) -> Path:
    """A path to a YAML file, or the name of a bundled profile such as 'aloha_stationary'."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        return Path(text)
    return config_dir() / f"{text}.yaml"


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a profile, applying 'extends: other_profile' as a top-level override."""
    if not path.is_file():
        raise ProfileError(str(path), "<file>", "file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(str(path), "<file>", f"invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ProfileError(str(path), "<file>", "top level must be a mapping")
    parent_name = data.pop("extends", None)
    if parent_name is None:
        return data
    if not isinstance(parent_name, str):
        raise ProfileError(str(path), "extends", "must be a profile name")
    # A parent beside the child wins: a variant is read with the parent it was written next to.
    parent_path = path.parent / f"{parent_name}.yaml"
    if not parent_path.is_file():
        parent_path = resolve_profile_path(parent_name)
        if not parent_path.is_absolute():
            parent_path = path.parent / parent_path
    if parent_path.resolve() in seen:
        raise ProfileError(str(path), "extends", f"cycle through {parent_path}")
    merged = _read_yaml(parent_path, (*seen, path.resolve()))
    merged.update(data)
    return merged


class _Reader:
    """Typed access to the raw mapping; every failure names file and key."""

    def __init__(self, source: str, data: dict[str, Any]):
        self.source, self.data = source, data

    def fail(self, key: str, problem: str):
        raise ProfileError(self.source, key, problem)

    def get(self, mapping: dict, key: str, path: str):
        if not isinstance(mapping, dict) or key not in mapping:
            self.fail(path, "missing")
        return mapping[key]

    def string(self, mapping: dict, key: str, path: str) -> str:
        value = self.get(mapping, key, path)
        if not isinstance(value, str) or not value:
            self.fail(path, f"must be a non-empty string, got {value!r}")
        return value

    def topic(self, mapping: dict, key: str, path: str) -> str:
        value = self.string(mapping, key, path)
        if not value.startswith("/") or " " in value:
            self.fail(path, f"must be an absolute ROS topic name, got {value!r}")
        return value

    def number(self, mapping: dict, key: str, path: str, positive: bool = False) -> float:
        value = self.get(mapping, key, path)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(path, f"must be a finite number, got {value!r}")
        if positive and value <= 0:
            self.fail(path, f"must be > 0, got {value!r}")
        return float(value)

    def vector(self, mapping: dict, key: str, path: str, length: int, min_value=None) -> np.ndarray:
        value = self.get(mapping, key, path)
        if not isinstance(value, list) or len(value) != length:
            self.fail(path, f"must be a list of {length} numbers (one per joint), got {value!r}")
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
                self.fail(f"{path}[{i}]", f"must be a finite number, got {item!r}")
            if min_value is not None and item < min_value:
                self.fail(f"{path}[{i}]", f"must be >= {min_value}, got {item!r}")
        return np.asarray(value, dtype=np.float64)

    def gripper(self, mapping: dict, key: str) -> GripperMap:
        path = f"grippers.{key}"
        entry = self.get(mapping, key, path)
        gmap = GripperMap(self.number(entry, "open", f"{path}.open"), self.number(entry, "close", f"{path}.close"))
        if gmap.open == gmap.close:
            self.fail(path, "open and close must differ")
        return gmap


def load_profile(name_or_path: str | os.PathLike) -> RobotProfile:
    """Load and validate a robot profile by bundled name or by path."""
    path = resolve_profile_path(name_or_path)
    data = _read_yaml(path)
    r = _Reader(str(path), data)

    name = r.string(data, "name", "name")
    rate = r.number(data, "control_rate_hz", "control_rate_hz", positive=True)

    arm_joints = r.get(data, "arm_joints", "arm_joints")
    if (
        not isinstance(arm_joints, list)
        or not arm_joints
        or not all(isinstance(j, str) and j for j in arm_joints)
        or len(set(arm_joints)) != len(arm_joints)
    ):
        r.fail("arm_joints", f"must be a non-empty list of distinct joint names, got {arm_joints!r}")
    per_arm = len(arm_joints) + 1

    grippers = r.get(data, "grippers", "grippers")
    maps = {key: r.gripper(grippers, key) for key in ("follower_finger", "follower_joint", "leader_finger", "leader_joint")}

    limits = r.get(data, "limits", "limits")
    lower = r.vector(limits, "position_lower", "limits.position_lower", per_arm)
    upper = r.vector(limits, "position_upper", "limits.position_upper", per_arm)
    bad = np.nonzero(lower >= upper)[0]
    if bad.size:
        r.fail(f"limits.position_lower[{bad[0]}]", "must be below limits.position_upper")
    velocity = r.vector(limits, "velocity", "limits.velocity", per_arm)
    acceleration = r.vector(limits, "acceleration", "limits.acceleration", per_arm)
    tracking = r.vector(limits, "tracking", "limits.tracking", per_arm)
    settle_deadband = r.vector(limits, "settle_deadband", "limits.settle_deadband", per_arm, min_value=0.0)
    for key, values in (("velocity", velocity), ("acceleration", acceleration), ("tracking", tracking)):
        nonpositive = np.nonzero(values <= 0)[0]
        if nonpositive.size:
            r.fail(f"limits.{key}[{nonpositive[0]}]", "must be > 0")
    margin = r.vector(limits, "margin", "limits.margin", per_arm, min_value=0.0)
    too_wide = np.nonzero(2 * margin >= upper - lower)[0]
    if too_wide.size:
        r.fail(f"limits.margin[{too_wide[0]}]", "leaves no room between the position limits")

    start = r.vector(data, "start_pose", "start_pose", per_arm)
    outside = np.nonzero((start < lower + margin) | (start > upper - margin))[0]
    if outside.size:
        r.fail(f"start_pose[{outside[0]}]", "lies outside the position limits minus margin")

    interface = r.string(data, "command_interface", "command_interface")
    if interface not in COMMAND_INTERFACES:
        r.fail("command_interface", f"must be one of {list(COMMAND_INTERFACES)}, got {interface!r}")
    arm_group = r.string(data, "interbotix_arm_group", "interbotix_arm_group") if interface == "interbotix" else ""

    raw_arms = r.get(data, "arms", "arms")
    if not isinstance(raw_arms, list) or not raw_arms:
        r.fail("arms", "must be a non-empty list")
    arms = []
    for i, entry in enumerate(raw_arms):
        p = f"arms[{i}]"
        arms.append(
            ArmSpec(
                name=r.string(entry, "name", f"{p}.name"),
                joint_states_topic=r.topic(entry, "joint_states_topic", f"{p}.joint_states_topic"),
                leader_joint_states_topic=r.topic(entry, "leader_joint_states_topic", f"{p}.leader_joint_states_topic"),
                arm_command_topic=r.topic(entry, "arm_command_topic", f"{p}.arm_command_topic"),
                gripper_command_topic=(r.topic(entry, "gripper_command_topic", f"{p}.gripper_command_topic")
                                       if interface != "trajectory" else ""),
                driver_namespace=(r.topic(entry, "driver_namespace", f"{p}.driver_namespace")
                                  if isinstance(entry, dict) and "driver_namespace" in entry else ""),
                gripper_joint=r.string(entry, "gripper_joint", f"{p}.gripper_joint"),
                finger_joint=r.string(entry, "finger_joint", f"{p}.finger_joint"),
                leader_gripper_joint=r.string(entry, "leader_gripper_joint", f"{p}.leader_gripper_joint"),
            )
        )
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        r.fail("arms", f"arm names must be distinct, got {names}")

    raw_cams = r.get(data, "cameras", "cameras")
    if not isinstance(raw_cams, list) or not raw_cams:
        r.fail("cameras", "must be a non-empty list")
    cameras = []
    for i, entry in enumerate(raw_cams):
        p = f"cameras[{i}]"
        width = r.number(entry, "width", f"{p}.width", positive=True)
        height = r.number(entry, "height", f"{p}.height", positive=True)
        if width != int(width) or height != int(height):
            r.fail(f"{p}.width", "width and height must be whole numbers")
        cameras.append(CameraSpec(r.string(entry, "name", f"{p}.name"), r.topic(entry, "topic", f"{p}.topic"), int(width), int(height)))
    cam_names = [c.name for c in cameras]
    if len(set(cam_names)) != len(cam_names):
        r.fail("cameras", f"camera names must be distinct, got {cam_names}")

    def tile(values: np.ndarray) -> np.ndarray:
        out = np.tile(values, len(arms))
        out.setflags(write=False)
        return out

    return RobotProfile(
        name=name,
        source=str(path),
        control_rate_hz=rate,
        command_interface=interface,
        interbotix_arm_group=arm_group,
        arm_joints=tuple(arm_joints),
        arms=tuple(arms),
        cameras=tuple(cameras),
        position_lower=tile(lower),
        position_upper=tile(upper),
        velocity_limit=tile(velocity),
        acceleration_limit=tile(acceleration),
        tracking_limit=tile(tracking),
        settle_deadband=tile(settle_deadband),
        limit_margin=tile(margin),
        start_pose=tile(start),
        **maps,
    )
