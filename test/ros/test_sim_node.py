"""sim_node as its own process, driven over DDS: it publishes joint states and images at about
the configured rate, follows JointTrajectory commands, ignores and counts bad ones, resets
through its service, and can step as fast as possible publishing /clock."""

from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float32
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from vla_ros.robot import decode
from vla_ros.robot.profile import load_profile
from vla_ros.ros import convert
from vla_ros.ros.qos import image_qos, state_qos
from vla_ros.ros.processes import NodeProcess, Probe, module_command, ros_context

PROFILE = load_profile("aloha_sim")
CAMERA = PROFILE.cameras[0]
WIDTH, HEIGHT = 320, 240
STARTUP_TIMEOUT = 60.0
PARAMS_FILE = Path(__file__).resolve().parents[2] / "config" / "sim_node.yaml"
pytestmark = [pytest.mark.ros, pytest.mark.slow]


@pytest.fixture(scope="module")
def running(domain):
    """One real-time sim_node and a probe subscribed to everything it publishes."""
    params = {"image_width": WIDTH, "image_height": HEIGHT, "seed": 5}
    with NodeProcess(module_command("vla_ros.ros.sim_node"), params, domain_id=domain) as node, \
            ros_context(domain) as context, Probe(context) as probe:
        for arm in PROFILE.arms:
            probe.subscribe(JointState, arm.joint_states_topic)
        probe.subscribe(Image, CAMERA.topic, image_qos())
        probe.subscribe(DiagnosticArray, "/diagnostics")
        probe.command_pubs = [probe.node.create_publisher(JointTrajectory, arm.command_topic, state_qos())
                              for arm in PROFILE.arms]
        for pub in probe.command_pubs:
            probe.wait_for_subscribers(pub, 1, STARTUP_TIMEOUT, node)
        probe.wait_for_messages(CAMERA.topic, 3, STARTUP_TIMEOUT, node)
        yield node, probe


def state_vector(probe):
    """The latest 14-dim state decoded from both arms' joint states."""
    return np.concatenate([
        decode.joint_state_to_arm_vector(PROFILE, arm, probe.received[arm.joint_states_topic][-1])
        for arm in PROFILE.arms
    ])


def rejected_commands(probe):
    messages = probe.received["/diagnostics"]
    if not messages:
        return 0
    values = {kv.key: kv.value for kv in messages[-1].status[0].values}
    return int(values["rejected_commands"])


def send(probe, targets, times):
    for pub, msg in zip(probe.command_pubs, convert.targets_to_trajectories(PROFILE, targets, times=times)):
        pub.publish(msg)


def test_publishes_at_about_the_configured_rate(running):
    node, probe = running
    topics = [arm.joint_states_topic for arm in PROFILE.arms] + [CAMERA.topic]
    before = {t: len(probe.received[t]) for t in topics}
    window = 3.0
    probe.spin_for(window)
    for topic in topics:
        rate = (len(probe.received[topic]) - before[topic]) / window
        assert 25.0 < rate < 75.0, f"{topic}: {rate:.1f} msg/s, configured 50\n{node.report()}"
    image = probe.received[CAMERA.topic][-1]
    assert (image.width, image.height, image.encoding) == (WIDTH, HEIGHT, "rgb8")
    assert convert.image_to_array(image).shape == (HEIGHT, WIDTH, 3)
    joint_state = probe.received[PROFILE.arms[0].joint_states_topic][-1]
    assert joint_state.name == [*PROFILE.arm_joints, "gripper", "left_finger", "right_finger"]
    assert len(joint_state.velocity) == 9


def test_follows_joint_trajectories(running):
    node, probe = running
    target = PROFILE.start_pose.copy()
    target[[0, 7]] = [0.3, -0.25]  # waists
    target[[2, 9]] += 0.15  # elbows
    target[[6, 13]] = [0.8, 0.6]  # grippers (normalised)
    send(probe, target[None], times=[0.5])

    def arrived():
        return np.abs(state_vector(probe) - target).max() < 0.03

    probe.wait_for(arrived, 30.0, f"joints to reach {target.round(3).tolist()}", node)


