"""The followers' command interfaces, each exactly as its real receiver defines it.

One small class per interface sends the 14-vector of normalised targets (``Sender``), and one
per interface receives and validates those messages the way the real receiver does
(``Receiver``: sim_node is the receiver in simulation). The robot profile's ``command_interface``
picks the pair:

- ``interbotix`` (the stock ALOHA stack, Interbotix ``xs_sdk``): ``JointGroupCommand`` with the
  profile's arm group and the six arm positions (rad) on ``arm_command_topic``, and
  ``JointSingleCommand`` with the gripper joint name and the gripper joint angle (rad) on
  ``gripper_command_topic``. The driver writes goals straight to the servos, holds the last goal
  forever and reads no stamps. It refuses a group it does not know and a group command whose
  length differs from the group's joint count.
- ``ros2_control`` (Interbotix's ros2_control setup): a ``JointTrajectory`` for the arm's
  joint_trajectory_controller (the six arm joints, rad) and one for the gripper controller (the
  finger joint, m). Header stamp zero ("start now") and one point one tick ahead, so a message
  that arrives late is never dropped as ending in the past. The receiver applies the
  controller's own validation (joint set, strictly increasing times, sizes, stale end time).
- ``trajectory``: one ``JointTrajectory`` naming the arm joints and the gripper joint (rad), for
  custom stacks; stamped and validated like ``ros2_control``.

Commands use depth 1: a driver that reads no stamps must never replay queued stale goals after
a stall.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_ros.robot.profile import ArmSpec, RobotProfile
from vla_ros.ros import convert

try:  # from the Interbotix workspace on a robot; generated into the venv by `make venv` here
    from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand
except ImportError:  # pragma: no cover - exercised only on machines without the package
    JointGroupCommand = JointSingleCommand = None

INTERBOTIX_MISSING = ("the robot profile's command_interface is 'interbotix', but the ROS package "
                      "interbotix_xs_msgs is not available: source the Interbotix workspace "
                      "(interbotix_ros_core) before starting vla_ros")
# xs_sdk operating modes in which a command is a position in radians.
POSITION_MODES = ("position", "ext_position", "current_based_position")


def command_qos() -> QoSProfile:
    """Reliable, depth 1: only the newest goal matters, and a backlog must never be replayed."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def require_interbotix_msgs() -> None:
    if JointGroupCommand is None:
        raise ImportError(INTERBOTIX_MISSING)


def arm_command_type(profile: RobotProfile):
    """The message type on each arm's arm_command_topic."""
    if profile.command_interface == "interbotix":
        require_interbotix_msgs()
        return JointGroupCommand
    return JointTrajectory


def command_topics(profile: RobotProfile) -> list[str]:
    """Every topic the profile's interface sends on, arm by arm."""
    topics = []
    for arm in profile.arms:
        topics.append(arm.arm_command_topic)
        if profile.command_interface != "trajectory":
            topics.append(arm.gripper_command_topic)
    return topics


# --- senders ---------------------------------------------------------------------------------


class Sender:
    """Publishes one command (the normalised 14-vector) per call on the profile's interface."""

    def __init__(self, node, profile: RobotProfile, dt: float, topic_prefix: str = ""):
        self.profile, self.dt = profile, dt
        self.publishers = [self._make_publishers(node, arm, topic_prefix) for arm in profile.arms]

    def _make_publishers(self, node, arm: ArmSpec, prefix: str):
        raise NotImplementedError

    def messages(self, command: np.ndarray) -> list[list]:
        """Per arm, the messages for ``command`` in publisher order."""
        command = np.asarray(command, dtype=np.float64)
        if command.shape != (self.profile.action_dim,) or not np.all(np.isfinite(command)):
            raise ValueError(f"a command must be {self.profile.action_dim} finite values, got {command!r}")
        return [self._arm_messages(arm, command[self.profile.arm_slice(i)])
                for i, arm in enumerate(self.profile.arms)]

    def _arm_messages(self, arm: ArmSpec, part: np.ndarray) -> list:
        raise NotImplementedError

    def send(self, command: np.ndarray) -> None:
        for publishers, messages in zip(self.publishers, self.messages(command)):
            for publisher, msg in zip(publishers, messages):
                publisher.publish(msg)


