"""bag_player as its own process: a subscriber in the test receives exactly what the bag holds
(decoded fields compared), in order, on remapped topics, with /clock carrying the bag time;
playback loops, pauses and restarts through its services; a bad bag stops it with a clear
message; and the live replay path bag_player -> policy_node -> trajectories works end to end."""

import numpy as np
import pytest
from bagfactory import EPISODE_TOPIC, T0_NS, BagSpec, build_aloha_bag, write_test_profile
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from vla_ros.data.bags import BagReader, image_to_rgb, stamp_ns
from vla_ros.robot import decode
from vla_ros.ros import convert
from vla_ros.ros.qos import qos_profile
from vla_ros.ros.processes import NodeProcess, Probe, module_command, ros_context

pytestmark = pytest.mark.ros
TIMEOUT = 30.0
MESSAGE_TYPES = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage,
                 "sensor_msgs/msg/JointState": JointState, "std_msgs/msg/String": String}


def player(params, domain):
    return NodeProcess(module_command("vla_ros.ros.bag_player"), params, domain_id=domain)


def subscribe_all(probe, topics: dict[str, str], remaps: dict[str, str]):
    for topic, msgtype in topics.items():
        probe.subscribe(MESSAGE_TYPES[msgtype], remaps.get(topic, topic), qos_profile("reliable", 200))


def wait_discovered(probe, topics, process):
    probe.wait_for(lambda: all(probe.node.count_publishers(t) >= 1 for t in topics), TIMEOUT,
                   f"publishers of {topics}", process)


def same_message(bag_msg, live_msg, msgtype) -> bool:
    if msgtype.endswith("JointState"):
        return (list(bag_msg.name) == list(live_msg.name)
                and np.array_equal(bag_msg.position, np.asarray(live_msg.position))
                and stamp_ns(bag_msg.header) == stamp_ns(live_msg.header))
    if msgtype.endswith("Image"):
        return (np.array_equal(image_to_rgb(bag_msg), convert.any_image_to_array(live_msg))
                and stamp_ns(bag_msg.header) == stamp_ns(live_msg.header))
    return bag_msg.data == live_msg.data


@pytest.mark.parametrize("jpeg", [False, True])
def test_subscriber_receives_the_bag_in_order(tmp_path, ros_domain, jpeg):
    profile_path = write_test_profile(tmp_path, cameras=("cam_high",))
    spec = BagSpec(storage="mcap" if jpeg else "sqlite3", jpeg=jpeg, seconds=0.5, leaders=False,
                   episode_marker="string", episodes=[(0.0, 0.5)])
    facts = build_aloha_bag(tmp_path / "bag", profile_path, spec)
    with BagReader(facts.path) as bag:
        topics = dict(bag.topics)
        recorded = {t: [] for t in topics}
        stamps = []
        for message in bag.messages():
            recorded[message.topic].append(message.msg)
            stamps.append(message.timestamp_ns)
    camera_topic = facts.camera_topics["cam_high"]
    remaps = {camera_topic: "/replayed/cam_high"}
    params = {"bag": facts.path, "start_paused": True, "publish_clock": True, "rate": 2.0,
              "remap": [f"{camera_topic}:=/replayed/cam_high"]}
    with player(params, ros_domain) as node, ros_context(ros_domain) as context, Probe(context) as probe:
        subscribe_all(probe, topics, remaps)
        clock = probe.subscribe(Clock, "/clock", qos_profile("reliable", 1000))
        wait_discovered(probe, [remaps.get(t, t) for t in topics], node)
        assert probe.node.count_publishers(camera_topic) == 0  # remapped away
        response = probe.call(SetBool, "/bag_player/play", SetBool.Request(data=True), TIMEOUT, node)
        assert response.success
        for topic, messages in recorded.items():
            probe.wait_for_messages(remaps.get(topic, topic), len(messages), TIMEOUT, node)
        node.process.wait(TIMEOUT)
        assert node.process.returncode == 0, node.report()
        probe.spin_for(0.2)
        for topic, messages in recorded.items():
            live = probe.received[remaps.get(topic, topic)]
            assert len(live) == len(messages), topic
            assert all(same_message(a, b, topics[topic]) for a, b in zip(messages, live)), topic
        clock_ns = [c.clock.sec * 1_000_000_000 + c.clock.nanosec for c in clock]
        assert clock_ns == sorted(clock_ns) and clock_ns[0] >= stamps[0] and clock_ns[-1] == stamps[-1]
        assert [m.data for m in probe.received[EPISODE_TOPIC]] == ["task 0", "stop"]


