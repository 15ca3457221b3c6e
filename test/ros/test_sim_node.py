"""sim_node as its own process, driven over DDS: it publishes joint states and images at about
the configured rate, takes commands exactly as the real receivers do (xs_sdk's joint_group and
joint_single with the driver's setup services; a joint_trajectory_controller's validation),
ignores and counts what they refuse, resets through its service, and can step as fast as
possible publishing /clock."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float32
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_ros.robot import decode
from vla_ros.robot.profile import load_profile
from vla_ros.ros import convert
from vla_ros.ros.command_interfaces import command_qos, make_sender
from vla_ros.ros.follower_setup import run_follower_setup
from vla_ros.ros.qos import image_qos
from vla_ros.ros.processes import NodeProcess, Probe, module_command, ros_context

PROFILE = load_profile("aloha_sim")
CONTROL_PROFILE = load_profile("aloha_sim_ros2_control")
CAMERA = PROFILE.cameras[0]
WIDTH, HEIGHT = 320, 240
STARTUP_TIMEOUT = 60.0
PARAMS_FILE = Path(__file__).resolve().parents[2] / "config" / "sim_node.yaml"
pytestmark = [pytest.mark.ros, pytest.mark.slow]


def start_probe(probe, node, profile):
    for arm in profile.arms:
        probe.subscribe(JointState, arm.joint_states_topic)
    probe.subscribe(Image, CAMERA.topic, image_qos())
    probe.subscribe(DiagnosticArray, "/diagnostics")
    probe.sender = make_sender(probe.node, profile, profile.dt)
    for publishers in probe.sender.publishers:
        for pub in publishers:
            probe.wait_for_subscribers(pub, 1, STARTUP_TIMEOUT, node)
    probe.wait_for_messages(CAMERA.topic, 3, STARTUP_TIMEOUT, node)
    for arm in profile.arms:  # each subscription is matched on its own; a camera frame says nothing of them
        probe.wait_for_messages(arm.joint_states_topic, 1, STARTUP_TIMEOUT, node)


@pytest.fixture(scope="module")
def running(domain):
    """One real-time sim_node (interbotix interface) and a probe subscribed to everything it publishes."""
    params = {"image_width": WIDTH, "image_height": HEIGHT, "seed": 5}
    with NodeProcess(module_command("vla_ros.ros.sim_node"), params, domain_id=domain) as node, \
            ros_context(domain) as context, Probe(context) as probe:
        start_probe(probe, node, PROFILE)
        yield node, probe


def follower_setup(probe, node, profile=PROFILE):
    """Run the follower setup from a thread while the probe spins (the services answer over DDS)."""
    errors = []
    thread = threading.Thread(target=lambda: _capture(errors, run_follower_setup, probe.node, profile, 20.0))
    thread.start()
    probe.wait_for(lambda: not thread.is_alive(), 60.0, "the follower setup", node)
    assert not errors, errors


def _capture(errors, function, *args):
    try:
        function(*args)
    except Exception as exc:  # reported by the test thread
        errors.append(exc)


def state_vector(probe, profile=PROFILE):
    """The latest 14-dim state decoded from both arms' joint states."""
    return np.concatenate([
        decode.joint_state_to_arm_vector(profile, arm, probe.received[arm.joint_states_topic][-1])
        for arm in profile.arms
    ])


def diagnostics(probe) -> dict:
    messages = probe.received["/diagnostics"]
    return {kv.key: kv.value for kv in messages[-1].status[0].values} if messages else {}


def rejected_commands(probe):
    return int(diagnostics(probe).get("rejected_commands", 0))


def expect_rejections(probe, node, publish_bad, count):
    probe.wait_for(lambda: probe.received["/diagnostics"], 10.0, "diagnostics", node)
    before = rejected_commands(probe)
    publish_bad()
    probe.wait_for(lambda: rejected_commands(probe) >= before + count, 15.0,
                   f"diagnostics counting {count} rejected commands (from {before}; now {diagnostics(probe)})", node)
    probe.spin_for(0.5)
    assert rejected_commands(probe) == before + count, "a command the real receiver accepts was refused"


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


