"""recorder_node: the pure frame sampler (tolerance, missing/late/invalid counts, rates) with
made-up times, then the node as its own process fed by fake follower/leader/camera topics:
episode services, the task topic, low-rate refusal and its override, diagnostics, runtime
parameters, a clean shutdown that finishes pending saves, and bad configuration."""

from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from hypothesis import given, settings
from hypothesis import strategies as st
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from vla_ros.data.lerobot import LeRobotDataset, LeRobotWriter
from vla_ros.robot.profile import load_profile
from vla_ros.ros import convert
from vla_ros.ros.qos import image_qos, state_qos
from vla_ros.ros.recorder_node import FRAME_RATE_KEY, FrameSampler
from vla_ros.ros.scripted_leader import leader_joint_state
from vla_ros.ros.processes import NodeProcess, Probe, module_command, ros_context

STARTUP_TIMEOUT = 60.0
CAMERA_WIDTH, CAMERA_HEIGHT = 32, 24
RECORDER = module_command("vla_ros.ros.recorder_node")


# --------------------------------------------------------------------------------------------
# FrameSampler, no ROS


def identity_sampler(tolerance=0.05, names=("joints", "camera")):
    return FrameSampler({name: (lambda msg: msg) for name in names}, tolerance)


def test_frame_from_the_newest_messages_within_tolerance():
    sampler = identity_sampler()
    sampler.start(10.0)
    sampler.update("joints", 9.99, "j0")
    sampler.update("joints", 10.00, "j1")
    sampler.update("camera", 9.99, "c0")
    assert sampler.sample(10.0) == {"joints": "j1", "camera": "c0"}
    assert sampler.sample(10.03) == {"joints": "j1", "camera": "c0"}  # 0.04 s old: still within
    assert (sampler.ticks, sampler.frames, sampler.dropped) == (2, 2, 0)
    assert sampler.counts["joints"].received == 2 and sampler.counts["camera"].received == 1


def test_missing_and_late_inputs_drop_the_frame_and_are_counted_per_input():
    sampler = identity_sampler()
    sampler.start(0.0)
    sampler.update("joints", 0.0, "j")
    assert sampler.sample(0.0) is None  # camera never arrived
    sampler.update("camera", 0.0, "c")
    assert sampler.sample(0.02) is not None
    assert sampler.sample(0.2) is None  # both 0.2 s old
    sampler.update("joints", 0.5, "j")  # stamped in the future by more than the tolerance
    sampler.update("camera", 0.3, "c")
    assert sampler.sample(0.3) is None
    joints, camera = sampler.counts["joints"], sampler.counts["camera"]
    assert (camera.missing, camera.late, joints.missing, joints.late) == (1, 1, 0, 2)
    assert (sampler.ticks, sampler.frames, sampler.dropped) == (4, 1, 3)


def test_messages_are_decoded_once_and_bad_ones_count_as_invalid():
    calls = []

    def decode_camera(msg):
        calls.append(msg)
        if msg == "corrupt":
            raise ValueError("cannot decode")
        return msg.upper()

    sampler = FrameSampler({"camera": decode_camera}, tolerance=1.0)
    sampler.start(0.0)
    sampler.update("camera", 0.0, "ok")
    assert sampler.sample(0.1) == {"camera": "OK"}
    assert sampler.sample(0.2) == {"camera": "OK"}
    sampler.update("camera", 0.3, "corrupt")
    assert sampler.sample(0.3) is None
    assert sampler.counts["camera"].invalid == 1 and sampler.counts["camera"].last_error == "cannot decode"
    sampler.update("camera", 0.4, "next")
    assert sampler.sample(0.4) == {"camera": "NEXT"}
    assert calls == ["ok", "corrupt", "next"]


def test_start_restarts_counts_but_keeps_the_newest_messages():
    sampler = identity_sampler(tolerance=1.0)
    sampler.update("joints", 0.0, "j")  # before any episode: kept, not counted
    sampler.update("camera", 0.0, "c")
    sampler.start(0.5)
    assert sampler.counts["joints"].received == 0
    assert sampler.sample(0.5) == {"joints": "j", "camera": "c"}
    sampler.stop(1.0)
    sampler.update("camera", 1.1, "c2")  # after the stop: not counted
    assert sampler.counts["camera"].received == 0
    sampler.start(2.0)
    assert (sampler.ticks, sampler.frames) == (0, 0)