def test_fast_loop_and_pause(tmp_path, ros_domain):
    profile_path = write_test_profile(tmp_path, cameras=("cam_high",))
    facts = build_aloha_bag(tmp_path / "bag", profile_path, BagSpec(seconds=0.2, leaders=False))
    topic = "/follower_left/joint_states"
    per_pass = facts.counts[topic]
    params = {"bag": facts.path, "rate": 0.0, "loop": True, "start_paused": True, "topics": [topic]}
    with player(params, ros_domain) as node, ros_context(ros_domain) as context, Probe(context) as probe:
        received = probe.subscribe(JointState, topic, qos_profile("reliable", 1000))
        clock = probe.subscribe(Clock, "/clock", qos_profile("reliable", 1000))  # rate 0 implies /clock
        wait_discovered(probe, [topic, "/clock"], node)
        assert probe.node.count_publishers(facts.camera_topics["cam_high"]) == 0  # not selected
        probe.call(SetBool, "/bag_player/play", SetBool.Request(data=True), TIMEOUT, node)
        probe.wait_for(lambda: len(received) >= 3 * per_pass, TIMEOUT, "three passes", node)
        probe.call(SetBool, "/bag_player/play", SetBool.Request(data=False), TIMEOUT, node)
        probe.spin_for(0.5)
        paused_count = len(received)
        probe.spin_for(0.5)
        assert len(received) == paused_count
        assert node.alive()
        assert probe.call(Trigger, "/bag_player/restart", Trigger.Request(), TIMEOUT, node).success
        probe.wait_for(lambda: len(received) >= paused_count + per_pass, TIMEOUT, "a pass after restart", node)
        # each pass starts over: the first arm's positions repeat with the bag's period
        first = [decode.joint_positions_by_name(m, ["waist"])[0] for m in received[:2 * per_pass]]
        np.testing.assert_array_equal(first[:per_pass], first[per_pass:])
        assert len(clock) >= 2 * per_pass


def test_bad_bag_and_bad_remap_exit_with_a_message(tmp_path, ros_domain):
    with player({"bag": tmp_path / "missing"}, ros_domain) as node:
        assert node.process.wait(TIMEOUT) == 2
        assert "bag_player:" in node.stderr() and "does not exist" in node.stderr()
        assert "Traceback" not in node.stderr()
    facts = build_aloha_bag(tmp_path / "bag", write_test_profile(tmp_path), BagSpec(seconds=0.1))
    with player({"bag": facts.path, "remap": ["/a=/b"]}, ros_domain) as node:
        assert node.process.wait(TIMEOUT) == 2
        assert "must look like '/from:=/to'" in node.stderr()
    with player({"bag": facts.path, "topics": ["/nope"]}, ros_domain) as node:
        assert node.process.wait(TIMEOUT) == 2
        assert "['/nope'] not in bag" in node.stderr()


