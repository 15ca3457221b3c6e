"""The command interfaces send exactly what each real receiver expects, and the receivers (sim_node
in simulation) refuse what the real ones refuse.

interbotix_xs_msgs is generated into the venv from tools/interbotix_xs_msgs. Its types must be the
Interbotix driver's own: same package, names, fields and RIHS01 type hashes. The expected hashes
below were computed by building Interbotix's own interbotix_xs_msgs (github.com/Interbotix/
interbotix_ros_core, branch humble at 6da9a7c; the jazzy and rolling branches hold the same
definitions) with the same rosidl wheels and reading rosidl's type description output.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from rclpy.node import Node
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_ros.robot.profile import load_profile
from vla_ros.ros import convert
from vla_ros.ros.command_interfaces import (CommandRejected, InterbotixDriverState, command_qos, make_sender,
                                            validate_joint_trajectory)
from vla_ros.ros.processes import ros_context

pytestmark = pytest.mark.ros

STOCK = load_profile("aloha_stationary")
CONTROL = load_profile("aloha_stationary_ros2_control")
DT = 0.02
UPSTREAM_HASHES = {
    "msg/JointGroupCommand": "RIHS01_c43821d89bd439eeca1db1f2b48778277e465bde9daad1b0839077bcfbdb3e3b",
    "msg/JointSingleCommand": "RIHS01_ed9575e22584aa1f25c9e13a546641d38066caa37454ced810f165d66d842e4d",
    "srv/OperatingModes": "RIHS01_006b1919361b253d5209ffd72af5bccde63077414cd486f5bf6c5d0c7d4fcfcf",
    "srv/Reboot": "RIHS01_c892fd6da07e6769f6e5b5a702d0febd37da6c625f0a6c8931cc5d1804d42c2e",
    "srv/TorqueEnable": "RIHS01_a1f771ba053ecafffab1f663f68ad554f7daf86d83ce2a5c512a8905356a678b",
}


def test_interbotix_types_are_the_drivers_own():
    from ament_index_python.packages import get_package_share_directory
    from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand
    from interbotix_xs_msgs.srv import OperatingModes, Reboot, TorqueEnable

    assert JointGroupCommand.get_fields_and_field_types() == {"name": "string", "cmd": "sequence<float>"}
    assert JointSingleCommand.get_fields_and_field_types() == {"name": "string", "cmd": "float"}
    assert OperatingModes.Request.get_fields_and_field_types() == {
        "cmd_type": "string", "name": "string", "mode": "string", "profile_type": "string",
        "profile_velocity": "int32", "profile_acceleration": "int32"}
    assert Reboot.Request.get_fields_and_field_types() == {
        "cmd_type": "string", "name": "string", "enable": "boolean", "smart_reboot": "boolean"}
    assert TorqueEnable.Request.get_fields_and_field_types() == {
        "cmd_type": "string", "name": "string", "enable": "boolean"}
    share = Path(get_package_share_directory("interbotix_xs_msgs"))
    for name, expected in UPSTREAM_HASHES.items():
        description = json.loads((share / f"{name}.json").read_text())
        hashes = {h["type_name"]: h["hash_string"] for h in description["type_hashes"]}
        assert hashes[f"interbotix_xs_msgs/{name}"] == expected, name


@pytest.fixture
def node(ros_domain):
    with ros_context(ros_domain) as context:
        node = Node("sender_under_test", context=context)
        yield node
        node.destroy_node()


COMMAND = STOCK.start_pose.copy()
COMMAND[[0, 7]] = [0.25, -0.4]
COMMAND[[6, 13]] = [0.0, 1.0]  # left gripper closed, right open


def test_interbotix_sends_the_arm_group_and_the_gripper_joint_in_radians(node):
    sender = make_sender(node, STOCK, DT)
    assert [[p.topic_name for p in pubs] for pubs in sender.publishers] == [
        ["/follower_left/commands/joint_group", "/follower_left/commands/joint_single"],
        ["/follower_right/commands/joint_group", "/follower_right/commands/joint_single"]]
    for publishers in sender.publishers:
        for publisher in publishers:
            assert publisher.qos_profile.depth == 1 == command_qos().depth
    for arm_index, (group, gripper) in enumerate(sender.messages(COMMAND)):
        part = COMMAND[STOCK.arm_slice(arm_index)]
        assert type(group).__name__ == "JointGroupCommand" and group.name == "arm"
        np.testing.assert_allclose(np.asarray(group.cmd), part[:6], atol=1e-6)  # float32 radians
        assert type(gripper).__name__ == "JointSingleCommand" and gripper.name == "gripper"
    (_, left_gripper), (_, right_gripper) = sender.messages(COMMAND)
    assert left_gripper.cmd == pytest.approx(0.6197, abs=1e-6)  # closed: the follower joint angle
    assert right_gripper.cmd == pytest.approx(1.6214, abs=1e-6)  # open


def test_ros2_control_sends_each_controller_its_joints_stamped_zero_one_tick_ahead(node):
    sender = make_sender(node, CONTROL, DT)
    for arm_index, (arm, (arm_msg, gripper_msg)) in enumerate(zip(CONTROL.arms, sender.messages(COMMAND))):
        assert arm_msg.joint_names == list(CONTROL.arm_joints)
        assert gripper_msg.joint_names == ["left_finger"] == [arm.finger_joint]
        for msg in (arm_msg, gripper_msg):
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (0, 0)
            assert len(msg.points) == 1
            assert convert.duration_to_seconds(msg.points[0].time_from_start) == pytest.approx(DT)
            assert list(msg.points[0].velocities) == []
        np.testing.assert_allclose(arm_msg.points[0].positions, COMMAND[CONTROL.arm_slice(arm_index)][:6])
    (_, left_gripper), (_, right_gripper) = sender.messages(COMMAND)
    assert left_gripper.points[0].positions[0] == pytest.approx(0.0440)  # closed finger, metres
    assert right_gripper.points[0].positions[0] == pytest.approx(0.0579)  # open


def test_trajectory_interface_sends_one_seven_joint_trajectory(node, tmp_path):
    path = tmp_path / "custom.yaml"
    path.write_text(f"extends: {STOCK.source}\nname: custom\ncommand_interface: trajectory\n")
    profile = load_profile(path)
    sender = make_sender(node, profile, DT)
    (left,), _ = sender.messages(COMMAND)
    assert left.joint_names == [*profile.arm_joints, "gripper"]
    assert (left.header.stamp.sec, left.header.stamp.nanosec) == (0, 0)
    assert left.points[0].positions[6] == pytest.approx(0.6197)
    with pytest.raises(ValueError, match="14 finite values"):
        sender.messages(np.full(14, np.nan))


def trajectory(names, points, stamp: float = 0.0):
    msg = JointTrajectory(joint_names=list(names))
    msg.header.stamp = convert.seconds_to_time(stamp) if stamp else Time()
    for t, positions in points:
        msg.points.append(JointTrajectoryPoint(positions=[float(v) for v in positions],
                                               time_from_start=convert.seconds_to_duration(t)))
    return msg


ARM = list(STOCK.arm_joints)
NOW = 1000.0


@pytest.mark.parametrize("msg, reason", [
    (trajectory([*ARM, "gripper"], [(0.02, [0.0] * 7)]), "don't match the controller joints"),
    (trajectory(ARM[:5], [(0.02, [0.0] * 5)]), "don't match the controller joints"),
    (trajectory([*ARM[:5], "gripper"], [(0.02, [0.0] * 6)]), "doesn't match the controller's joints"),
    (trajectory(ARM, []), "empty trajectory"),
    (trajectory(ARM, [(0.02, [0.0] * 6)], stamp=NOW - 0.5), "ends in the past"),
    (trajectory(ARM, [(0.04, [0.0] * 6), (0.02, [0.0] * 6)]), "not strictly increasing"),
    (trajectory(ARM, [(0.02, [0.0] * 5)]), "positions"),
])
def test_joint_trajectory_controller_refusals(msg, reason):
    with pytest.raises(CommandRejected, match=reason):
        validate_joint_trajectory(msg, ARM, NOW)


def test_joint_trajectory_controller_acceptance():
    """Stamp zero starts now however late it arrives; joints in any order; a stamp in the past whose
    end is still ahead is fine."""
    positions = np.arange(6) * 0.1
    stamp, times, ordered = validate_joint_trajectory(trajectory(ARM[::-1], [(0.02, positions[::-1])]), ARM, NOW)
    assert stamp is None and times.tolist() == [0.02]
    np.testing.assert_allclose(ordered[0], positions)
    stamp, _, _ = validate_joint_trajectory(trajectory(ARM, [(0.5, positions)], stamp=NOW - 0.1), ARM, NOW)
    assert stamp == pytest.approx(NOW - 0.1)


def test_xs_sdk_groups_singles_and_modes():
    driver = InterbotixDriverState(STOCK)
    assert driver.group_joints("arm") == tuple(range(6))
    for name in ("all", "gripper", "Arm"):
        with pytest.raises(CommandRejected, match="does not exist"):
            driver.group_joints(name)
    assert driver.single_joint("gripper") == (6,) and driver.single_joint("elbow") == (2,)
    with pytest.raises(CommandRejected, match="does not exist"):
        driver.single_joint("left_finger")
    driver.check_commandable(0, tuple(range(6)))  # the arm starts in position mode
    with pytest.raises(CommandRejected, match="linear_position"):
        driver.check_commandable(0, (6,))
    driver.modes[0][6] = "current_based_position"
    driver.check_commandable(0, (6,))
    driver.torque[1][0] = False
    with pytest.raises(CommandRejected, match="torque off"):
        driver.check_commandable(1, (0,))
    with pytest.raises(CommandRejected, match="cmd_type"):
        driver.joints_for("grup", "arm")