def test_rates_and_shortfalls():
    sampler = identity_sampler(tolerance=1.0)
    sampler.start(0.0)
    for i in range(50):  # joints at 50 Hz, camera at 10 Hz over one second
        sampler.update("joints", i * 0.02, "j")
        if i % 5 == 0:
            sampler.update("camera", i * 0.02, "c")
        sampler.sample(i * 0.02)
    sampler.stop(1.0)
    assert sampler.rates(5.0, ["camera"]) == {"camera": 10.0, FRAME_RATE_KEY: 50.0}
    assert sampler.rate_shortfalls(5.0, ["camera"], fps=50, min_fraction=0.9) == {"camera": 10.0}
    assert sampler.rate_shortfalls(5.0, ["camera"], fps=50, min_fraction=0.2) == {}
    assert sampler.rate_shortfalls(5.0, ["joints"], fps=60, min_fraction=0.9) == {
        "joints": 50.0, FRAME_RATE_KEY: 50.0}


def test_slots_put_frames_on_the_grid_with_gaps_where_frames_or_ticks_are_missing():
    sampler = FrameSampler({"joints": lambda msg: msg}, tolerance=0.01, period=0.02)
    sampler.start(0.0)
    slots = []
    for time, fresh in [(0.0, True), (0.0203, True), (0.04, False), (0.0601, True),
                        (0.1199, True), (0.14, True)]:  # a stale input at 0.04; no tick at 0.08, 0.10
        if fresh:
            sampler.update("joints", time, "j")
        if sampler.sample(time) is not None:
            slots.append(sampler.slot)
    assert slots == [0, 1, 3, 6, 7]
    assert (sampler.ticks, sampler.frames, sampler.missed_ticks, sampler.dropped) == (6, 5, 2, 3)
    sampler.refuse()  # the writer refused the last frame
    assert (sampler.frames, sampler.refused, sampler.dropped) == (4, 1, 4)
    sampler.start(1.0)
    assert (sampler.slot, sampler.missed_ticks, sampler.refused) == (-1, 0, 0)
    with pytest.raises(ValueError, match="period"):
        FrameSampler({"joints": lambda msg: msg}, tolerance=0.05, period=0.0)


def test_bad_use_is_an_error():
    with pytest.raises(ValueError, match="tolerance"):
        identity_sampler(tolerance=0.0)
    with pytest.raises(ValueError, match="at least one input"):
        FrameSampler({}, 0.1)
    sampler = identity_sampler()
    with pytest.raises(KeyError, match="unknown input 'gripper'"):
        sampler.update("gripper", 0.0, "g")
    with pytest.raises(RuntimeError, match="no episode"):
        sampler.stop(1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["joints", "camera", "tick"]), st.floats(0.0, 0.2)), max_size=60))
def test_every_dropped_frame_is_blamed_on_an_input(events):
    """Whatever the arrival pattern, frames + dropped = ticks and each dropped frame is counted
    against at least one input, and an accepted frame only holds messages within tolerance."""
    sampler = identity_sampler(tolerance=0.05)
    sampler.start(0.0)
    now = 0.0
    for kind, delay in events:
        now += delay
        if kind == "tick":
            frame = sampler.sample(now)
            if frame is not None:
                assert all(abs(now - stamp) <= 0.05 for stamp in frame.values())
        else:
            sampler.update(kind, now - delay / 2, now - delay / 2)
    blamed = sum(c.missing + c.late + c.invalid for c in sampler.counts.values())
    assert sampler.frames + sampler.dropped == sampler.ticks
    assert sampler.dropped <= blamed <= 2 * sampler.dropped


# --------------------------------------------------------------------------------------------
# The node, driven over DDS


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "small_camera.yaml"
    path.write_text("extends: aloha_sim\nname: aloha_sim_small\ncameras:\n"
                    f"  - {{name: cam_high, topic: /cam_high/camera/color/image_rect_raw, "
                    f"width: {CAMERA_WIDTH}, height: {CAMERA_HEIGHT}}}\n")
    return path