@pytest.mark.slow
def test_live_replay_through_policy_node(tmp_path, ros_domain):
    """bag_player -> policy_node (use_sim_time on the bag's /clock) -> commands to a test
    subscriber: the live counterpart of `vla-ros replay`, every piece a real process."""
    from vla_ros.policy.checkpoint import init_checkpoint_main
    from vla_ros.robot.profile import load_profile
    from vla_ros.ros.command_interfaces import CommandLog

    profile_path = write_test_profile(tmp_path, cameras=("cam_high",))
    profile = load_profile(profile_path)
    assert init_checkpoint_main(["--profile", str(profile_path), "--output", str(tmp_path / "checkpoint")]) == 0
    facts = build_aloha_bag(tmp_path / "bag", profile, BagSpec(seconds=20.0, leaders=False))
    policy_params = {"profile": profile_path, "checkpoint": tmp_path / "checkpoint", "use_sim_time": True,
                     "deterministic": True, "follower_setup": False}  # no xs_sdk: the test receives the commands
    player_params = {"bag": facts.path, "start_paused": True, "publish_clock": True, "rate": 1.0}
    with NodeProcess(module_command("vla_ros.ros.policy_node"), policy_params, domain_id=ros_domain) as policy, \
            player(player_params, ros_domain) as bag_player, \
            ros_context(ros_domain) as context, Probe(context) as probe:
        log = CommandLog(probe.node, profile)
        probe.wait_for(lambda: all(probe.node.count_publishers(arm.arm_command_topic) >= 1 for arm in profile.arms),
                       90.0, "policy_node's command publishers", policy)
        assert probe.call(SetBool, "/bag_player/play", SetBool.Request(data=True), TIMEOUT, bag_player).success
        answers = []

        def armed() -> bool:
            response = probe.call(SetBool, "/policy_node/enable", SetBool.Request(data=True), TIMEOUT, policy)
            answers.append(response.message)
            if not response.success:
                probe.spin_for(0.2)  # inputs not fresh yet: the first bag messages are on their way
            return response.success

        probe.wait_for(armed, 30.0, "policy_node to arm on the replayed inputs", policy)
        probe.wait_for(lambda: min(log.counts()) >= 5, TIMEOUT, "5 commands per arm", policy)
        for arm_index in range(len(profile.arms)):
            part = profile.arm_slice(arm_index)
            for _, target in log.arm_commands[arm_index]:
                assert np.all(target >= profile.safe_lower()[part] - 1e-6)  # float32 on the xs_sdk topics
                assert np.all(target <= profile.safe_upper()[part] + 1e-6)
        assert log.rejections == []
        assert bag_player.alive() and policy.alive(), answers


@pytest.mark.parametrize("publish_commands", [False, True])
def test_recorded_motion_commands_are_played_only_when_asked(tmp_path, ros_domain, publish_commands):
    from trajectory_msgs.msg import JointTrajectory

    from vla_ros.data.bags import BagWriter

    bag_path = tmp_path / "commands"
    with BagWriter(bag_path, storage="sqlite3") as writer:
        for k in range(20):
            t_ns = T0_NS + k * 20_000_000
            writer.write("/follower_left/arm_controller/joint_trajectory", t_ns,
                         writer.joint_trajectory(["waist"], [[0.1 * k]], [0.02], t_ns))
            writer.write("/chatter", t_ns, writer.string_msg(f"tick {k}"))
    params = {"bag": str(bag_path), "rate": 0.0, "start_paused": True, "exit_on_end": False,
              "publish_commands": publish_commands}
    command_topic = "/follower_left/arm_controller/joint_trajectory"
    with player(params, ros_domain) as process, ros_context(ros_domain) as context, Probe(context) as probe:
        commands = probe.subscribe(JointTrajectory, command_topic, qos_profile("reliable", 100))
        chatter = probe.subscribe(String, "/chatter", qos_profile("reliable", 100))
        # Played only once both ends know each other: a fixed start delay loses the first messages
        # on a busy machine, where discovery can take longer.
        wait_discovered(probe, ["/chatter", command_topic] if publish_commands else ["/chatter"], process)
        assert probe.call(SetBool, "/bag_player/play", SetBool.Request(data=True), TIMEOUT, process).success
        probe.wait_for_messages("/chatter", 20, TIMEOUT, process)
        probe.spin_for(0.5)
        assert len(commands) == (20 if publish_commands else 0)
        assert len(chatter) == 20