def test_radian_gripper_goals_wait_for_the_follower_setup(running):
    """The stock follower config starts the gripper in linear_position (metres): a radian goal is
    refused until set_operating_modes puts it in current_based_position, as the ALOHA scripts do."""
    node, probe = running
    arm = PROFILE.arms[0]
    gripper = JointSingleCommand(name="gripper", cmd=float(PROFILE.follower_joint.denormalize(0.5)))
    single = probe.sender.publishers[0][1]
    expect_rejections(probe, node, lambda: single.publish(gripper), 1)
    assert "linear_position" in diagnostics(probe)["last_rejection"]
    follower_setup(probe, node)
    expect_rejections(probe, node, lambda: single.publish(gripper), 0)
    assert arm.gripper_command_topic == "/follower_left/commands/joint_single"


def test_follows_joint_group_and_single_commands(running):
    node, probe = running
    follower_setup(probe, node)
    target = PROFILE.start_pose.copy()
    target[[0, 7]] = [0.3, -0.25]  # waists
    target[[2, 9]] += 0.15  # elbows
    target[[6, 13]] = [0.8, 0.6]  # grippers (normalised)
    probe.sender.send(target)  # one goal, held by the driver: no stream needed

    def arrived():
        return np.abs(state_vector(probe) - target).max() < 0.03

    probe.wait_for(arrived, 30.0, f"joints to reach {target.round(3).tolist()}", node)


def test_what_xs_sdk_refuses_is_ignored_and_counted(running):
    node, probe = running
    follower_setup(probe, node)
    held = state_vector(probe)
    group, single = probe.sender.publishers[0]
    arm_goal = [float(v) for v in PROFILE.start_pose[:6]]
    out_of_limits = list(arm_goal)
    out_of_limits[1] = float(PROFILE.position_upper[1] + 0.5)
    bad_groups = [
        JointGroupCommand(name="all", cmd=arm_goal + [1.0]),  # no such group in the follower config
        JointGroupCommand(name="arm", cmd=arm_goal + [1.0]),  # 7 values for a 6-joint group
        JointGroupCommand(name="arm", cmd=arm_goal[:3]),
        JointGroupCommand(name="arm", cmd=out_of_limits),  # the servo ignores it
        JointGroupCommand(name="arm", cmd=arm_goal[:5] + [float("nan")]),
    ]
    bad_singles = [JointSingleCommand(name="finger", cmd=1.0), JointSingleCommand(name="left_finger", cmd=0.05)]

    def publish_bad():
        for msg in bad_groups:
            group.publish(msg)
            probe.spin_for(0.25)  # depth 1: one at a time
        for msg in bad_singles:
            single.publish(msg)
            probe.spin_for(0.25)

    expect_rejections(probe, node, publish_bad, len(bad_groups) + len(bad_singles))
    assert node.alive()
    assert probe.received["/diagnostics"][-1].status[0].level == b"\x01"
    np.testing.assert_allclose(state_vector(probe), held, atol=0.03)  # still holding the last goal
    assert "ignored command" in node.stderr()


def test_reset_service_starts_a_new_episode(running):
    node, probe = running
    follower_setup(probe, node)
    moved = PROFILE.start_pose.copy()
    moved[[0, 7]] = 0.4
    probe.sender.send(moved)
    probe.wait_for(lambda: abs(state_vector(probe)[0] - 0.4) < 0.05, 30.0, "left waist to move", node)
    response = probe.call(Trigger, "/sim_node/reset", Trigger.Request(), 20.0, node)
    assert response.success, response.message
    assert "episode" in response.message
    probe.wait_for(lambda: abs(state_vector(probe)[0]) < 0.02 and abs(state_vector(probe)[7]) < 0.02,
                   20.0, "the arms back at the start pose", node)


def test_repeated_service_calls_reuse_one_client(running):
    """sim-eval resets sim_node once per episode: every call after the first goes through the
    client whose response path is already matched, so none waits on discovery again."""
    node, probe = running
    episodes = [probe.call(Trigger, "/sim_node/reset", Trigger.Request(), 20.0, node).message for _ in range(5)]
    numbers = [int(message.split()[1]) for message in episodes]
    assert numbers == list(range(numbers[0], numbers[0] + 5)), episodes
    assert len([c for c in probe.node.clients if c.srv_name == "/sim_node/reset"]) == 1
    with pytest.raises(ValueError, match="was called as Trigger"):
        probe.call(SetBool, "/sim_node/reset", SetBool.Request(), 1.0, node)