class InterbotixSender(Sender):
    def _make_publishers(self, node, arm, prefix):
        require_interbotix_msgs()
        return (node.create_publisher(JointGroupCommand, prefix + arm.arm_command_topic, command_qos()),
                node.create_publisher(JointSingleCommand, prefix + arm.gripper_command_topic, command_qos()))

    def _arm_messages(self, arm, part):
        group = JointGroupCommand(name=self.profile.interbotix_arm_group, cmd=[float(v) for v in part[:-1]])
        gripper = JointSingleCommand(name=arm.gripper_joint, cmd=float(self.profile.follower_joint.denormalize(part[-1])))
        return [group, gripper]


def _one_point_trajectory(joint_names: Sequence[str], positions: Sequence[float], dt: float) -> JointTrajectory:
    """Stamp zero (start on receipt) and one point one tick ahead."""
    msg = JointTrajectory(header=convert.make_header(Time()), joint_names=list(joint_names))
    msg.points = [JointTrajectoryPoint(positions=[float(p) for p in positions],
                                       time_from_start=convert.seconds_to_duration(dt))]
    return msg


class Ros2ControlSender(Sender):
    def _make_publishers(self, node, arm, prefix):
        return (node.create_publisher(JointTrajectory, prefix + arm.arm_command_topic, command_qos()),
                node.create_publisher(JointTrajectory, prefix + arm.gripper_command_topic, command_qos()))

    def _arm_messages(self, arm, part):
        finger = float(self.profile.follower_finger.denormalize(part[-1]))
        return [_one_point_trajectory(self.profile.arm_joints, part[:-1], self.dt),
                _one_point_trajectory([arm.finger_joint], [finger], self.dt)]


class TrajectorySender(Sender):
    def _make_publishers(self, node, arm, prefix):
        return (node.create_publisher(JointTrajectory, prefix + arm.arm_command_topic, command_qos()),)

    def _arm_messages(self, arm, part):
        positions = [*part[:-1], float(self.profile.follower_joint.denormalize(part[-1]))]
        return [_one_point_trajectory(self.profile.command_joint_names(arm), positions, self.dt)]


SENDERS = {"interbotix": InterbotixSender, "ros2_control": Ros2ControlSender, "trajectory": TrajectorySender}


def make_sender(node, profile: RobotProfile, dt: float, topic_prefix: str = "") -> Sender:
    """The sender for the profile's interface; ``topic_prefix`` moves every topic (dry runs)."""
    return SENDERS[profile.command_interface](node, profile, dt, topic_prefix)


# --- receivers -------------------------------------------------------------------------------


class CommandRejected(ValueError):
    """A command the real receiver would refuse (or the servos ignore)."""


@dataclass
class JointGoal:
    """What a receiver accepted for some joints of one arm: ``targets[k]`` (normalised gripper)
    is due ``times[k]`` seconds after ``start`` (receiver clock); one point at time 0 is a goal
    that applies at once and is held."""

    arm_index: int
    joints: tuple[int, ...]  # indices into the arm's entries (arm joints, then the gripper)
    start: float
    times: np.ndarray
    targets: np.ndarray  # (K, len(joints))


def validate_joint_trajectory(msg, controller_joints: Sequence[str], now: float) -> tuple[float | None, np.ndarray, np.ndarray]:
    """A joint_trajectory_controller's validation of a JointTrajectory (ros2_controllers, Humble
    to Kilted defaults: no partial joint goals). Returns (start stamp in seconds or None for
    "start now", times (K,), positions (K, joints) in ``controller_joints`` order)."""
    names = [str(n) for n in msg.joint_names]
    if len(names) != len(controller_joints):
        raise CommandRejected(f"joints on incoming trajectory {names} don't match the controller joints "
                              f"{list(controller_joints)}")
    if not names:
        raise CommandRejected("empty joint names on incoming trajectory")
    if len(msg.points) == 0:
        raise CommandRejected("empty trajectory received")
    stamp = convert.time_to_seconds(msg.header.stamp)
    if stamp != 0.0:
        end = stamp + convert.duration_to_seconds(msg.points[-1].time_from_start)
        if end < now:
            raise CommandRejected(f"trajectory with non-zero start time {stamp:.6f} ends in the past "
                                  f"({end:.6f} < now {now:.6f})")
    for name in names:
        if name not in controller_joints:
            raise CommandRejected(f"incoming joint {name} doesn't match the controller's joints {list(controller_joints)}")
    if len(set(names)) != len(names):
        raise CommandRejected(f"incoming trajectory repeats joints: {names}")
    times = np.array([convert.duration_to_seconds(p.time_from_start) for p in msg.points])
    bad = np.nonzero(np.diff(times) <= 0)[0]
    if bad.size:
        i = int(bad[0])
        raise CommandRejected(f"time between points {i} and {i + 1} is not strictly increasing "
                              f"({times[i]:.6f}, {times[i + 1]:.6f})")
    for i, point in enumerate(msg.points):
        if len(point.positions) != len(names):
            raise CommandRejected(f"mismatch between joint_names size ({len(names)}) and positions "
                                  f"({len(point.positions)}) at point #{i}")
        for field in ("velocities", "accelerations"):
            values = getattr(point, field)
            if len(values) not in (0, len(names)):
                raise CommandRejected(f"mismatch between joint_names size ({len(names)}) and {field} "
                                      f"({len(values)}) at point #{i}")
        if len(point.effort):
            raise CommandRejected("trajectories with effort fields are not supported")
    order = [names.index(j) for j in controller_joints]
    positions = np.array([[float(p.positions[k]) for k in order] for p in msg.points])
    return (stamp if stamp != 0.0 else None), times, positions


