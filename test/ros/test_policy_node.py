"""policy_node as its own process over real DDS: arming, rate, and fault injection.

The test feeds camera frames and joint states itself (so it can stop, reorder or corrupt them)
and watches the trajectories and /diagnostics the node publishes. A closed-loop test with sim_node
lives in test_closed_loop.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool, Trigger

from vla_ros.control.controller import ControllerConfig
from vla_ros.policy.checkpoint import build_random_policy, load_checkpoint, save_checkpoint
from vla_ros.robot.profile import config_dir, load_profile
from vla_ros.ros import convert
from vla_ros.ros.qos import estop_qos, image_qos, state_qos
from vla_ros.ros.command_interfaces import CommandLog, InterbotixDriverState
from vla_ros.ros.follower_setup import InterbotixDriverServices
from vla_ros.ros.processes import NodeProcess, Probe, module_command, ros_context

pytestmark = [pytest.mark.ros, pytest.mark.slow]

HEIGHT, WIDTH = 48, 64
DT = 0.02


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A small-camera profile and tiny checkpoints: normal, NaN output, 1e6 output, wrong dims."""
    root = tmp_path_factory.mktemp("policy_node")
    base = load_profile("aloha_sim")
    profile_path = root / "profile.yaml"
    profile_path.write_text(yaml.safe_dump({
        "extends": base.source, "name": "aloha_sim_small",
        "cameras": [{"name": "cam_high", "topic": base.cameras[0].topic, "width": WIDTH, "height": HEIGHT}],
    }))
    profile = load_profile(profile_path)
    good = save_checkpoint(build_random_policy("tiny", profile, seed=0), root / "good")
    recommends = load_checkpoint(good)  # the same weights, decoded with correlated noise by default
    recommends.config.recommended_noise_correlation = 8.0
    recommends.config.recommended_noise_scale = 0.5
    save_checkpoint(recommends, root / "recommends_correlation")
    takes_prefix = load_checkpoint(good)  # the same weights, given the plan's first 4 entries
    takes_prefix.config.action_prefix_steps = 4
    save_checkpoint(takes_prefix, root / "takes_prefix")
    bad = {}
    for name, value in (("nan", float("nan")), ("huge", 1e6)):
        policy = load_checkpoint(good)
        with torch.no_grad():
            policy.head.velocity_out.bias.fill_(value)
        bad[name] = save_checkpoint(policy, root / name)
    # A robot with 5 joints per arm: a checkpoint for 14 dims must not arm it.
    five = {"extends": str(profile_path), "name": "five_joint_arm",
            "arm_joints": ["waist", "shoulder", "elbow", "wrist_angle", "wrist_rotate"]}
    raw = yaml.safe_load((config_dir() / "aloha_stationary.yaml").read_text())
    five["limits"] = {k: v[:3] + v[4:] for k, v in raw["limits"].items()}  # without forearm_roll
    five["start_pose"] = raw["start_pose"][:3] + raw["start_pose"][4:]
    five_path = root / "five.yaml"
    five_path.write_text(yaml.safe_dump(five))
    return {"profile_path": str(profile_path), "profile": profile, "good": str(good),
            "nan": str(bad["nan"]), "huge": str(bad["huge"]), "five_path": str(five_path)}