def trajectory(names, positions, times, stamp=Time()):
    msg = JointTrajectory(joint_names=list(names))
    msg.header.stamp = stamp
    msg.points = [JointTrajectoryPoint(positions=[float(v) for v in p], time_from_start=convert.seconds_to_duration(t))
                  for p, t in zip(positions, times)]
    return msg


def test_ros2_control_validation_as_the_joint_trajectory_controller(ros_domain):
    """With the ros2_control interface, sim_node accepts what a joint_trajectory_controller
    accepts (stamp zero: start now, even when late) and refuses the rest: an unknown joint, a
    missing joint, a trajectory that ends in the past, times that do not increase."""
    params = {"image_width": 64, "image_height": 48, "profile": "aloha_sim_ros2_control"}
    with NodeProcess(module_command("vla_ros.ros.sim_node"), params, domain_id=ros_domain) as node, \
            ros_context(ros_domain) as context, Probe(context) as probe:
        start_probe(probe, node, CONTROL_PROFILE)
        arm_pub = probe.node.create_publisher(JointTrajectory, CONTROL_PROFILE.arms[0].arm_command_topic, command_qos())
        probe.wait_for_subscribers(arm_pub, 1, STARTUP_TIMEOUT, node)
        joints = CONTROL_PROFILE.arm_joints
        goal = CONTROL_PROFILE.start_pose[:6].copy()
        goal[0] = 0.3
        stale = convert.seconds_to_time(time.time() - 1.0)

        def publish_bad():
            for msg in (trajectory([*joints, "gripper"], [[*goal, 1.0]], [0.02]),
                        trajectory(joints[:5], [goal[:5]], [0.02]),
                        trajectory(joints, [goal], [0.02], stamp=stale),
                        trajectory(joints, [goal, goal], [0.04, 0.02])):
                arm_pub.publish(msg)
                probe.spin_for(0.25)  # depth 1: one at a time

        expect_rejections(probe, node, publish_bad, 4)
        expect_rejections(probe, node, lambda: arm_pub.publish(trajectory(reversed(joints), [goal[::-1]], [0.3])), 0)
        probe.wait_for(lambda: abs(state_vector(probe, CONTROL_PROFILE)[0] - 0.3) < 0.03, 30.0,
                       "the waist to follow a trajectory in the controller's joint order", node)
        target = CONTROL_PROFILE.start_pose.copy()
        target[6] = 0.9  # the gripper, through the gripper controller's finger joint in metres
        probe.sender.send(target)
        probe.wait_for(lambda: abs(state_vector(probe, CONTROL_PROFILE)[6] - 0.9) < 0.05, 30.0,
                       "the gripper to follow the finger trajectory", node)


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


def test_real_time_with_publish_clock_stamps_everything_on_the_simulation_clock(ros_domain):
    """Paced by the wall clock, but /clock and every stamp carry the simulation time (sim.launch.py and
    sim-eval run the other nodes with use_sim_time on it), and diagnostics report the real-time factor."""
    params = {"publish_clock": True, "image_width": 64, "image_height": 48, "image_format": "jpeg",
              "diagnostics_period": 0.2}
    arm = load_profile("aloha_sim").arms[0]
    with NodeProcess(module_command("vla_ros.ros.sim_node"), params, PARAMS_FILE, domain_id=ros_domain) as node, \
            ros_context(ros_domain) as context, Probe(context) as probe:
        clocks = probe.subscribe(Clock, "/clock")
        states = probe.subscribe(JointState, arm.joint_states_topic)
        probe.subscribe(DiagnosticArray, "/diagnostics")
        probe.wait_for(lambda: len(clocks) >= 50 and len(states) >= 50 and diagnostics(probe), STARTUP_TIMEOUT,
                       "clock, joint states and diagnostics", node)
        started, wall_started = convert.time_to_seconds(clocks[-1].clock), time.monotonic()
        probe.spin_for(1.0)
        simulated = convert.time_to_seconds(clocks[-1].clock) - started
        assert 0.2 < simulated <= (time.monotonic() - wall_started) * 1.05 + 0.1, "paced by the wall clock"
        clock_times = {convert.time_to_seconds(c.clock) for c in clocks}
        assert convert.time_to_seconds(states[-1].header.stamp) in clock_times
        assert convert.time_to_seconds(states[-1].header.stamp) < 1e6, "simulation time, not the wall clock"
        values = diagnostics(probe)
        assert values["publish_clock"] == "True" and 0.0 < float(values["real_time_factor"]) < 1.5, values
        assert node.stop() == 0, node.report()


