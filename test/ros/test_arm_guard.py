"""arm_guard as its own process over real DDS, the last hop before a driver.

The test process plays the driver: it records what reaches the driver topics (CommandLog),
serves xs_sdk's setup and torque services, and publishes follower joint states at 50 Hz that
follow the commanded pose with a small sag on one joint, so that a hold of the measured pose can
be told apart from a repeat of the last command. Upstream is either a real policy_node (tiny
random checkpoint, command_namespace /arm_guard/in) or a test publisher on the guard's input.
"""

from __future__ import annotations

import os
import re
import signal

import numpy as np
import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rosgraph_msgs.msg import Clock
from rcl_interfaces.srv import SetParameters
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger
from test_policy_node import DT, Feeder, assets  # noqa: F401 (assets is a fixture)

from vla_ros.robot.profile import load_profile
from vla_ros.ros.command_interfaces import CommandLog, InterbotixDriverState, make_sender
from vla_ros.ros.follower_setup import InterbotixDriverServices
from vla_ros.ros import convert
from vla_ros.ros.processes import NodeProcess, Probe, module_command, ros_context
from vla_ros.ros.qos import ESTOP_TOPIC, estop_qos

pytestmark = [pytest.mark.ros, pytest.mark.slow]

GUARD_INPUT = "/arm_guard/in"
TIMEOUT = 0.1  # the guard's default command_timeout
SAG_JOINT, SAG = 1, -0.01  # the shoulder reads 0.01 rad below its goal, as under gravity


class SaggingArm(Feeder):
    """The simulated arm reaches every commanded goal, but the shoulder reads SAG below it."""

    def __init__(self, probe, profile, pose, commands):
        self.goal = pose.copy()
        self.sag = np.zeros_like(pose)
        for arm_index in range(len(profile.arms)):
            self.sag[profile.arm_slice(arm_index).start + SAG_JOINT] = SAG
        super().__init__(probe, profile, pose + self.sag, commands)

    def follow_commands(self) -> None:
        commanded = np.isfinite(self.commands.pose)
        self.goal[commanded] = self.commands.pose[commanded]
        self.pose = self.goal + self.sag


class Rig:
    """The driver stand-in, the processes under test and their diagnostics."""

    def __init__(self, probe: Probe, profile, profile_path: str, domain: int):
        self.probe, self.profile, self.profile_path, self.domain = probe, profile, profile_path, domain
        self.log = CommandLog(probe.node, profile)  # the driver's topics
        self.upstream = CommandLog(probe.node, profile, GUARD_INPUT)  # what reaches the guard
        self.driver = InterbotixDriverState(profile)
        InterbotixDriverServices(probe.node, profile, self.driver)
        self.arm = SaggingArm(probe, profile, profile.start_pose.copy(), self.log)
        self.diagnostics = probe.subscribe(DiagnosticArray, "/diagnostics")
        self.processes: list[NodeProcess] = []
        self.guard = self.policy = None

    def start_guard(self, **params) -> NodeProcess:
        self.guard = NodeProcess(module_command("vla_ros.ros.arm_guard"), domain_id=self.domain,
                                 params={"profile": self.profile_path, "diagnostics_period": 0.2, **params})
        self.processes.append(self.guard)
        self.probe.wait_for(lambda: bool(self.values("arm_guard")), 60.0, "arm_guard diagnostics", self.guard)
        return self.guard

    def start_policy(self, checkpoint: str) -> NodeProcess:
        self.policy = NodeProcess(module_command("vla_ros.ros.policy_node"), domain_id=self.domain, params={
            "profile": self.profile_path, "checkpoint": checkpoint, "command_namespace": GUARD_INPUT,
            "soft_start_time": 0.2, "diagnostics_period": 0.5, "max_camera_age": 0.08, "max_joint_state_age": 0.08})
        self.processes.append(self.policy)
        self.probe.wait_for(lambda: bool(self.values("policy_node")), 120.0, "policy_node diagnostics", self.policy)
        return self.policy

    def enable_policy(self) -> None:
        for _ in range(100):
            response = self.probe.call(SetBool, "/policy_node/enable", SetBool.Request(data=True), 30.0, self.policy)
            if response.success:
                return
            self.probe.spin_for(0.2)
        raise AssertionError(f"policy_node refused to arm: {response.message}\n{self.policy.report()}")

    def values(self, prefix: str) -> dict:
        for msg in reversed(self.diagnostics):
            for status in msg.status:
                if status.name.startswith(prefix):
                    return {kv.key: kv.value for kv in status.values}
        return {}

    def guard_state(self) -> str:
        return self.values("arm_guard").get("state", "")

    def wait_state(self, state: str, timeout: float = 5.0) -> None:
        self.probe.wait_for(lambda: self.guard_state() == state, timeout, f"arm_guard {state}", self.guard)

    def rearm(self) -> Trigger.Response:
        return self.probe.call(Trigger, "/arm_guard/rearm", Trigger.Request(), 10.0, self.guard)

    def estop_service(self, on: bool) -> None:
        assert self.probe.call(SetBool, "/arm_guard/estop", SetBool.Request(data=on), 10.0, self.guard).success

    def measured(self) -> np.ndarray:
        return self.arm.pose.copy()