class Receiver:
    """Subscribes to the profile's command topics and hands validated goals to ``on_goal``;
    ``on_reject(topic, reason)`` gets everything the real receiver would refuse. ``now()`` is
    the receiver's clock in seconds (stamp checks), ``start_time()`` the time that plans run on."""

    def __init__(self, node, profile: RobotProfile, on_goal: Callable[[JointGoal], None],
                 on_reject: Callable[[str, str], None], now: Callable[[], float],
                 start_time: Callable[[], float], topic_prefix: str = "",
                 on_message: Callable[[str, object], None] | None = None, depth: int = 10):
        self.profile, self.on_goal, self.on_reject = profile, on_goal, on_reject
        self.now, self.start_time, self.on_message = now, start_time, on_message
        self.qos = command_qos()
        self.qos.depth = depth
        self._subscribe(node, topic_prefix)

    def _subscribe(self, node, prefix: str) -> None:
        raise NotImplementedError

    def _listen(self, node, msg_type, topic: str, arm_index: int, decode) -> None:
        """Subscribe ``topic``; each message goes through ``decode(arm_index, msg)`` to a goal."""
        node.create_subscription(msg_type, topic,
                                 lambda msg: self._handle(topic, msg, lambda: decode(arm_index, msg)), self.qos)

    def _handle(self, topic: str, msg, decode: Callable[[], JointGoal]) -> None:
        if self.on_message is not None:
            self.on_message(topic, msg)
        try:
            goal = decode()
            self._check_limits(goal)
        except CommandRejected as exc:
            self.on_reject(topic, str(exc))
            return
        self.on_goal(goal)

    def _check_limits(self, goal: JointGoal) -> None:
        """Non-finite goals and goals outside the URDF limits are refused: the servo firmware
        ignores a goal beyond its position limits (the drivers themselves do not check)."""
        part = self.profile.arm_slice(goal.arm_index)
        lower = self.profile.position_lower[part][list(goal.joints)]
        upper = self.profile.position_upper[part][list(goal.joints)]
        if not np.all(np.isfinite(goal.targets)):
            raise CommandRejected("non-finite goal")
        outside = np.argwhere((goal.targets < lower - 1e-6) | (goal.targets > upper + 1e-6))
        if outside.size:
            point, k = outside[0]
            name = self.profile.vector_names[part][goal.joints[k]]
            raise CommandRejected(f"{name} = {goal.targets[point, k]:.4f} is outside the limits "
                                  f"[{lower[k]:.4f}, {upper[k]:.4f}] (gripper normalised)")

    def _trajectory_goal(self, arm_index: int, msg, controller_joints: Sequence[str],
                         joints: tuple[int, ...], gripper_map=None) -> JointGoal:
        stamp, times, positions = validate_joint_trajectory(msg, controller_joints, self.now())
        if gripper_map is not None:
            positions[:, -1] = gripper_map.normalize(positions[:, -1])
        start = self.start_time() if stamp is None else self.start_time() + (stamp - self.now())
        return JointGoal(arm_index, joints, start, times, positions)