def test_lockstep_steps_once_per_complete_command_while_commanded(ros_domain):
    """With lockstep_timeout, a commanded simulation takes one step per full command (both arms, all
    joints) however slowly they come, and runs freely again once the commands stop; without it,
    it steps on its clock whatever the commands do."""
    params = {"publish_clock": True, "image_width": WIDTH, "image_height": HEIGHT,
              "gripper_operating_mode": "current_based_position", "diagnostics_period": 0.1}

    def steps_per_command(lockstep_timeout: float) -> tuple[list[int], dict]:
        with NodeProcess(module_command("vla_ros.ros.sim_node"), {**params, "lockstep_timeout": lockstep_timeout},
                         PARAMS_FILE, domain_id=ros_domain) as node, \
                ros_context(ros_domain) as context, Probe(context) as probe:
            clocks = probe.subscribe(Clock, "/clock")
            start_probe(probe, node, PROFILE)
            pose = state_vector(probe)
            for _ in range(3):  # the stream is live from here on
                probe.sender.send(pose)
                probe.spin_for(0.1)
            counts = [len(clocks)]
            for _ in range(10):
                probe.sender.send(pose)
                probe.spin_for(0.1)  # a commander five times slower than the simulation
                counts.append(len(clocks))
            per_command = np.diff(counts).tolist()
            probe.spin_for(lockstep_timeout + 1.0)  # commands stopped: free running again
            free = len(clocks)
            probe.spin_for(0.5)
            assert len(clocks) - free > 10, "the simulation kept waiting after the commands stopped"
            values = diagnostics(probe)
            assert node.stop() == 0, node.report()
            return per_command, values

    # The median over the commands: one late match of a subscription or a commander stalled by a busy
    # machine lets the simulation run freely for a moment (a lockstep timeout), as it should.
    per_command, values = steps_per_command(0.5)
    keys = ("accepted_commands", "rejected_commands", "last_rejection", "steps_without_new_goal", "lockstep_timeouts")
    report = f"steps after each command {per_command}; {[(k, values.get(k)) for k in keys]}"
    assert 0.5 <= np.median(per_command) <= 1.5, report
    assert int(values["accepted_commands"]) >= 4 * 13 and values["rejected_commands"] == "0", values
    per_command, values = steps_per_command(0.0)
    assert np.median(per_command) >= 3, f"steps after each command {per_command}; {values}"


def test_transfer_cube_scene_publishes_which_behaviours_completed(ros_domain):
    """Every step: each behaviour of the scene and the step it completed at ("" while it has not;
    the detectors themselves are tested in-process in test/sim/test_behaviours.py)."""
    params = {"real_time": False, "image_width": 64, "image_height": 48, "image_format": "jpeg",
              "diagnostics_period": 0.1}
    with NodeProcess(module_command("vla_ros.ros.sim_node"), params, PARAMS_FILE, domain_id=ros_domain) as node, \
            ros_context(ros_domain) as context, Probe(context) as probe:
        behaviours = probe.subscribe(DiagnosticStatus, "/sim_node/behaviours")
        probe.subscribe(DiagnosticArray, "/diagnostics")
        probe.wait_for(lambda: len(behaviours) >= 20 and diagnostics(probe), STARTUP_TIMEOUT,
                       "behaviours and diagnostics", node)
        assert {kv.key: kv.value for kv in behaviours[-1].values} == {"transfer": "", "lift_place": ""}
        assert behaviours[-1].message == "episode 0"
        assert diagnostics(probe)["completed:transfer"] == diagnostics(probe)["completed:lift_place"] == ""
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