def test_bad_commands_are_ignored_and_counted(running):
    node, probe = running
    probe.wait_for(lambda: probe.received["/diagnostics"], 10.0, "diagnostics", node)
    rejected_before = rejected_commands(probe)
    held = state_vector(probe)
    arm = PROFILE.arms[0]
    good_names = list(PROFILE.command_joint_names(arm))
    out_of_limits = PROFILE.start_pose[:7].copy()
    out_of_limits[1] = PROFILE.position_upper[1] + 0.5
    bad = [
        (["waist", "nonsense"], [0.0, 0.0]),
        (good_names, [0.0] * 6 + [float("nan")]),
        (good_names, [0.0] * 3),
        (good_names, out_of_limits.tolist()),
    ]
    for names, positions in bad:
        msg = convert.targets_to_trajectories(PROFILE, PROFILE.start_pose)[0]
        msg.joint_names = names
        msg.points[0].positions = positions
        probe.command_pubs[0].publish(msg)
    probe.wait_for(lambda: rejected_commands(probe) >= rejected_before + len(bad), 15.0,
                   "diagnostics counting the rejected commands", node)
    assert node.alive()
    assert probe.received["/diagnostics"][-1].status[0].level == b"\x01"
    np.testing.assert_allclose(state_vector(probe), held, atol=0.03)  # still holding the last target
    assert "ignored command" in node.stderr()


def test_reset_service_starts_a_new_episode(running):
    node, probe = running
    moved = PROFILE.start_pose.copy()
    moved[[0, 7]] = 0.4
    send(probe, moved[None], times=[0.3])
    probe.wait_for(lambda: abs(state_vector(probe)[0] - 0.4) < 0.05, 30.0, "left waist to move", node)
    response = probe.call(Trigger, "/sim_node/reset", Trigger.Request(), 20.0, node)
    assert response.success, response.message
    assert "episode" in response.message
    probe.wait_for(lambda: abs(state_vector(probe)[0]) < 0.02 and abs(state_vector(probe)[7]) < 0.02,
                   20.0, "the arms back at the start pose", node)


def test_fast_mode_publishes_clock_and_compressed_images(ros_domain):
    params = {"real_time": False, "image_width": 64, "image_height": 48, "image_format": "jpeg", "task": "insertion"}
    with NodeProcess(module_command("vla_ros.ros.sim_node"), params, PARAMS_FILE, domain_id=ros_domain) as node, \
            ros_context(ros_domain) as context, Probe(context) as probe:
        clocks = probe.subscribe(Clock, "/clock")
        images = probe.subscribe(CompressedImage, CAMERA.topic + "/compressed", image_qos())
        rewards = probe.subscribe(Float32, "/sim_node/reward")
        successes = probe.subscribe(Bool, "/sim_node/success")
        probe.wait_for(lambda: len(clocks) >= 20 and images and rewards and successes, STARTUP_TIMEOUT,
                       "clock, images, reward and success", node)
        seconds = [convert.time_to_seconds(c.clock) for c in clocks]
        assert all(b > a for a, b in zip(seconds, seconds[1:]))
        steps = np.round(np.diff(seconds) / 0.02)
        assert np.all(steps >= 1) and np.allclose(np.diff(seconds), 0.02 * steps)
        assert convert.compressed_to_array(images[-1]).shape == (48, 64, 3)
        assert convert.time_to_seconds(images[-1].header.stamp) <= seconds[-1] + 1.0
        assert node.stop() == 0, node.report()


@pytest.mark.parametrize("params, message", [
    ({"image_format": "bmp"}, "'image_format' must be one of"),
    ({"profile": "no_such_robot"}, "no_such_robot.yaml: key '<file>': file not found"),
])
def test_bad_configuration_exits_with_clear_error(ros_domain, params, message):
    with NodeProcess(module_command("vla_ros.ros.sim_node"), params, domain_id=ros_domain) as node:
        node.process.wait(60)
        assert node.process.returncode == 2, node.report()
        assert message in node.stderr()