class InterbotixReceiver(Receiver):
    """xs_sdk's command subscriptions: groups and single joints by name, operating modes and
    torque per joint (set through the driver's services, see :class:`InterbotixDriverState`)."""

    def __init__(self, *args, driver_state: InterbotixDriverState, **kwargs):
        self.driver = driver_state
        super().__init__(*args, **kwargs)

    def _subscribe(self, node, prefix):
        require_interbotix_msgs()
        for index, arm in enumerate(self.profile.arms):
            self._listen(node, JointGroupCommand, prefix + arm.arm_command_topic, index, self._group)
            self._listen(node, JointSingleCommand, prefix + arm.gripper_command_topic, index, self._single)

    def _group(self, arm_index: int, msg) -> JointGoal:
        joints = self.driver.group_joints(msg.name)
        if len(msg.cmd) != len(joints):
            raise CommandRejected(f"number of commands ({len(msg.cmd)}) does not match the number of joints "
                                  f"in group '{msg.name}' ({len(joints)}); not executed")
        self.driver.check_commandable(arm_index, joints)
        values = np.asarray(list(msg.cmd), dtype=np.float64)
        return self._goal(arm_index, joints, values)

    def _single(self, arm_index: int, msg) -> JointGoal:
        joints = self.driver.single_joint(msg.name)
        self.driver.check_commandable(arm_index, joints)
        return self._goal(arm_index, joints, np.array([float(msg.cmd)]))

    def _goal(self, arm_index: int, joints: tuple[int, ...], values: np.ndarray) -> JointGoal:
        gripper = self.profile.joints_per_arm - 1
        values = values.copy()
        for k, joint in enumerate(joints):
            if joint == gripper:
                values[k] = float(self.profile.follower_joint.normalize(values[k]))
        return JointGoal(arm_index, joints, self.start_time(), np.zeros(1), values[None, :])


class InterbotixDriverState:
    """The parts of an xs_sdk driver's state that decide whether it executes a command: its
    groups, its motors, their operating modes and torque. Starts as the ALOHA follower motor
    configs do (arm: position; gripper: ``initial_gripper_mode``, torque on)."""

    def __init__(self, profile: RobotProfile, initial_gripper_mode: str = "linear_position"):
        self.profile = profile
        names = (*profile.arm_joints, "gripper")
        self.joint_index = {name: i for i, name in enumerate(profile.arm_joints)}
        self.gripper_names = {arm.gripper_joint for arm in profile.arms}
        self.groups = {profile.interbotix_arm_group: tuple(range(len(profile.arm_joints)))}
        self.modes = [[("position" if n != "gripper" else initial_gripper_mode) for n in names] for _ in profile.arms]
        self.torque = [[True] * len(names) for _ in profile.arms]
        self.reboots = [0] * len(profile.arms)

    def group_joints(self, name: str) -> tuple[int, ...]:
        if name not in self.groups:
            raise CommandRejected(f"the '{name}' joint group does not exist (groups: {sorted(self.groups)})")
        return self.groups[name]

    def single_joint(self, name: str) -> tuple[int, ...]:
        if name in self.gripper_names:
            return (self.profile.joints_per_arm - 1,)
        if name in self.joint_index:
            return (self.joint_index[name],)
        raise CommandRejected(f"the '{name}' joint does not exist")

    def joints_for(self, cmd_type: str, name: str) -> tuple[int, ...]:
        if cmd_type == "group":
            return self.group_joints(name)
        if cmd_type == "single":
            return self.single_joint(name)
        raise CommandRejected(f"invalid cmd_type '{cmd_type}' (use 'group' or 'single')")

    def check_commandable(self, arm_index: int, joints: tuple[int, ...]) -> None:
        """Position goals in radians are executed only in a position mode with torque on. The
        real driver would read a gripper goal in linear_position mode as metres: refused here,
        so that a missing follower setup shows instead of moving the gripper wrongly."""
        for joint in joints:
            mode = self.modes[arm_index][joint]
            if mode not in POSITION_MODES:
                raise CommandRejected(f"joint {joint} of arm {arm_index} is in '{mode}' mode, not a position "
                                      f"mode in radians: run the follower setup (set_operating_modes)")
            if not self.torque[arm_index][joint]:
                raise CommandRejected(f"joint {joint} of arm {arm_index} has torque off: goal ignored")