@pytest.fixture
def rig_for(ros_domain):
    """rig_for(profile_path) -> a Rig on that profile; everything it started is stopped after the test."""
    opened = []

    def make(profile_path: str) -> Rig:
        context_manager = ros_context(ros_domain)
        probe = Probe(context_manager.__enter__())
        rig = Rig(probe, load_profile(profile_path), profile_path, ros_domain)
        opened.append((context_manager, probe, rig))
        return rig

    yield make
    for context_manager, probe, rig in opened:
        for process in rig.processes:
            if process.alive():
                os.kill(process.process.pid, signal.SIGCONT)  # a stopped process cannot exit
            process.stop()
        probe.close()
        context_manager.__exit__(None, None, None)


@pytest.fixture
def rig(rig_for, assets):  # noqa: F811 (the fixture imported above)
    return rig_for(assets["profile_path"])


def _hold_after_upstream_stopped(rig: Rig, arm_index: int = 0) -> tuple[int, float] | None:
    """(index in the driver log of the first command whose arm joints no upstream command has:
    the hold, seconds from the command before it, the last one forwarded); None before it arrives.

    Arm joints only: a command is logged when its gripper goal arrives, and the arm-group and
    gripper topics are separate readers, so a loaded probe can pair one tick's arm joints with the
    previous tick's gripper goal; the arm joints alone are exactly what one message carried."""
    arm_joints = slice(0, rig.profile.joints_per_arm - 1)
    upstream = [vector[arm_joints] for _, vector in rig.upstream.arm_commands[arm_index]]
    driver = rig.log.arm_commands[arm_index]
    for index, (stamp, vector) in enumerate(driver):
        if not any(np.allclose(vector[arm_joints], sent, rtol=0, atol=1e-6) for sent in upstream):
            assert index > 0, "the first command at the driver came from nowhere"
            return index, stamp - driver[index - 1][0]
    return None


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_guard_holds_the_measured_pose_when_the_policy_node_dies_or_hangs(rig, assets, how):  # noqa: F811
    rig.start_guard(command_timeout=TIMEOUT)
    policy = rig.start_policy(assets["good"])
    assert rig.guard_state() == "waiting"
    rig.enable_policy()
    rig.probe.wait_for(lambda: len(rig.log.arm_commands[0]) >= 25, 15.0, "forwarded commands", rig.guard)
    assert rig.guard_state() == "armed"
    before = len(rig.log.arm_commands[0])
    signalled = rig.probe.node.get_clock().now().nanoseconds * 1e-9
    os.kill(policy.process.pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    rig.wait_state("latched")
    # The hold's two messages (arm group, gripper) may reach a loaded probe well after the latch.
    rig.probe.wait_for(lambda: _hold_after_upstream_stopped(rig) is not None, 10.0, "the hold at the driver",
                       rig.guard)
    index, latency = _hold_after_upstream_stopped(rig)
    assert index >= before - 2
    hold_time, hold = rig.log.arm_commands[0][index]
    _, last = rig.log.arm_commands[0][index - 1]
    # The hold is the measured pose (the last goal with the sagging shoulder), not a repeat, and
    # keeps the gripper at its last goal.
    expected = last.copy()
    expected[SAG_JOINT] += SAG
    expected[-1] = rig.upstream.arm_commands[0][-1][1][-1]
    np.testing.assert_allclose(hold, expected, atol=1e-5)
    reason = rig.values("arm_guard")["reason"]
    own = re.search(r"no valid command for ([0-9.]+) s", reason)
    assert own, reason
    print(f"\narm_guard hold after {how}: {1e3 * latency:.1f} ms after the last forwarded command at the "
          f"probe, {1e3 * float(own.group(1)):.1f} ms on the guard's clock, "
          f"{1e3 * (hold_time - signalled):.1f} ms after the signal")
    # The probe's figure adds delivery to both messages; the guard's own is the time from its last
    # forward to its decision. Both are measured figures (printed, in docs/arm_guard.md), not pass
    # marks: on a loaded machine a process can be scheduled late; only "not before the timeout, and soon".
    assert TIMEOUT <= float(own.group(1)) <= TIMEOUT + 0.5, reason
    assert TIMEOUT - 0.02 <= latency <= TIMEOUT + 0.5, f"hold {latency:.3f} s after the last command"
    count, upstream = len(rig.log.arm_commands[0]), len(rig.upstream.arm_commands[0])
    if how == "stop":
        os.kill(policy.process.pid, signal.SIGCONT)
        rig.probe.wait_for(lambda: len(rig.upstream.arm_commands[0]) > upstream + 25, 15.0,
                           "policy_node commanding again after SIGCONT", policy)
    rig.probe.spin_for(0.5)
    assert len(rig.log.arm_commands[0]) == count, "forwarded while latched"
    assert int(rig.values("arm_guard").get("count:refused:latched", 0)) > 0 or how == "kill"
    if how == "stop":
        # While the guard held, the policy went on without the arm. The operator's order: disarm
        # it, re-arm the guard, enable the policy, which ramps from the measured pose.
        assert rig.probe.call(SetBool, "/policy_node/enable", SetBool.Request(data=False), 10.0, policy).success
    response = rig.rearm()
    assert response.success, response.message
    if how == "stop":
        rig.enable_policy()
        topic = rig.profile.arms[0].arm_command_topic
        groups = len(rig.log.messages[topic])
        rig.probe.wait_for(lambda: len(rig.log.messages[topic]) > groups + 10, 10.0, "forwarding after re-arm",
                           rig.guard)


def test_guard_refuses_out_of_limit_goals_and_over_cap_jumps_on_its_own(rig):
    rig.start_guard(command_timeout=5.0)
    profile = rig.profile
    upstream = make_sender(rig.probe.node, profile, DT, GUARD_INPUT)
    rig.probe.wait_for_subscribers(upstream.publishers[0][0], 1, 10.0, rig.guard)
    rig.probe.spin_for(0.3)  # joint states reach the guard
    step = profile.velocity_limit * DT  # what the policy node may move per tick

    def send(command: np.ndarray) -> None:
        upstream.send(command)
        rig.probe.spin_for(0.3)

    def groups_sent(arm_index: int) -> list[np.ndarray]:
        topic = profile.arms[arm_index].arm_command_topic
        return [np.asarray(msg.cmd, dtype=np.float64) for msg in rig.log.messages[topic]]

    start = rig.measured()
    send(start)
    rig.probe.wait_for(lambda: min(rig.log.counts()) >= 1, 5.0, "the first goal forwarded", rig.guard)
    assert rig.guard_state() == "armed"
    inside_margin = start.copy()
    inside_margin[2] = profile.position_upper[2]  # on the hardware limit: inside the margin
    jump = start.copy()
    jump[0] += 3 * step[0]
    beyond_hardware = start.copy()
    beyond_hardware[3] = profile.position_upper[3] + 0.5  # the driver's receiver refuses it too
    for command in (inside_margin, jump, beyond_hardware):
        send(command)
    good = start.copy()
    good[0] += 0.5 * step[0]
    arm_joints = slice(0, profile.joints_per_arm - 1)
    send(good)
    rig.probe.wait_for(lambda: any(np.allclose(g, good[arm_joints], atol=1e-6) for g in groups_sent(0)), 5.0,
                       "the good goal forwarded", rig.guard)
    rig.probe.spin_for(0.3)
    # The bad values are in arm 0: only its two good goals reach the driver. The other messages of
    # each bad command (the grippers, arm 1) are valid and pass: the goal they carry is unchanged.
    sent = groups_sent(0)
    assert len(sent) == 2, sent
    np.testing.assert_allclose(sent[0], start[arm_joints], atol=1e-6)
    np.testing.assert_allclose(sent[1], good[arm_joints], atol=1e-6)
    part = profile.arm_slice(1)
    assert all(np.allclose(g, start[part][arm_joints], atol=1e-6) for g in groups_sent(1))
    values = rig.values("arm_guard")
    assert int(values["count:refused:limits"]) == 1 and int(values["count:refused:step"]) == 1, values
    assert int(values["invalid_commands"]) == 1 and "outside the limits" in values["last_invalid_command"]
    assert rig.guard_state() == "armed"
    # Nothing loosens a running guard: its parameters are read-only.
    request = SetParameters.Request(parameters=[Parameter(name="step_tolerance", value=ParameterValue(
        type=ParameterType.PARAMETER_DOUBLE, double_value=10.0))])
    result = rig.probe.call(SetParameters, "/arm_guard/set_parameters", request, 10.0, rig.guard).results[0]
    assert not result.successful and "read-only" in result.reason


@pytest.mark.parametrize("simulation_clock", [True, False])
def test_on_simulation_time_a_stalled_simulation_is_not_a_stopped_commander(rig, simulation_clock):
    """With simulation_clock the command timeout runs on /clock: while the simulation (and with it the
    commander's clock) stands still nothing times out; once it moves on without commands, the guard
    holds and latches after command_timeout of simulation time. use_sim_time alone (a bag on a
    robot) keeps the timeout on the monotonic clock: a /clock that stops must not stop it."""
    sim = {"time": 100.0, "running": True}
    clock_pub = rig.probe.node.create_publisher(Clock, "/clock", 10)

    def tick() -> None:
        if sim["running"]:
            sim["time"] += DT
            clock_pub.publish(Clock(clock=convert.seconds_to_time(sim["time"])))

    rig.probe.node.create_timer(DT, tick)
    rig.start_guard(use_sim_time=True, simulation_clock=simulation_clock)
    upstream = make_sender(rig.probe.node, rig.profile, DT, GUARD_INPUT)
    rig.probe.wait_for_subscribers(upstream.publishers[0][0], 1, 10.0, rig.guard)
    commanding = rig.probe.node.create_timer(DT, lambda: upstream.send(rig.measured()))
    rig.wait_state("armed")
    rig.probe.spin_for(0.5)
    assert rig.guard_state() == "armed"
    commanding.cancel()
    sim["running"] = False  # the simulation stalls; its commander's timer stops with it
    rig.probe.spin_for(1.0)  # ten command timeouts of wall time
    if not simulation_clock:
        assert rig.guard_state() == "latched", rig.values("arm_guard")
        return
    assert rig.guard_state() == "armed", rig.values("arm_guard")
    sim["running"] = True  # simulated time moves on, and no command comes
    rig.wait_state("latched", timeout=5.0)
    assert "count:latches:timeout" in rig.values("arm_guard")


def test_estop_published_before_the_guard_started_latches_it(rig):
    estop = rig.probe.node.create_publisher(Bool, ESTOP_TOPIC, estop_qos())
    estop.publish(Bool(data=True))
    rig.start_guard(command_timeout=5.0)
    rig.wait_state("latched")
    assert rig.values("arm_guard")["estop"] == "topic"
    upstream = make_sender(rig.probe.node, rig.profile, DT, GUARD_INPUT)
    rig.probe.spin_for(0.5)
    held = rig.log.counts()  # [1, 1] when joint states reached the guard before the e-stop: its hold
    assert held in ([0, 0], [1, 1]), held
    upstream.send(rig.measured())
    rig.probe.spin_for(0.5)
    assert rig.log.counts() == held, "forwarded during an e-stop"
    response = rig.rearm()
    assert not response.success and "e-stop" in response.message
    estop.publish(Bool(data=False))
    rig.probe.spin_for(0.3)
    assert rig.rearm().success
    upstream.send(rig.measured())
    rig.probe.wait_for(lambda: min(rig.log.counts()) > held[0], 5.0, "forwarding after the e-stop was released",
                       rig.guard)


def test_estop_service_holds_the_measured_pose_and_can_cut_torque(rig):
    rig.start_guard(command_timeout=5.0, estop_torque_off=True)
    upstream = make_sender(rig.probe.node, rig.profile, DT, GUARD_INPUT)
    rig.probe.wait_for_subscribers(upstream.publishers[0][0], 1, 10.0, rig.guard)
    rig.probe.spin_for(0.3)
    upstream.send(rig.measured())
    rig.probe.wait_for(lambda: min(rig.log.counts()) >= 1, 5.0, "the first goal forwarded", rig.guard)
    rig.probe.spin_for(0.2)
    measured = rig.measured()
    rig.estop_service(True)
    rig.probe.wait_for(lambda: min(rig.log.counts()) >= 2, 5.0, "the e-stop hold", rig.guard)
    rig.probe.wait_for(lambda: not any(any(t) for t in rig.driver.torque), 5.0, "torque off", rig.guard)
    for arm_index in range(len(rig.profile.arms)):
        np.testing.assert_allclose(rig.log.arm_commands[arm_index][-1][1], measured[rig.profile.arm_slice(arm_index)],
                                   atol=1e-5)
    assert rig.guard_state() == "latched"
    assert not rig.rearm().success
    rig.estop_service(False)
    assert rig.rearm().success
    rig.wait_state("waiting")


def test_torque_off_needs_the_interbotix_interface(ros_domain):
    guard = NodeProcess(module_command("vla_ros.ros.arm_guard"), domain_id=ros_domain,
                        params={"profile": "aloha_sim_ros2_control", "estop_torque_off": True})
    assert guard.process.wait(60) == 2, guard.report()
    assert "'estop_torque_off' needs the interbotix interface" in guard.stderr()
    assert "Traceback" not in guard.stderr()


@pytest.mark.parametrize("interface", ["ros2_control", "trajectory"])
def test_guard_forwards_and_holds_on_the_trajectory_interfaces(rig_for, assets, tmp_path, interface):  # noqa: F811
    path = tmp_path / f"{interface}.yaml"
    path.write_text(yaml.safe_dump({"extends": assets["profile_path"], "name": f"guard_{interface}",
                                    "command_interface": interface}))
    rig = rig_for(str(path))
    rig.start_guard(command_timeout=TIMEOUT)
    upstream = make_sender(rig.probe.node, rig.profile, DT, GUARD_INPUT)
    rig.probe.wait_for_subscribers(upstream.publishers[0][0], 1, 10.0, rig.guard)
    rig.probe.spin_for(0.3)
    command = rig.measured()
    step = rig.profile.velocity_limit[0] * DT
    for _ in range(10):  # the waists turn at half the velocity limit, 50 Hz
        command[[0, rig.profile.joints_per_arm]] += 0.5 * step
        upstream.send(command)
        rig.probe.spin_for(DT)
    rig.wait_state("latched")
    rig.probe.spin_for(0.3)
    for arm_index in range(len(rig.profile.arms)):
        part = rig.profile.arm_slice(arm_index)
        received = [vector for _, vector in rig.log.arm_commands[arm_index]]
        assert len(received) == 11, f"10 forwarded and the hold, got {len(received)}"
        np.testing.assert_allclose(received[-2], command[part], atol=1e-9)
        hold = command[part].copy()
        hold[SAG_JOINT] += SAG
        np.testing.assert_allclose(received[-1], hold, atol=1e-9)
    assert rig.log.rejections == []