class FakeRobot:
    """Publishes, from the probe's executor at 50 Hz, follower and leader joint states holding
    `follower` and `leader`, and a camera (raw, or JPEG on <topic>/compressed) every
    `camera_every` ticks; `leader_paused` silences the leader (to make it late). Unstamped
    messages carry a zero header stamp, as some drivers send them."""

    def __init__(self, probe: Probe, profile, compressed: bool = False, stamped: bool = True):
        self.probe, self.profile = probe, profile
        self.compressed, self.stamped = compressed, stamped
        self.follower = profile.start_pose.copy()
        self.follower[[0, 6, 13]] = [0.2, 0.4, 0.8]
        self.leader = profile.start_pose.copy()
        self.leader[[7, 6, 13]] = [-0.3, 0.25, 0.9]
        self.camera_every = 1
        self.leader_paused = False
        self.ticks = 0
        node = probe.node
        self.follower_pubs = [node.create_publisher(JointState, a.joint_states_topic, state_qos())
                              for a in profile.arms]
        self.leader_pubs = [node.create_publisher(JointState, a.leader_joint_states_topic, state_qos())
                            for a in profile.arms]
        topic = profile.cameras[0].topic
        self.camera_pub = node.create_publisher(CompressedImage, topic + "/compressed", image_qos()) if compressed \
            else node.create_publisher(Image, topic, image_qos())
        self.image = np.random.default_rng(0).integers(0, 256, (CAMERA_HEIGHT, CAMERA_WIDTH, 3), dtype=np.uint8)
        node.create_timer(profile.dt, self.publish)

    def publish(self):
        stamp = self.probe.node.get_clock().now().to_msg() if self.stamped else convert.seconds_to_time(0.0)
        for index, arm in enumerate(self.profile.arms):
            part = self.profile.arm_slice(index)
            self.follower_pubs[index].publish(convert.arm_joint_state(
                self.profile, arm, self.follower[part], np.zeros(7), stamp, "right_finger"))
            if not self.leader_paused:
                self.leader_pubs[index].publish(
                    leader_joint_state(self.profile, arm, self.leader[part], stamp, "right_finger"))
        if self.ticks % self.camera_every == 0:
            if self.compressed:
                self.camera_pub.publish(convert.array_to_compressed(self.image, "jpeg", stamp, "cam_high"))
            else:
                self.camera_pub.publish(convert.array_to_image(self.image, "rgb8", stamp, "cam_high"))
        self.ticks += 1


@pytest.fixture(scope="module")
def recorder(domain, profile_path, tmp_path_factory):
    """One recorder on a fresh dataset, a probe with a fake robot, and the recorder's diagnostics."""
    dataset = tmp_path_factory.mktemp("recorded") / "dataset"
    params = {"profile": str(profile_path), "dataset": str(dataset), "tolerance": 0.2,
              "min_rate_fraction": 0.3, "diagnostics_period": 0.2}
    profile = load_profile(profile_path)
    with NodeProcess(RECORDER, params, domain_id=domain) as node, ros_context(domain) as context, \
            Probe(context) as probe:
        robot = FakeRobot(probe, profile)
        probe.subscribe(DiagnosticArray, "/diagnostics")
        probe.wait_for_subscribers(robot.camera_pub, 1, STARTUP_TIMEOUT, node)
        yield node, probe, robot, dataset


def call(probe, node, service):
    return probe.call(Trigger, f"/recorder_node/{service}", Trigger.Request(), 30.0, node)


def start_when_live(probe, node):
    """~/start, repeated until the recorder hears every input (it refuses to record silence)."""
    replies = []
    probe.wait_for(lambda: replies.append(call(probe, node, "start")) or replies[-1].success, 30.0,
                   "the recorder to start", node)
    return replies[-1]


def set_parameter(probe, node, name, value):
    request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
    return probe.call(SetParameters, "/recorder_node/set_parameters", request, 30.0, node).results[0]


def diagnostics(probe):
    messages = [m for m in probe.received["/diagnostics"] if m.status[0].name.startswith("recorder_node")]
    return {kv.key: kv.value for kv in messages[-1].status[0].values} if messages else {}