class Feeder:
    """Publishes follower joint states (both arms) and cam_high at 50 Hz from the test process;
    each input can be stopped, reordered or corrupted on the fly. The 'robot' tracks the latest
    command perfectly, so the node sees the pose it asked for."""

    def __init__(self, probe: Probe, profile, pose: np.ndarray, commands: CommandLog):
        self.probe, self.profile, self.pose, self.commands = probe, profile, pose, commands
        self.send_joints = self.send_camera = True
        self.follow = True  # False: the arm is blocked (or a dry run): the measured pose stays
        self.reorder_names = False
        self.bad_image = None  # None, "encoding" or "size"
        self.last_camera_stamp = None
        node = probe.node
        self.joint_pubs = [node.create_publisher(JointState, arm.joint_states_topic, state_qos())
                           for arm in profile.arms]
        self.image_pub = node.create_publisher(Image, profile.cameras[0].topic, image_qos())
        self.image = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        node.create_timer(DT, self.publish)

    def now(self):
        return self.probe.node.get_clock().now()

    def follow_commands(self) -> None:
        if not self.follow:
            return
        commanded = np.isfinite(self.commands.pose)
        self.pose[commanded] = self.commands.pose[commanded]

    def publish(self) -> None:
        stamp = self.now().to_msg()
        self.follow_commands()
        if self.send_joints:
            for index, (arm, pub) in enumerate(zip(self.profile.arms, self.joint_pubs)):
                part = self.pose[self.profile.arm_slice(index)]
                msg = convert.arm_joint_state(self.profile, arm, part, np.zeros_like(part), stamp, "right_finger")
                if self.reorder_names:
                    order = [3, 8, 0, 6, 1, 7, 5, 2, 4]
                    msg.name = [msg.name[i] for i in order] + ["extra_joint"]
                    msg.position = [msg.position[i] for i in order] + [123.0]
                    msg.velocity = [msg.velocity[i] for i in order] + [0.0]
                pub.publish(msg)
        if self.send_camera:
            if self.bad_image == "size":
                msg = convert.array_to_image(self.image[:, : WIDTH // 2].copy(), "rgb8", stamp, bridge=None)
            else:
                msg = convert.array_to_image(self.image, "rgb8", stamp, bridge=None)
                if self.bad_image == "encoding":
                    msg.encoding = "32FC1"
            self.image_pub.publish(msg)
            self.last_camera_stamp = convert.time_to_seconds(stamp)


class Session:
    """policy_node process + probe + feeder, and the observations the tests assert on."""

    def __init__(self, probe: Probe, node: NodeProcess, profile, serve_driver: bool = True, topic_prefix: str = ""):
        self.probe, self.node, self.profile = probe, node, profile
        self.log = CommandLog(probe.node, profile, topic_prefix)
        # The probe answers the xs_sdk setup services that policy_node calls before it arms.
        self.driver = InterbotixDriverState(profile)
        if serve_driver and profile.command_interface == "interbotix":
            InterbotixDriverServices(probe.node, profile, self.driver)
        self.commands = self.log.arm_commands
        self.feeder = Feeder(probe, profile, profile.start_pose.copy(), self.log)
        self.diagnostics = probe.subscribe(DiagnosticArray, "/diagnostics")
        self.estop_pub = probe.node.create_publisher(Bool, "/policy_node/estop", state_qos())

    def values(self, msg) -> dict:
        for status in msg.status:
            if status.name.startswith("policy_node"):
                return {kv.key: kv.value for kv in status.values}
        return {}

    def latest(self) -> dict:
        for msg in reversed(self.diagnostics):
            values = self.values(msg)
            if values:
                return values
        return {}

    def wait_ready(self) -> None:
        self.probe.wait_for(lambda: bool(self.latest()), 120.0, "policy_node diagnostics", self.node)

    def enable(self, on: bool = True):
        return self.probe.call(SetBool, "/policy_node/enable", SetBool.Request(data=on), 30.0, self.node)

    def enable_when_inputs_fresh(self):
        deadline = time.monotonic() + 30.0
        while True:
            response = self.enable()
            if response.success or time.monotonic() > deadline:
                return response
            self.probe.spin_for(0.2)

    def targets(self, arm_index: int = 0) -> list[tuple[float, np.ndarray]]:
        """(receipt time, 7 normalised targets) of every command received for one arm."""
        return list(self.commands[arm_index])

    def states_since(self, index: int) -> list[tuple[float, str]]:
        out = []
        for msg in self.diagnostics[index:]:
            values = self.values(msg)
            if values:
                out.append((convert.time_to_seconds(msg.header.stamp), values.get("state", "")))
        return out


@pytest.fixture
def session_factory(ros_domain, assets):
    opened = []

    def start(checkpoint: str | None = None, profile_path: str | None = None, serve_driver: bool = True,
              topic_prefix: str = "", **params) -> Session:
        node_params = {"profile": profile_path or assets["profile_path"], "checkpoint": checkpoint or assets["good"],
                       "instruction": "transfer the cube", "soft_start_time": 0.2, "diagnostics_period": 0.5,
                       "max_camera_age": 0.08, "max_joint_state_age": 0.08, **params}
        node = NodeProcess(module_command("vla_ros.ros.policy_node"), params=node_params, domain_id=ros_domain)
        context_manager = ros_context(ros_domain)
        context = context_manager.__enter__()
        probe = Probe(context)
        opened.append((node, probe, context_manager))
        session = Session(probe, node, load_profile(profile_path) if profile_path else assets["profile"],
                          serve_driver, topic_prefix)
        session.wait_ready()
        return session

    yield start
    for node, probe, context_manager in opened:
        probe.close()
        context_manager.__exit__(None, None, None)
        node.stop()


def _within_limits(profile, arm_index: int, target: np.ndarray) -> bool:
    part = profile.arm_slice(arm_index)
    # 1e-6: xs_sdk's goals travel as float32
    return bool(np.all(np.isfinite(target)) and np.all(target >= profile.safe_lower()[part] - 1e-6)
                and np.all(target <= profile.safe_upper()[part] + 1e-6))


def test_disarmed_publishes_nothing_then_streams_at_control_rate(session_factory):
    s = session_factory()
    s.probe.spin_for(2.0)
    assert all(len(c) == 0 for c in s.commands), "commands published before enable"
    assert s.latest()["state"] == "disarmed"
    response = s.enable_when_inputs_fresh()
    assert response.success, response.message
    s.probe.spin_for(1.0)
    start = [len(c) for c in s.commands]
    window = 3.0
    s.probe.spin_for(window)
    for arm_index, arm in enumerate(s.profile.arms):
        received = s.commands[arm_index][start[arm_index]:]
        rate = len(received) / window
        assert 45.0 <= rate <= 55.0, (f"{arm.name}: {rate:.1f} trajectories/s, expected 50 +- 10%\n"
                                      f"{s.states_since(0)}\n{s.latest()}\n{s.node.report()}")
    # The xs_sdk contract: group "arm" with six positions (rad), "gripper" with the joint angle (rad).
    for arm in s.profile.arms:
        groups, singles = s.log.messages[arm.arm_command_topic], s.log.messages[arm.gripper_command_topic]
        assert abs(len(groups) - len(singles)) <= 2
        assert {(g.name, len(g.cmd)) for g in groups} == {("arm", 6)}
        assert {m.name for m in singles} == {"gripper"}
        joint = s.profile.follower_joint
        assert all(min(joint.open, joint.close) - 1e-6 <= m.cmd <= max(joint.open, joint.close) + 1e-6 for m in singles)
    assert s.log.rejections == []
    assert all(_within_limits(s.profile, 0, t) for _, t in s.targets(0))
    assert s.enable(False).success
    s.probe.spin_for(0.3)
    counts = [len(c) for c in s.commands]
    s.probe.spin_for(0.5)
    assert [len(c) for c in s.commands] == counts, "commands published after disarm"


def _first_state_after(s: Session, since: int, state: str, after: float) -> float:
    for stamp, value in s.states_since(since):
        if value == state and stamp >= after:
            return stamp
    raise AssertionError(f"no '{state}' after t={after:.3f}: {s.states_since(since)}\n{s.node.report()}")


def test_camera_stop_holds_within_100ms_and_recovers(session_factory):
    # With the session's 0.08 s the hold fell due on the very tick that ends the 100 ms (20 ms
    # ticks), and 1 ms of timer jitter on a loaded machine failed the test; 0.06 s leaves one tick.
    s = session_factory(max_camera_age=0.06)
    assert s.enable_when_inputs_fresh().success
    s.probe.spin_for(1.0)
    marker = len(s.diagnostics)
    s.feeder.send_camera = False
    s.probe.spin_for(0.05)
    last_frame = s.feeder.last_camera_stamp
    s.probe.wait_for(lambda: any(v == "holding" for _, v in s.states_since(marker)), 5.0, "holding", s.node)
    hold_at = _first_state_after(s, marker, "holding", 0.0)
    assert hold_at - last_frame <= 0.1, f"hold came {1e3 * (hold_at - last_frame):.0f} ms after the last frame"
    # A hold brakes within the acceleration limit, then every command is the same target.
    braking = float(np.max(s.profile.velocity_limit / s.profile.acceleration_limit))
    s.probe.spin_for(braking + 0.5)
    held = [t for stamp, t in s.targets(0) if stamp > hold_at + braking + DT]
    assert held and all(np.array_equal(held[0], t) for t in held)
    marker = len(s.diagnostics)
    s.feeder.send_camera = True
    s.probe.wait_for(lambda: any(v in ("running", "ramping") for _, v in s.states_since(marker)), 5.0,
                     "recovery after the camera resumed", s.node)
    assert "interventions:hold_stale" in s.latest() or int(s.latest().get("ticks", 0)) > 0


def test_joint_states_stop_holds(session_factory):
    s = session_factory()
    assert s.enable_when_inputs_fresh().success
    s.probe.spin_for(0.5)
    marker = len(s.diagnostics)
    s.feeder.send_joints = False
    s.probe.wait_for(lambda: any(v in ("holding", "fault") for _, v in s.states_since(marker)), 5.0,
                     "hold after joint states stopped", s.node)
    hold_at = next(stamp for stamp, v in s.states_since(marker) if v in ("holding", "fault"))
    braking = float(np.max(s.profile.velocity_limit / s.profile.acceleration_limit))
    s.probe.spin_for(braking + 0.5)
    after = [t for stamp, t in s.targets(0) if stamp > hold_at + braking + DT]
    assert all(np.array_equal(after[0], t) for t in after), "motion while joint states were missing"


@pytest.mark.parametrize("checkpoint", ["nan", "huge"])
def test_checkpoint_with_unsafe_outputs_publishes_no_unsafe_command(session_factory, assets, checkpoint):
    s = session_factory(checkpoint=assets[checkpoint])
    assert s.enable_when_inputs_fresh().success
    s.probe.spin_for(2.0)
    assert s.node.alive(), s.node.report()
    targets = s.targets(0) + s.targets(1)
    assert targets, "no command at all (holds are expected)"
    for arm_index in (0, 1):
        previous = None
        for _, target in s.targets(arm_index):
            assert _within_limits(s.profile, arm_index, target)
            if previous is not None:
                step = np.abs(target - previous)
                assert np.all(step <= s.profile.velocity_limit[s.profile.arm_slice(arm_index)] * DT * 1.001 + 1e-6)
            previous = target
    values = s.latest()
    rejected = {k: v for k, v in values.items() if k.startswith(("chunks_rejected:", "interventions:"))}
    # NaN chunks are refused outright; 1e6 is a number the safety filter clamps to the limits.
    expected = "chunks_rejected:non_finite" if checkpoint == "nan" else "interventions:clamp_position"
    assert int(values.get(expected, 0)) > 0, f"unsafe outputs not reported as {expected}: {rejected}"


def test_estop_holds_from_the_next_tick_and_needs_reset(session_factory):
    s = session_factory()
    assert s.enable_when_inputs_fresh().success
    s.probe.spin_for(0.5)
    s.estop_pub.publish(Bool(data=True))
    sent = s.probe.node.get_clock().now().nanoseconds * 1e-9
    s.probe.spin_for(1.0)
    after = [t for stamp, t in s.targets(0) if stamp > sent + 2 * DT]
    assert after and all(np.array_equal(after[0], t) for t in after), "motion after e-stop"
    assert s.latest()["state"] == "estopped"
    assert not s.enable().success, "armed while the e-stop is latched"
    reset = s.probe.call(Trigger, "/policy_node/reset_estop", Trigger.Request(), 10.0, s.node)
    assert reset.success
    assert s.enable_when_inputs_fresh().success


def test_reordered_and_extra_joint_names_are_decoded_by_name(session_factory):
    s = session_factory()
    s.feeder.reorder_names = True
    assert s.enable_when_inputs_fresh().success, s.latest()
    s.probe.wait_for(lambda: len(s.commands[0]) > 0, 10.0, "first command", s.node)
    _, first = s.targets(0)[0]
    # Soft start begins at the MEASURED pose: a wrong decoding would start elsewhere.
    start = s.profile.start_pose[s.profile.arm_slice(0)]
    assert np.all(np.abs(first - start) <= s.profile.velocity_limit[:7] * DT + 1e-6), (first, start)
    assert not any(k.startswith("input_errors:bad_joint_state") for k in s.latest())


@pytest.mark.parametrize("fault", ["encoding", "size"])
def test_bad_images_are_reported_not_fatal(session_factory, fault):
    s = session_factory()
    s.feeder.bad_image = fault
    s.probe.wait_for(lambda: any(k.startswith("input_errors:bad_image") for k in s.latest()), 10.0,
                     "bad image reported", s.node)
    values = s.latest()
    assert "cam_high" in values["last_input_error"]
    response = s.enable()
    assert not response.success and "camera" in response.message
    assert s.node.alive()
    s.feeder.bad_image = None
    assert s.enable_when_inputs_fresh().success


def test_mismatched_checkpoint_refuses_to_arm(session_factory, assets):
    s = session_factory(profile_path=assets["five_path"])
    values = s.latest()
    assert values["policy_loaded"] == "False"
    assert "12" in values["load_error"] and "14" in values["load_error"], values["load_error"]
    response = s.enable()
    assert not response.success and "not loaded" in response.message
    assert all(len(c) == 0 for c in s.commands)
    assert s.node.alive()


def test_decodes_with_the_checkpoints_noise_unless_the_parameter_overrides_it(session_factory, assets):
    """noise_correlation and noise_scale -1 (the defaults) take the checkpoint's recommendations;
    the diagnostics say what the node decodes with (steps, noise, precision), and how its controller
    blends chunks."""
    checkpoint = str(Path(assets["good"]).parent / "recommends_correlation")

    def decoding(**params) -> dict:
        session = session_factory(**params)
        values = session.latest()
        assert session.node.stop() == 0  # one node on the domain at a time: its diagnostics alone
        return {key: values.get(key) for key in ("noise_correlation", "noise_scale", "decode_steps", "chunk_blend",
                                                 "crossfade_ticks", "dtype")}

    defaults = {"chunk_blend": "ensemble", "crossfade_ticks": str(ControllerConfig.crossfade_ticks), "dtype": "float32"}
    assert decoding(checkpoint=checkpoint) == {"noise_correlation": "8.0", "noise_scale": "0.5", "decode_steps": "1",
                                               **defaults}
    assert decoding(checkpoint=checkpoint, noise_correlation=0.0, noise_scale=1.0, chunk_blend="crossfade",
                    crossfade_ticks=3, dtype="bfloat16") == {
        "noise_correlation": "0.0", "noise_scale": "1.0", "decode_steps": "1", "chunk_blend": "crossfade",
        "crossfade_ticks": "3", "dtype": "bfloat16"}
    # a checkpoint that recommends nothing: white noise at the training temperature
    assert decoding() == {"noise_correlation": "0.0", "noise_scale": "1.0", "decode_steps": "1", **defaults}


def test_a_checkpoint_trained_with_an_action_prefix_is_given_the_plan(session_factory, assets):
    """While armed, every chunk is predicted from the executor's targets from its observation's
    capture on, as many as the checkpoint learnt (4) unless the parameter asks for fewer; a
    checkpoint without a prefix is given none."""
    checkpoint = str(Path(assets["good"]).parent / "takes_prefix")
    s = session_factory(checkpoint=checkpoint)
    assert s.enable_when_inputs_fresh().success
    s.probe.wait_for(lambda: int(s.latest().get("inference_count", "0")) >= 10, 60.0, "10 inferences", s.node)
    values = s.latest()
    assert values["action_prefix_steps"] == "4" and float(values["action_prefix_given_p50"]) == 4.0, values
    assert values["state"] in ("running", "ramping") and len(s.targets()) > 20
    assert s.node.stop() == 0
    for checkpoint, asked, used in ((checkpoint, 2, "2"), (checkpoint, 9, "4"), (assets["good"], -1, "0")):
        session = session_factory(checkpoint=checkpoint, action_prefix_steps=asked)
        assert session.latest()["action_prefix_steps"] == used
        assert session.node.stop() == 0


def test_inference_slowdown_holds_each_chunk_back_by_its_factor(session_factory):
    """The testing knob behind sim-eval's slowed-inference cell: the latency the chunk executor
    sees is the model's time times the factor (the wait may overshoot, never fall short)."""
    s = session_factory(inference_slowdown=3.0)
    assert s.enable_when_inputs_fresh().success
    s.probe.wait_for(lambda: int(s.latest().get("inference_count", "0")) >= 10, 60.0, "10 inferences", s.node)
    values = s.latest()
    assert values["inference_slowdown"] == "3.0"
    compute, seen = float(values["inference_compute_ms_p50"]), float(values["inference_ms_p50"])
    assert 0.0 < compute and seen >= 2.9 * compute, values
    assert s.node.stop() == 0
    assert "a test setting, not for a robot" in s.node.stderr()  # never silent on a robot


@pytest.mark.parametrize("params, message", [
    ({"profile": "no_such_robot"}, "file not found"),
    ({"chunk_blend": "average"}, "'chunk_blend' must be one of"),
    ({"crossfade_ticks": -1}, "'crossfade_ticks' must be >= 0"),
    ({"dtype": "float16"}, "'dtype' must be one of"),
    ({"control_rate_hz": -5.0}, "'control_rate_hz' must be >= 0"),
    ({"noise_scale": -2.0}, "'noise_scale' must be >= -1"),
    ({"noise_correlation": -2.0}, "'noise_correlation' must be >= -1"),
    ({"inference_slowdown": 0.5}, "'inference_slowdown' must be >= 1"),
])
def test_bad_configuration_exits_with_a_clear_message(ros_domain, params, message):
    node = NodeProcess(module_command("vla_ros.ros.policy_node"), params=params, domain_id=ros_domain)
    assert node.process.wait(60) == 2, node.report()
    stderr = node.stderr()
    assert message in stderr and "Traceback" not in stderr, stderr


def test_follower_setup_runs_through_the_driver_services_before_arming(session_factory):
    """As the ALOHA scripts do: gripper rebooted, arm in position mode, gripper in
    current_based_position (radian goals), torque on; only then does the node arm."""
    s = session_factory()
    assert s.enable_when_inputs_fresh().success
    for arm_index in range(len(s.profile.arms)):
        assert s.driver.modes[arm_index] == ["position"] * 6 + ["current_based_position"]
        assert s.driver.reboots[arm_index] == 1 and all(s.driver.torque[arm_index])
    s.probe.wait_for(lambda: s.latest().get("follower_setup") == "done", 5.0, "diagnostics: setup done", s.node)


def test_missing_driver_services_refuse_arming_with_a_clear_reason(session_factory):
    s = session_factory(serve_driver=False, follower_setup_timeout=0.5)
    s.probe.spin_for(1.5)
    response = s.enable()
    assert not response.success
    assert "/follower_left/reboot_motors" in response.message and "xs_sdk" in response.message, response.message
    assert all(len(c) == 0 for c in s.commands)


def test_dry_run_publishes_the_same_messages_under_its_own_namespace(session_factory):
    s = session_factory(dry_run=True, topic_prefix="/policy_node/dry_run", serve_driver=False)
    assert s.enable_when_inputs_fresh().success
    s.probe.wait_for(lambda: min(s.log.counts()) > 5, 10.0, "dry-run commands", s.node)
    topic = "/policy_node/dry_run" + s.profile.arms[0].arm_command_topic
    assert {(m.name, len(m.cmd)) for m in s.log.messages[topic]} == {("arm", 6)}
    assert s.log.rejections == []


def test_ros2_control_commands_match_the_controllers(session_factory, assets, tmp_path):
    """Arm controller: its six joints only; gripper controller: the finger joint in metres; header
    stamp zero and one point one tick ahead, so a late message is never dropped."""
    path = tmp_path / "control.yaml"
    control = load_profile("aloha_sim_ros2_control")
    path.write_text(yaml.safe_dump({"extends": str(Path(control.source)), "name": "control_small",
                                    "cameras": [{"name": "cam_high", "topic": control.cameras[0].topic,
                                                 "width": WIDTH, "height": HEIGHT}]}))
    s = session_factory(profile_path=str(path))
    assert s.enable_when_inputs_fresh().success
    s.probe.wait_for(lambda: min(s.log.counts()) > 5, 10.0, "commands", s.node)
    finger = s.profile.follower_finger
    for arm in s.profile.arms:
        for topic, names in ((arm.arm_command_topic, list(s.profile.arm_joints)),
                             (arm.gripper_command_topic, [arm.finger_joint])):
            messages = s.log.messages[topic]
            assert messages
            for msg in messages:
                assert list(msg.joint_names) == names
                assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (0, 0)
                assert len(msg.points) == 1 and not msg.points[0].velocities
                assert convert.duration_to_seconds(msg.points[0].time_from_start) == pytest.approx(DT)
        for msg in s.log.messages[arm.gripper_command_topic]:
            assert min(finger.open, finger.close) - 1e-6 <= msg.points[0].positions[0] <= max(finger.open, finger.close) + 1e-6
    assert s.log.rejections == []


def set_parameters(s: Session, **values):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    kinds = {bool: (ParameterType.PARAMETER_BOOL, "bool_value"), float: (ParameterType.PARAMETER_DOUBLE, "double_value"),
             str: (ParameterType.PARAMETER_STRING, "string_value"), int: (ParameterType.PARAMETER_INTEGER, "integer_value")}
    request = SetParameters.Request()
    for name, value in values.items():
        kind, field = kinds[type(value)]
        request.parameters.append(Parameter(name=name, value=ParameterValue(type=kind, **{field: value})))
    response = s.probe.call(SetParameters, "/policy_node/set_parameters", request, 20.0, s.node)
    return [(r.successful, r.reason) for r in response.results]


def test_parameters_are_live_or_refused_with_a_reason(session_factory):
    s = session_factory()
    assert set_parameters(s, velocity_scale=0.1) == [(True, "")]
    s.probe.wait_for(lambda: s.latest().get("velocity_scale") == "0.1", 5.0, "velocity_scale applied", s.node)
    assert set_parameters(s, instruction="pick up the cube") == [(True, "")]
    s.probe.wait_for(lambda: s.latest().get("instruction") == "pick up the cube", 5.0, "instruction applied", s.node)
    ok, reason = set_parameters(s, hold_fault_timeout="banana")[0]
    assert not ok and "read-only" in reason
    ok, reason = set_parameters(s, velocity_scale="banana")[0]
    assert not ok and "'velocity_scale' must be a float" in reason
    ok, reason = set_parameters(s, velocity_scale=3.0)[0]
    assert not ok and "<= 1.0" in reason
    ok, reason = set_parameters(s, instruction="x" * 5000)[0]
    assert not ok and "max_instruction_length" in reason
    assert s.enable_when_inputs_fresh().success
    ok, reason = set_parameters(s, dry_run=True)[0]
    assert not ok and "only while disarmed" in reason
    assert s.enable(False).success
    assert set_parameters(s, dry_run=True) == [(True, "")]
    assert s.latest() and s.node.alive()
    # With velocity_scale 0.1 every step is within a tenth of the velocity limit.
    assert set_parameters(s, dry_run=False) == [(True, "")]
    armed_at = s.probe.node.get_clock().now().nanoseconds * 1e-9
    assert s.enable_when_inputs_fresh().success
    s.probe.spin_for(1.0)
    targets = [t for received, t in s.targets(0) if received > armed_at]
    steps = np.abs(np.diff(np.array(targets), axis=0))
    cap = s.profile.velocity_limit[:7] * DT * 0.1 + 1e-6
    assert len(targets) > 10 and (steps <= cap).all(), steps[np.nonzero((steps > cap).any(axis=1))]


def test_a_huge_instruction_is_refused_and_the_stream_goes_on(session_factory):
    s = session_factory()
    assert s.enable_when_inputs_fresh().success
    s.probe.spin_for(0.5)
    publisher = s.probe.node.create_publisher(String, "/policy_node/instruction", state_qos())
    s.probe.wait_for_subscribers(publisher, 1, 10.0, s.node)
    before = len(s.commands[0])
    publisher.publish(String(data="x" * 1_000_000))
    s.probe.spin_for(1.0)
    assert len(s.commands[0]) - before > 25  # still streaming
    s.probe.wait_for(lambda: "input_errors:instruction_too_long" in s.latest(), 5.0, "the refusal counted", s.node)
    assert s.latest()["instruction"] == "transfer the cube"


@pytest.mark.parametrize("stop", ["estop", "fault"])
def test_stops_end_at_the_measured_pose(session_factory, stop):
    """The arm is blocked: its measured pose stops following the commands. After an e-stop or a
    fault the arm commands settle onto the measured pose (no servo left pushing), then hold."""
    s = session_factory(hold_fault_timeout=0.3)
    assert s.enable_when_inputs_fresh().success
    s.probe.spin_for(1.0)
    s.feeder.follow = False
    s.probe.spin_for(0.3)
    blocked = s.feeder.pose.copy()
    if stop == "estop":
        estop = s.probe.node.create_publisher(Bool, "/vla_ros/estop", estop_qos())
        estop.publish(Bool(data=True))
    else:
        s.feeder.send_camera = False  # holding until hold_fault_timeout: a fault
    s.probe.wait_for(lambda: s.latest().get("state") == ("estopped" if stop == "estop" else "fault"), 10.0,
                     stop, s.node)
    s.probe.spin_for(1.5)
    last = [t for _, t in s.targets(0)][-10:]
    arm = slice(0, 6)
    for target in last:
        np.testing.assert_allclose(target[arm], blocked[arm], atol=0.0021)
        np.testing.assert_array_equal(target, last[-1])


def test_a_shared_estop_pressed_before_start_is_seen_and_must_be_released(session_factory, ros_domain):
    from vla_ros.ros.processes import ros_context as context_on

    with context_on(ros_domain) as context:
        from rclpy.node import Node

        panel = Node("estop_panel", context=context)
        pressed = panel.create_publisher(Bool, "/vla_ros/estop", estop_qos())
        pressed.publish(Bool(data=True))
        s = session_factory()
        s.probe.wait_for(lambda: s.latest().get("state") == "estopped", 20.0, "the latched e-stop", s.node)
        s.probe.wait_for(lambda: s.latest().get("follower_setup") == "done", 20.0, "follower setup", s.node)
        response = s.enable()
        assert not response.success and "e-stop" in response.message, response.message
        reset = s.probe.call(Trigger, "/policy_node/reset_estop", Trigger.Request(), 10.0, s.node)
        assert not reset.success and "still pressed" in reset.message
        pressed.publish(Bool(data=False))
        s.probe.spin_for(0.5)
        reset = s.probe.call(Trigger, "/policy_node/reset_estop", Trigger.Request(), 10.0, s.node)
        assert reset.success, reset.message
        assert s.enable_when_inputs_fresh().success
        panel.destroy_node()


@pytest.mark.slow
def test_a_sixty_second_dry_run_never_faults(session_factory):
    """In a dry run the arms do not follow the commands: no tracking fault, everything else as live."""
    s = session_factory(dry_run=True, topic_prefix="/policy_node/dry_run", serve_driver=False)
    s.feeder.follow = False  # live joint states of an arm that stays where it is
    assert s.enable_when_inputs_fresh().success
    marker = len(s.diagnostics)
    s.probe.spin_for(60.0)
    states = {state for _, state in s.states_since(marker)}
    assert "fault" not in states and states & {"running", "ramping"}, states
    assert min(s.log.counts()) > 60 * 40
