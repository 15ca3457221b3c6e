"""arm_guard: the last hop before the arms' driver; holds the arms when their commander stops.

Upstream (policy_node with ``command_namespace:=/arm_guard/in``) publishes on
``<input_namespace><driver topic>``; the guard validates each message exactly as the driver's
receiver does, checks it against the profile's limits and per-tick caps (vla_ros.control.guard)
and forwards it at once on the driver's own topic. A watchdog thread on the monotonic clock
commands the measured pose when no valid command has arrived for ``command_timeout`` and then
forwards nothing until ``~/rearm``. With ``simulation_clock`` (simulation only) every duration
runs on the simulation's /clock instead. The e-stop (``/vla_ros/estop``, transient local, or
``~/estop``) latches the same way and can also cut torque through the driver's service.

The guard starts ``waiting``: the arms keep whatever goal their driver has, and the first
command is forwarded only if it lies within one step cap of a fresh measured pose (the policy
node's soft start begins exactly there). So a healthy bringup needs no extra step, and a stale or
far-off first goal never reaches the arms. After a latch, re-arm it, then enable the policy.
No torch anywhere in its imports: it starts in about a second.
"""

from __future__ import annotations

import math
import sys
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger

from vla_ros.control.guard import LATCHED, Guard, GuardLimits
from vla_ros.robot import decode
from vla_ros.robot.profile import ProfileError, load_profile
from vla_ros.ros.command_interfaces import InterbotixDriverState, JointGoal, make_receiver, make_sender
from vla_ros.ros.follower_setup import TorqueEnable
from vla_ros.ros.node_main import run_node
from vla_ros.ros.params import ParameterError, ParamSpec, declare_parameters
from vla_ros.ros.qos import ESTOP_TOPIC, estop_qos, latest_state_qos, state_qos

# The longest stall of the guard's own process (not scheduled, seen up to 0.3 s on a loaded
# 2-core machine) after which it still processes every upstream command in order instead of
# latching: its input queue holds this much of the stream, and the watchdog, when it wakes late,
# lets the queued commands in before it decides that none arrived.
OWN_STALL_TOLERANCE_S = 0.5

PARAMETERS = (
    ParamSpec("profile", "aloha_stationary", "robot profile: bundled name (config/<name>.yaml) or a YAML path"),
    ParamSpec("input_namespace", "/arm_guard/in", "upstream publishes on <input_namespace><driver topic> "
              "(policy_node's command_namespace)"),
    ParamSpec("command_timeout", 0.1, "seconds without a valid command (monotonic clock; /clock with "
              "simulation_clock) before the guard commands the measured pose and latches",
              minimum=0.005, maximum=10.0),
    ParamSpec("rate", 0.0, "upstream control rate in Hz for the per-tick caps; 0 = the profile's",
              minimum=0.0, maximum=1000.0),
    ParamSpec("step_tolerance", 2.0, "per-tick cap = the profile's velocity limit / rate * this (the policy "
              "node already caps at 1; 2 lets one lost message pass)", minimum=1.0, maximum=10.0),
    ParamSpec("max_joint_state_age", 0.1, "a measured pose older than this (s, receipt time on the guard's "
              "clock) is unknown: no hold is sent from it and re-arming is refused", minimum=0.001),
    ParamSpec("estop_torque_off", False, "interbotix interface: the e-stop also turns torque off (arm group "
              "and gripper) through each <driver_namespace>/torque_enable; the arms go limp"),
    ParamSpec("simulation_clock", False, "simulation only, with use_sim_time: command_timeout and the joint-state "
              "age run on /clock, so a stalled simulator is not taken for a stopped commander. Off (robot, also "
              "with use_sim_time for a bag): always the monotonic clock"),
    ParamSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages (also sent on every change)",
              minimum=0.05),
)