def wait_for_saved(probe, node, count):
    probe.wait_for(lambda: int(diagnostics(probe).get("episodes_saved", -1)) >= count, 30.0,
                   f"{count} saved episodes in the diagnostics", node)


@pytest.mark.ros
@pytest.mark.slow
def test_records_an_episode_with_the_task_from_the_topic(recorder):
    node, probe, robot, dataset = recorder
    refused = call(probe, node, "start")
    assert not refused.success and "no task" in refused.message
    task_pub = probe.node.create_publisher(String, "/recorder_node/task", state_qos())
    probe.wait_for_subscribers(task_pub, 1, STARTUP_TIMEOUT, node)
    task_pub.publish(String(data="  hand the cube over  "))
    probe.wait_for(lambda: diagnostics(probe).get("task") == "hand the cube over", 20.0, "the task to be set", node)

    started = start_when_live(probe, node)
    assert started.success, started.message
    assert not call(probe, node, "start").success  # one episode at a time
    probe.spin_for(1.0)
    stopped = call(probe, node, "stop")
    assert stopped.success, stopped.message
    assert "expected frames recorded" in stopped.message
    wait_for_saved(probe, node, 1)
    assert not call(probe, node, "stop").success and not call(probe, node, "discard").success

    episode = LeRobotDataset(dataset).episode(0)
    assert episode.task == "hand the cube over" and len(episode) > 10
    np.testing.assert_allclose(episode.state, np.broadcast_to(robot.follower, episode.state.shape), atol=1e-5)
    np.testing.assert_allclose(episode.action, np.broadcast_to(robot.leader, episode.action.shape), atol=1e-5)


@pytest.mark.ros
@pytest.mark.slow
def test_low_camera_rate_is_refused_until_discarded_or_overridden(recorder):
    node, probe, robot, dataset = recorder
    saved_before = int(diagnostics(probe)["episodes_saved"])
    set_parameter(probe, node, "task", "slow camera")
    robot.camera_every = 10  # 5 Hz against 50 fps, below the 0.3 threshold
    try:
        for override in (False, True):
            assert start_when_live(probe, node).success
            probe.spin_for(1.2)
            refused = call(probe, node, "stop")
            assert not refused.success
            assert "NOT saved" in refused.message and "camera:cam_high" in refused.message
            probe.wait_for(lambda: diagnostics(probe)["state"] == "awaiting discard or override", 20.0,
                           "the refused episode in the diagnostics", node)
            assert not call(probe, node, "start").success  # the undecided episode blocks a new one
            if override:
                assert set_parameter(probe, node, "allow_low_rate", True).successful
                saved = call(probe, node, "stop")
                assert saved.success, saved.message
            else:
                assert not call(probe, node, "stop").success  # asking again does not change the answer
                discarded = call(probe, node, "discard")
                assert discarded.success, discarded.message
    finally:
        robot.camera_every = 1
        set_parameter(probe, node, "allow_low_rate", False)
    wait_for_saved(probe, node, saved_before + 1)
    assert LeRobotDataset(dataset).num_episodes == saved_before + 1  # the discarded one left nothing


@pytest.mark.ros
@pytest.mark.slow
def test_late_inputs_are_counted_in_diagnostics_and_the_stop_reply(recorder):
    node, probe, robot, _ = recorder
    set_parameter(probe, node, "task", "late leader")
    assert start_when_live(probe, node).success
    probe.spin_for(0.5)
    robot.leader_paused = True
    try:
        probe.wait_for(lambda: int(diagnostics(probe).get("leader:left.late", 0)) > 5, 20.0,
                       "late leader counts in the diagnostics", node)
    finally:
        robot.leader_paused = False
    probe.spin_for(0.3)  # frames again after the silence
    values = diagnostics(probe)
    assert int(values["episode_dropped"]) >= int(values["leader:left.late"])
    assert int(values["follower:left.missing"]) == 0
    saved_before = int(values["episodes_saved"])
    assert set_parameter(probe, node, "allow_low_rate", True).successful
    try:
        stopped = call(probe, node, "stop")
    finally:
        set_parameter(probe, node, "allow_low_rate", False)
    assert stopped.success and "leader:left" in stopped.message and "late" in stopped.message
    wait_for_saved(probe, node, saved_before + 1)
    dataset = LeRobotDataset(recorder[3])
    dataset.validate()
    episode = dataset.episode(dataset.num_episodes - 1)
    steps = np.diff(np.round(episode.timestamps * 50).astype(int))
    assert steps.max() > 5, "the leader's silence must show as a gap in time, not as evenly spaced frames"
    assert int(np.sum(steps - 1)) <= int(diagnostics(probe)["episode_dropped"])


