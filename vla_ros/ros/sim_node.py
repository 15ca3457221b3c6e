"""sim_node: the MuJoCo ALOHA (gym-aloha) as a ROS 2 robot speaking the real stack's topics.

Publishes each follower's JointState in the ALOHA ROS 2 stack's 9-name layout, the cameras the
simulation renders on the profile's camera topics, the task reward and success, /diagnostics,
and /clock (the simulation time) when stepping as fast as possible or when asked to
(``publish_clock``, what the launch files and sim-eval use: a simulation that falls behind the
wall clock on a loaded machine then slows its consumers' clocks with it, as Gazebo's does). In
the transfer-cube scene it also publishes, every step, which of the scene's behaviours
(vla_ros.sim.behaviours: transfer, lift_place) the episode has completed on ~/behaviours: a
DiagnosticStatus whose values map each behaviour to the episode step it completed at, or "" (an
evaluation gives one instruction and checks them all).

Takes commands on the robot profile's command interface exactly as its real receiver does
(vla_ros.ros.command_interfaces):
- interbotix: xs_sdk's joint_group and joint_single commands, and its reboot_motors,
  set_operating_modes and torque_enable services; goals apply at once, are held until the next
  one and carry no stamps; the gripper starts in the stock configs' linear_position mode, so
  radian gripper goals are refused until the follower setup has run;
- ros2_control / trajectory: a joint_trajectory_controller's validation; a trajectory starts at
  its stamp (zero: on receipt), interpolates linearly from where the arm is through its points
  (point velocities unused) and holds its last point.
Everything the real receiver refuses is counted, logged and ignored, and goals outside the URDF
limits are ignored as the servo firmware ignores them; the simulation keeps running.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float32
from std_srvs.srv import Trigger

from vla_ros.robot.profile import ProfileError, load_profile
from vla_ros.ros import convert
from vla_ros.ros.command_interfaces import InterbotixDriverState, JointGoal, make_receiver
from vla_ros.ros.follower_setup import InterbotixDriverServices
from vla_ros.ros.params import ParameterError, ParamSpec, declare_parameters
from vla_ros.ros.qos import RELIABILITIES, image_qos, state_qos
from vla_ros.sim.aloha_sim import ACTION_DIM, SIM_CAMERA_FOR_PROFILE_CAMERA, SIM_DT, TASKS, AlohaSim
from vla_ros.ros.node_main import run_node


PARAMETERS = (
    ParamSpec("profile", "aloha_sim", "robot profile: a bundled name (config/<name>.yaml) or a YAML path"),
    ParamSpec("task", "transfer_cube", "simulated task", choices=tuple(TASKS)),
    ParamSpec("seed", 0, "seed of the first episode; episode k is seeded with seed + k", minimum=0, maximum=2**31 - 1),
    ParamSpec("image_width", 640, "published image width (pixels)", minimum=16, maximum=4096),
    ParamSpec("image_height", 480, "published image height (pixels)", minimum=16, maximum=4096),
    ParamSpec("image_format", "raw", "raw: sensor_msgs/Image rgb8 on the camera topic; jpeg: "
              "sensor_msgs/CompressedImage on <camera topic>/compressed", choices=("raw", "jpeg")),
    ParamSpec("jpeg_quality", 90, "JPEG quality when image_format is jpeg", minimum=1, maximum=100),
    ParamSpec("image_qos", "reliable", "image reliability (best_effort drops large frames between processes)",
              choices=tuple(RELIABILITIES)),
    ParamSpec("image_qos_depth", 2, "image publisher queue depth", minimum=1, maximum=100),
    ParamSpec("real_time", True, "true: step at `rate` steps per wall-clock second; false: step as fast as "
              "possible and publish /clock (run consumers with use_sim_time)"),
    ParamSpec("publish_clock", False, "with real_time: also publish the simulation time on /clock and "
              "stamp every message with it (run consumers with use_sim_time:=true); when the simulation cannot "
              "keep up with the wall clock (a loaded machine), their clock then slows down with it instead of "
              "running ahead of the physics. Always on when real_time is false"),
    ParamSpec("rate", 50.0, "steps per wall-clock second when real_time (each step simulates 0.02 s, so 50 "
              "is real time)", minimum=0.1, maximum=1000.0),
    ParamSpec("lockstep_timeout", 0.0, "0: step on the clock alone. > 0: after each step, while an arm is being "
              "commanded (a goal within the last 5 steps, no timeout since), wait up to this many seconds for a new "
              "goal for every joint of that arm before stepping on, so that each step uses the goal its commander computed for it "
              "(a real servo applies a goal when it arrives, never a whole step later); with publish_clock the "
              "commander's clock waits too", minimum=0.0, maximum=1.0),
    ParamSpec("mirror_finger_joint", "right_finger", "name of the follower's second finger joint in the "
              "published JointState (its position is minus the finger's)"),
    ParamSpec("diagnostics_period", 1.0, "seconds of wall time between /diagnostics messages",
              minimum=0.05, maximum=60.0),
    ParamSpec("gripper_operating_mode", "linear_position", "interbotix interface: the grippers' operating mode "
              "at start (the stock ALOHA follower configs: linear_position, which refuses radian goals until "
              "the follower setup sets current_based_position)",
              choices=("linear_position", "current_based_position", "position")),
)


LIVE_STREAM_STEPS = 5  # an arm whose last goal is at most this many steps old is being commanded


@dataclass
class JointPlan:
    """One joint's accepted goal on the simulation clock: knots at start_time + knot_times."""

    start_time: float
    knot_times: np.ndarray
    knots: np.ndarray

    @classmethod
    def from_goal(cls, start_time: float, current: float, times: np.ndarray, targets: np.ndarray):
        if times[0] > 0:  # interpolate from where the joint is to the first point
            times, targets = np.concatenate([[0.0], times]), np.concatenate([[current], targets])
        return cls(start_time, times, targets)

    def sample(self, now: float) -> float:
        return float(np.interp(now - self.start_time, self.knot_times, self.knots))


class SimNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__("sim_node", **node_kwargs)
        self.params = declare_parameters(self, PARAMETERS)
        self.profile = load_profile(self.params["profile"])
        if self.profile.action_dim != ACTION_DIM:
            raise ValueError(f"profile {self.profile.name} describes a {self.profile.action_dim}-dim robot; "
                             f"the simulated ALOHA has {ACTION_DIM} joints")
        self.cameras = [c for c in self.profile.cameras if c.name in SIM_CAMERA_FOR_PROFILE_CAMERA]
        if not self.cameras:
            raise ValueError(f"profile {self.profile.name} has none of the simulated cameras "
                             f"{sorted(SIM_CAMERA_FOR_PROFILE_CAMERA)}")
        skipped = [c.name for c in self.profile.cameras if c not in self.cameras]
        if skipped:
            self.get_logger().warning(f"cameras {skipped} are not simulated and will not be published")
        self.sim = AlohaSim(
            self.params["task"],
            cameras=tuple(SIM_CAMERA_FOR_PROFILE_CAMERA[c.name] for c in self.cameras),
            image_width=self.params["image_width"],
            image_height=self.params["image_height"],
        )
        self.real_time = self.params["real_time"]
        self.sim_clock = self.params["publish_clock"] or not self.real_time
        self.clock_time = 0.0  # seconds of simulated time since start, never reset (drives /clock)
        self.episode = -1
        self.accepted_commands = 0
        # Command timing against the simulation's steps, per arm while its command stream is live (a
        # goal within the last LIVE_STREAM_STEPS steps): a step that found no new goal since the
        # previous one, and a goal replaced by the next before any step used it.
        self._goals_since_step = [0] * len(self.profile.arms)
        self._joints_since_step: list[set[int]] = [set() for _ in self.profile.arms]
        self._steps_since_goal = [LIVE_STREAM_STEPS + 1] * len(self.profile.arms)
        self.steps_without_new_goal = 0
        self.goals_never_stepped = 0
        self.lockstep_timeouts = 0
        self.rejected_commands = 0
        self.last_rejection = ""
        self.sim_errors = 0
        self.overruns = 0
        self.steps = 0

        self.joint_state_pubs = [self.create_publisher(JointState, arm.joint_states_topic, state_qos())
                                 for arm in self.profile.arms]
        qos = image_qos(self.params["image_qos"], self.params["image_qos_depth"])
        compressed = self.params["image_format"] == "jpeg"
        self.image_pubs = [
            self.create_publisher(CompressedImage if compressed else Image,
                                  convert.camera_topic(cam.topic, compressed), qos)
            for cam in self.cameras
        ]
        self.reward_pub = self.create_publisher(Float32, "~/reward", state_qos())
        self.success_pub = self.create_publisher(Bool, "~/success", state_qos())
        self.behaviours_pub = (self.create_publisher(DiagnosticStatus, "~/behaviours", state_qos())
                               if self.sim.behaviours is not None else None)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", state_qos())
        self.clock_pub = self.create_publisher(Clock, "/clock", state_qos()) if self.sim_clock else None
        self.driver_state = None
        if self.profile.command_interface == "interbotix":
            self.driver_state = InterbotixDriverState(self.profile, self.params["gripper_operating_mode"])
            InterbotixDriverServices(self, self.profile, self.driver_state)
        make_receiver(self, self.profile, self.on_goal, self.on_reject,
                      now=lambda: self.get_clock().now().nanoseconds * 1e-9, start_time=lambda: self.clock_time,
                      driver_state=self.driver_state)
        self.create_service(Trigger, "~/reset", self.on_reset)
        self.next_diagnostics = time.monotonic()
        self._factor_since = (time.monotonic(), self.clock_time)
        self.real_time_factor = float("nan")
        self.reset_episode()

    # --- episode and commands -------------------------------------------------------------

    def reset_episode(self) -> int:
        self.episode += 1
        seed = self.params["seed"] + self.episode
        self.observation = self.sim.reset(seed)
        self.held = self.observation["qpos"].copy()
        self.plans: list[JointPlan | None] = [None] * self.profile.action_dim
        self.reward, self.success = 0.0, False
        self.get_logger().info(f"episode {self.episode} ({self.params['task']}, seed {seed})")
        return seed

    def on_reset(self, request, response):
        try:
            seed = self.reset_episode()
        except Exception as exc:  # report instead of taking the node down
            response.success, response.message = False, f"reset failed: {exc}"
            return response
        response.success, response.message = True, f"episode {self.episode} seed {seed}"
        return response

    def on_goal(self, goal: JointGoal) -> None:
        base = self.profile.arm_slice(goal.arm_index).start
        for k, joint in enumerate(goal.joints):
            index = base + joint
            self.plans[index] = JointPlan.from_goal(goal.start, float(self.observation["qpos"][index]),
                                                    goal.times, goal.targets[:, k])
        self.accepted_commands += 1
        if 0 in goal.joints:
            self._goals_since_step[goal.arm_index] += 1
        self._joints_since_step[goal.arm_index].update(goal.joints)

    def on_reject(self, topic: str, reason: str) -> None:
        self.rejected_commands += 1
        self.last_rejection = f"{topic}: {reason}"
        self.get_logger().warning(f"ignored command: {self.last_rejection}", throttle_duration_sec=1.0)

    def action(self) -> np.ndarray:
        """The 14 joint targets for this step: each joint's plan, or what it last held."""
        for index, plan in enumerate(self.plans):
            if plan is not None:
                self.held[index] = plan.sample(self.clock_time)
        return self.held.copy()

    # --- stepping and publishing ----------------------------------------------------------

    def step(self) -> None:
        self.clock_time += SIM_DT
        for arm, goals in enumerate(self._goals_since_step):
            self._steps_since_goal[arm] = 0 if goals else self._steps_since_goal[arm] + 1
            if not goals and self._steps_since_goal[arm] <= LIVE_STREAM_STEPS:
                self.steps_without_new_goal += 1
            self.goals_never_stepped += max(goals - 1, 0)
        self._goals_since_step = [0] * len(self.profile.arms)
        self._joints_since_step = [set() for _ in self.profile.arms]
        try:
            self.observation, self.reward, self.success = self.sim.step(self.action())
        except Exception as exc:  # a physics failure must not end the node: start a new episode
            self.sim_errors += 1
            self.get_logger().error(f"simulation step failed ({exc}); resetting the episode")
            self.reset_episode()
        self.steps += 1
        self.publish()

    def stamp(self):
        if self.sim_clock:
            return convert.seconds_to_time(self.clock_time)
        return self.get_clock().now().to_msg()

    def publish(self) -> None:
        stamp = self.stamp()
        if self.clock_pub is not None:
            self.clock_pub.publish(Clock(clock=stamp))
        qpos, qvel = self.observation["qpos"], self.observation["qvel"]
        for index, arm in enumerate(self.profile.arms):
            part = self.profile.arm_slice(index)
            self.joint_state_pubs[index].publish(convert.arm_joint_state(
                self.profile, arm, qpos[part], qvel[part], stamp, self.params["mirror_finger_joint"]))
        for cam, pub in zip(self.cameras, self.image_pubs):
            pixels = self.observation["images"][SIM_CAMERA_FOR_PROFILE_CAMERA[cam.name]]
            if self.params["image_format"] == "jpeg":
                msg = convert.array_to_compressed(pixels, "jpeg", stamp, cam.name, self.params["jpeg_quality"])
            else:
                msg = convert.array_to_image(pixels, "rgb8", stamp, cam.name)
            pub.publish(msg)
        self.reward_pub.publish(Float32(data=float(self.reward)))
        self.success_pub.publish(Bool(data=bool(self.success)))
        if self.behaviours_pub is not None:
            self.behaviours_pub.publish(DiagnosticStatus(
                name="sim_node: behaviours", message=f"episode {self.episode}",
                values=[KeyValue(key=k, value=v) for k, v in self.completed_behaviours().items()]))
        wall = time.monotonic()
        if wall >= self.next_diagnostics:
            self.next_diagnostics = wall + self.params["diagnostics_period"]
            since_wall, since_sim = self._factor_since
            if wall > since_wall:
                self.real_time_factor = (self.clock_time - since_sim) / (wall - since_wall)
            self._factor_since = (wall, self.clock_time)
            self.publish_diagnostics(stamp)

    def completed_behaviours(self) -> dict[str, str]:
        """Behaviour -> the episode step it completed at ("" if not yet); empty outside the
        transfer-cube scene."""
        if self.sim.behaviours is None:
            return {}
        return {name: "" if step is None else str(step) for name, step in self.sim.behaviours.completed.items()}

    def publish_diagnostics(self, stamp) -> None:
        problems = self.rejected_commands or self.sim_errors
        status = DiagnosticStatus(
            level=DiagnosticStatus.WARN if problems else DiagnosticStatus.OK,
            name="sim_node: simulation",
            hardware_id=f"gym_aloha/{self.sim.task_name}",
            message=self.last_rejection or "running",
        )
        status.values = [KeyValue(key=k, value=str(v)) for k, v in (
            ("episode", self.episode), ("steps", self.steps), ("sim_time", f"{self.clock_time:.2f}"),
            ("real_time_factor", f"{self.real_time_factor:.3f}"),
            ("reward", self.reward), ("success", self.success),
            ("accepted_commands", self.accepted_commands), ("rejected_commands", self.rejected_commands),
            ("steps_without_new_goal", self.steps_without_new_goal),
            ("goals_never_stepped", self.goals_never_stepped), ("lockstep_timeouts", self.lockstep_timeouts),
            ("last_rejection", self.last_rejection), ("command_interface", self.profile.command_interface),
            ("sim_errors", self.sim_errors), ("overruns", self.overruns),
            ("real_time", self.real_time), ("publish_clock", self.sim_clock))]
        status.values += [KeyValue(key=f"completed:{name}", value=step)
                          for name, step in self.completed_behaviours().items()]
        if self.driver_state is not None:
            status.values.append(KeyValue(key="driver_modes", value=str(self.driver_state.modes)))
        self.diagnostics_pub.publish(DiagnosticArray(header=convert.make_header(stamp), status=[status]))

    def run(self, executor) -> None:
        """Step until shutdown: on a wall-clock schedule, or as fast as possible."""
        period = 1.0 / self.params["rate"]
        next_tick = time.monotonic()
        context = self.context
        while context.ok():
            try:
                self.step()
            except Exception:
                if context.ok():
                    raise
                break  # shut down (Ctrl-C) in the middle of publishing
            if not self.real_time:
                for _ in range(4):  # serve commands and service calls between steps
                    executor.spin_once(timeout_sec=0.0)
                self.wait_for_commands(executor)
                continue
            next_tick += period
            now = time.monotonic()
            if now > next_tick + period:  # fell behind: do not try to catch up with a burst
                self.overruns += 1
                next_tick = now
            while context.ok() and (remaining := next_tick - time.monotonic()) > 0:
                executor.spin_once(timeout_sec=remaining)
            if self.wait_for_commands(executor):
                next_tick = max(next_tick, time.monotonic())  # the wait moved this step: no burst after it

    def commands_complete(self) -> bool:
        """Every arm being commanded has a new goal for each of its joints since the last step."""
        every_joint = set(range(self.profile.joints_per_arm))
        return all(self._steps_since_goal[arm] > LIVE_STREAM_STEPS or self._joints_since_step[arm] >= every_joint
                   for arm in range(len(self.profile.arms)))

    def wait_for_commands(self, executor) -> bool:
        """Lockstep (lockstep_timeout > 0): serve callbacks until commands_complete() or the timeout;
        returns whether it waited at all."""
        timeout = self.params["lockstep_timeout"]
        if timeout <= 0 or self.commands_complete():
            return False
        deadline = time.monotonic() + timeout
        while self.context.ok() and not self.commands_complete():
            remaining = deadline - time.monotonic()
            if remaining <= 0:  # a commander that stopped or fell behind: step freely until it is back
                self.lockstep_timeouts += 1
                self._steps_since_goal = [LIVE_STREAM_STEPS + 1] * len(self.profile.arms)
                break
            executor.spin_once(timeout_sec=remaining)
        return True


def main(argv: list[str] | None = None) -> int:
    return run_node("sim_node", SimNode, (ParameterError, ProfileError, ValueError, ImportError), argv,
                    spin=lambda node, executor: node.run(executor))


if __name__ == "__main__":
    sys.exit(main())