class ArmGuard(Node):
    def __init__(self):
        super().__init__("arm_guard")
        self.params = declare_parameters(self, PARAMETERS)
        self.profile = profile = load_profile(self.params["profile"])
        namespace = self.params["input_namespace"]
        if not namespace.startswith("/") or namespace.endswith("/") or " " in namespace or namespace == "/":
            raise ParameterError(f"parameter 'input_namespace' must be an absolute namespace such as "
                                 f"'/arm_guard/in', got {namespace!r}")
        if self.params["estop_torque_off"]:
            if profile.command_interface != "interbotix":
                raise ParameterError(f"parameter 'estop_torque_off' needs the interbotix interface; profile "
                                     f"{profile.name} uses {profile.command_interface}")
            missing = [arm.name for arm in profile.arms if not arm.driver_namespace]
            if missing:
                raise ParameterError(f"parameter 'estop_torque_off': arms {missing} have no driver_namespace "
                                     f"in profile {profile.name}")
        self.dt = dt = 1.0 / (self.params["rate"] or profile.control_rate_hz)
        # Every duration runs on the monotonic clock, except in a simulation that asks for its own
        # clock: a simulator that stalls or runs slower than real time (and its commander with it)
        # is not a commander that stopped. Never on a robot: a /clock that stops would stop the timeout.
        self.sim_time = self.params["simulation_clock"]
        if self.sim_time and not self.get_parameter("use_sim_time").value:
            raise ParameterError("parameter 'simulation_clock' needs use_sim_time:=true (the simulation's /clock)")
        self.guard = Guard(GuardLimits.from_profile(profile, dt, self.params["step_tolerance"]),
                           self.params["command_timeout"], self.params["max_joint_state_age"])
        self.lock = threading.Lock()
        self.arm_states: dict[str, tuple[float, np.ndarray]] = {}
        self.rejections, self.last_rejection = 0, ""
        self._logged = (self.guard.state, self.guard.reason)

        self.sender = make_sender(self, profile, dt, "")
        # Radian gripper goals are what the driver takes after the follower setup.
        make_receiver(self, profile, self._on_goal, self._on_reject,
                      now=lambda: self.get_clock().now().nanoseconds * 1e-9, start_time=time.monotonic,
                      topic_prefix=namespace, driver_state=InterbotixDriverState(profile, "current_based_position"),
                      depth=math.ceil(OWN_STALL_TOLERANCE_S / dt))
        for arm in profile.arms:
            self.create_subscription(JointState, arm.joint_states_topic,
                                     lambda msg, arm=arm: self._on_joint_state(arm, msg), latest_state_qos())
        self.create_subscription(Bool, ESTOP_TOPIC, lambda msg: self._estop("topic", bool(msg.data)), estop_qos())
        self.create_service(SetBool, "~/estop", self._on_estop_service)
        self.create_service(Trigger, "~/rearm", self._on_rearm)
        self.torque_clients = []
        if self.params["estop_torque_off"]:
            self.torque_clients = [self.create_client(TorqueEnable, f"{arm.driver_namespace}/torque_enable")
                                   for arm in profile.arms]
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", state_qos())
        self.create_timer(self.params["diagnostics_period"], self._publish_diagnostics)

        self._stop = threading.Event()
        self._wake = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="arm_guard_watchdog", daemon=True)
        self._watchdog.start()
        self.get_logger().info(
            f"waiting: profile {profile.name}, forwarding {namespace}<driver topics> -> driver topics, "
            f"command_timeout {self.params['command_timeout']:g} s; after a latch: "
            f"ros2 service call {self.get_fully_qualified_name()}/rearm std_srvs/srv/Trigger")

    def _now(self) -> float:
        if self.sim_time:
            return self.get_clock().now().nanoseconds * 1e-9
        return time.monotonic()

    # --- forwarding -----------------------------------------------------------------------

    def _on_goal(self, goal: JointGoal) -> None:
        with self.lock:
            was = self.guard.state
            forward = self.guard.on_goal(self._now(), goal.arm_index, goal.joints, goal.targets)
            refusal = self.guard.last_refusal if forward is None else ""
            if forward is not None:
                self._publish_covering(goal.arm_index, set(goal.joints), forward)
        if forward is None:
            self.get_logger().warning(f"refused a goal: {refusal}", throttle_duration_sec=1.0)
        elif was != self.guard.state:
            self._wake.set()  # the command timeout starts running
        self._after_change()

    def _publish_covering(self, arm_index: int, joints: set[int], goal: np.ndarray) -> None:
        """Publish only the arm's messages that carry the accepted joints (one upstream message,
        one driver message), from the guard's full goal vector."""
        publishers = self.sender.publishers[arm_index]
        messages = self.sender.messages(goal)[arm_index]
        gripper = self.profile.joints_per_arm - 1
        for k, (publisher, msg) in enumerate(zip(publishers, messages)):
            # Two publishers per arm: the arm joints, then the gripper; one: all joints.
            covered = set(range(self.profile.joints_per_arm)) if len(publishers) == 1 else (
                set(range(gripper)) if k == 0 else {gripper})
            if covered & joints:
                publisher.publish(msg)

    def _on_reject(self, topic: str, reason: str) -> None:
        with self.lock:
            self.rejections += 1
            self.last_rejection = f"{topic}: {reason}"
        self.get_logger().warning(f"invalid command refused: {topic}: {reason}", throttle_duration_sec=1.0)

    def _on_joint_state(self, arm, msg: JointState) -> None:
        try:
            vector = decode.joint_state_to_arm_vector(self.profile, arm, msg)
        except Exception as exc:  # a bad message leaves the measured pose ageing
            self.get_logger().warning(f"bad joint state from arm {arm.name}: {exc}", throttle_duration_sec=1.0)
            return
        with self.lock:
            self.arm_states[arm.name] = (self._now(), vector)
            if len(self.arm_states) == len(self.profile.arms):
                oldest = min(stamp for stamp, _ in self.arm_states.values())
                pose = np.concatenate([self.arm_states[a.name][1] for a in self.profile.arms])
                self.guard.on_measured(oldest, pose)

    # --- stops ----------------------------------------------------------------------------

    def _send_hold(self, hold: np.ndarray | None) -> None:
        if hold is not None:
            self.sender.send(hold)

    def _watch(self) -> None:
        """Sleep until the command timeout falls due; new commands only move it later. Waking
        more than a tick late means this process was not running: the commands that arrived
        meanwhile are still queued, so the executor gets one tick to take them first."""
        graced = None
        while not self._stop.is_set():
            with self.lock:
                deadline = self.guard.deadline()
                now = self._now()
                late = deadline is not None and now - deadline > self.dt and graced != deadline
                if deadline is not None and now >= deadline and not late:
                    self._send_hold(self.guard.check_timeout(now))
                    deadline = None
            if late:
                graced = deadline
                self._stop.wait(self.dt)
            elif deadline is None:
                self._after_change()
                self._wake.wait(1.0)
                self._wake.clear()
            else:  # on simulation time, poll: the wall time to the deadline is unknown
                self._stop.wait(min(deadline - now, self.dt) if self.sim_time else deadline - now)

    def _estop(self, source: str, asserted: bool) -> None:
        """Acts on changes only: an e-stop publisher that repeats its state is common."""
        with self.lock:
            changed = (source in self.guard.estop_sources) != asserted
            self._send_hold(self.guard.set_estop(self._now(), source, asserted))
        if changed and asserted:
            self._torque_off()
        elif changed:
            self.get_logger().info(f"e-stop released by the {source}; still latched until ~/rearm")
        self._after_change()

    def _torque_off(self) -> None:
        for arm, client in zip(self.profile.arms, self.torque_clients):
            if not client.service_is_ready():
                self.get_logger().error(f"e-stop: cannot turn torque off, {client.srv_name} is not available")
                continue
            for cmd_type, name in (("group", self.profile.interbotix_arm_group), ("single", arm.gripper_joint)):
                client.call_async(TorqueEnable.Request(cmd_type=cmd_type, name=name, enable=False))
            self.get_logger().error(f"e-stop: torque off requested for arm {arm.name}")

    def _on_estop_service(self, request, response):
        self._estop("service", bool(request.data))
        response.success = True
        response.message = "e-stop asserted: latched" if request.data else "e-stop released; re-arm to forward"
        return response

    def _on_rearm(self, request, response):
        with self.lock:
            response.success, response.message = self.guard.rearm(self._now())
        if not response.success:
            self.get_logger().warning(f"re-arm {response.message}")
        self._after_change()
        return response

    # --- reporting ------------------------------------------------------------------------

    def _after_change(self) -> None:
        """Log and report every state change once (the watchdog and callbacks both call this)."""
        with self.lock:
            current = (self.guard.state, self.guard.reason)
            if current == self._logged:
                return
            self._logged = current
        state, reason = current
        logger = self.get_logger()
        if state == LATCHED:
            (logger.error if self.guard.estop_sources else logger.warning)(
                f"LATCHED: {reason}; forwarding nothing until {self.get_fully_qualified_name()}/rearm")
        else:
            logger.info(f"{state}: {reason}")
        self._publish_diagnostics()

    def diagnostics_values(self) -> dict:
        with self.lock:
            now = self._now()
            ages = {f"age_joint_states:{name}": now - stamp for name, (stamp, _) in self.arm_states.items()}
            values = {"state": self.guard.state, "reason": self.guard.reason,
                      "estop": ",".join(sorted(self.guard.estop_sources)),
                      "since_last_forward_s": (now - self.guard.last_forward_at
                                               if self.guard.last_forward_at is not None else float("inf")),
                      "command_timeout": self.guard.command_timeout, "last_refusal": self.guard.last_refusal,
                      "invalid_commands": self.rejections, "last_invalid_command": self.last_rejection,
                      "estop_torque_off": self.params["estop_torque_off"],
                      **{f"count:{k}": v for k, v in sorted(self.guard.counts.items())}, **ages}
        return values

    def _publish_diagnostics(self) -> None:
        values = self.diagnostics_values()
        if values["state"] == LATCHED:
            level = DiagnosticStatus.ERROR if values["estop"] else DiagnosticStatus.WARN
        else:
            level = DiagnosticStatus.OK
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: guard",
                                  message=f"{values['state']}: {values['reason']}", hardware_id=self.profile.name)
        status.values = [KeyValue(key=str(k), value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(msg)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._watchdog.join(timeout=2.0)


def main(argv: list[str] | None = None) -> int:
    return run_node("arm_guard", ArmGuard, (ParameterError, ProfileError, ImportError, ValueError), argv)


if __name__ == "__main__":
    sys.exit(main())