@pytest.mark.ros
@pytest.mark.slow
def test_only_runtime_parameters_can_change(recorder):
    node, probe, _, _ = recorder
    rejected = set_parameter(probe, node, "fps", 30)
    assert not rejected.successful and "read-only while the node runs" in rejected.reason
    invalid = set_parameter(probe, node, "min_rate_fraction", 2.0)
    assert not invalid.successful and "'min_rate_fraction' must be <= 1.0" in invalid.reason
    assert set_parameter(probe, node, "min_rate_fraction", 0.3).successful


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.parametrize("image_format, stamp_source", [("raw", "header"), ("compressed", "receipt")])
def test_shutdown_finishes_a_pending_save(ros_domain, profile_path, tmp_path, image_format, stamp_source):
    """Also: JPEG cameras on <topic>/compressed, and unstamped inputs timed by their receipt."""
    dataset = tmp_path / "dataset"
    params = {"profile": str(profile_path), "dataset": str(dataset), "task": "save on exit", "tolerance": 0.2,
              "allow_low_rate": True, "image_format": image_format, "stamp_source": stamp_source}
    with NodeProcess(RECORDER, params, domain_id=ros_domain) as node, ros_context(ros_domain) as context, \
            Probe(context) as probe:
        robot = FakeRobot(probe, load_profile(profile_path), compressed=image_format == "compressed",
                          stamped=stamp_source == "header")
        probe.wait_for_subscribers(robot.camera_pub, 1, STARTUP_TIMEOUT, node)
        assert start_when_live(probe, node).success
        probe.spin_for(1.0)
        assert call(probe, node, "stop").success
        assert node.stop() == 0, node.report()  # SIGINT right after the stop, save still running
    recorded = LeRobotDataset(dataset)
    assert recorded.num_episodes == 1
    recorded.validate()
    np.testing.assert_allclose(recorded.episode(0).action[0], robot.leader, atol=1e-5)


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.parametrize("params, message", [
    ({}, "'dataset' must name the dataset directory"),
    ({"dataset": "DATASET", "stamp_source": "arrival"}, "'stamp_source' must be one of"),
    ({"dataset": "DATASET", "fps": 25}, "dataset fps 50 != writer fps 25"),
])
def test_bad_configuration_exits_with_clear_error(ros_domain, profile_path, tmp_path, params, message):
    dataset = tmp_path / "dataset"
    LeRobotWriter.for_profile(dataset, load_profile(profile_path), 50).close()
    params = {"profile": str(profile_path), **{k: str(dataset) if v == "DATASET" else v for k, v in params.items()}}
    with NodeProcess(RECORDER, params, domain_id=ros_domain) as node:
        node.process.wait(60)
        assert node.process.returncode == 2, node.report()
        assert message in node.stderr()


def test_params_file_documents_every_parameter():
    from vla_ros.ros.recorder_node import PARAMETERS

    text = (Path(__file__).resolve().parents[2] / "config" / "recorder_node.yaml").read_text()
    assert "recorder_node:" in text
    for spec in PARAMETERS:
        assert f"\n    {spec.name}: " in text, f"config/recorder_node.yaml lacks {spec.name}"


def test_silent_inputs_are_named_and_slow_ones_are_not():
    sampler = identity_sampler(tolerance=0.1)
    assert sampler.silent_inputs(5.0) == ["joints", "camera"]
    sampler.update("joints", 4.9, "j")
    sampler.update("camera", 4.5, "c")  # slow (5 Hz) but alive
    assert sampler.silent_inputs(5.0) == []
    assert sampler.silent_inputs(5.85) == ["camera"]