class Ros2ControlReceiver(Receiver):
    def _subscribe(self, node, prefix):
        for index, arm in enumerate(self.profile.arms):
            self._listen(node, JointTrajectory, prefix + arm.arm_command_topic, index, self._arm)
            self._listen(node, JointTrajectory, prefix + arm.gripper_command_topic, index, self._gripper)

    def _arm(self, arm_index, msg):
        joints = tuple(range(len(self.profile.arm_joints)))
        return self._trajectory_goal(arm_index, msg, self.profile.arm_joints, joints)

    def _gripper(self, arm_index, msg):
        arm = self.profile.arms[arm_index]
        return self._trajectory_goal(arm_index, msg, [arm.finger_joint], (self.profile.joints_per_arm - 1,),
                                     self.profile.follower_finger)


class TrajectoryReceiver(Receiver):
    def _subscribe(self, node, prefix):
        for index, arm in enumerate(self.profile.arms):
            self._listen(node, JointTrajectory, prefix + arm.arm_command_topic, index, self._trajectory)

    def _trajectory(self, arm_index, msg):
        arm = self.profile.arms[arm_index]
        joints = tuple(range(self.profile.joints_per_arm))
        return self._trajectory_goal(arm_index, msg, self.profile.command_joint_names(arm), joints,
                                     self.profile.follower_joint)


def make_receiver(node, profile: RobotProfile, on_goal, on_reject, now, start_time, topic_prefix: str = "",
                  driver_state: InterbotixDriverState | None = None, on_message=None, depth: int = 10) -> Receiver:
    """The receiver for the profile's interface. Depth 10 as the real receivers subscribe (xs_sdk:
    10; joint_trajectory_controller: the system default); the senders keep depth 1, so a stalled
    link never queues old goals at the sender. A recorder that must see every message asks for more."""
    if profile.command_interface == "interbotix":
        return InterbotixReceiver(node, profile, on_goal, on_reject, now, start_time, topic_prefix, on_message,
                                  depth, driver_state=driver_state or InterbotixDriverState(profile))
    cls = Ros2ControlReceiver if profile.command_interface == "ros2_control" else TrajectoryReceiver
    return cls(node, profile, on_goal, on_reject, now, start_time, topic_prefix, on_message, depth)


class CommandLog:
    """Records what a node sends on the profile's command interface, decoded as its receiver
    decodes it (tests, benchmarks, simulated episodes). ``pose`` is the latest commanded
    normalised 14-vector (first point of a trajectory; NaN until commanded); ``arm_commands[i]``
    holds (receipt time on the node's clock, arm i's 7 entries) for every command of arm i (one
    per control tick: recorded when its gripper goal, the last of the tick, arrives);
    ``messages[topic]`` the raw messages; ``rejections`` what the real receiver would refuse."""

    def __init__(self, node, profile: RobotProfile, topic_prefix: str = ""):
        self.profile = profile
        self.pose = np.full(profile.action_dim, np.nan)
        self.arm_commands: list[list[tuple[float, np.ndarray]]] = [[] for _ in profile.arms]
        self.messages: dict[str, list] = {prefix_topic: [] for prefix_topic in
                                          (topic_prefix + t for t in command_topics(profile))}
        self.rejections: list[tuple[str, str]] = []
        self.clock = clock = node.get_clock()
        self.receiver = make_receiver(
            node, profile, self._on_goal, lambda topic, reason: self.rejections.append((topic, reason)),
            now=lambda: clock.now().nanoseconds * 1e-9, start_time=time.monotonic, topic_prefix=topic_prefix,
            driver_state=InterbotixDriverState(profile, "current_based_position"),
            on_message=lambda topic, msg: self.messages[topic].append(msg), depth=1000)

    def _on_goal(self, goal: JointGoal) -> None:
        part = self.profile.arm_slice(goal.arm_index)
        arm_pose = self.pose[part]
        arm_pose[list(goal.joints)] = goal.targets[0]
        self.pose[part] = arm_pose
        # Senders command the gripper last in each tick: its goal completes the arm's command.
        if self.profile.joints_per_arm - 1 in goal.joints and np.all(np.isfinite(arm_pose)):
            self.arm_commands[goal.arm_index].append((self.clock.now().nanoseconds * 1e-9, arm_pose.copy()))

    def counts(self) -> list[int]:
        return [len(commands) for commands in self.arm_commands]
