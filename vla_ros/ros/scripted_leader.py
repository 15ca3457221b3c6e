"""scripted_leader: the leader arms of a teleoperator, played by the scripted transfer-cube demo.

For the simulated ALOHA (sim_node) only: it commands the follower only while an episode plays,
and an episode plays only after sim_node's reset service replied, so next to real arms (no such
service) it never sends a motion command. Every control period (50 Hz) it publishes both leader
arms' JointState on the profile's leader topics, in the 9-name layout of the real leaders (the
gripper JOINT angle derived from the normalised command through ``profile.leader_joint``, so that
recorder_node's leader decoding recovers the command), and while an episode plays it sends the
same command to the follower on the profile's command interface (vla_ros.ros.command_interfaces),
as a real teleoperation setup makes the follower follow the leader. With the interbotix interface
the first ~/start first performs the follower setup through the driver's services, as the ALOHA
scripts do.

~/start (std_srvs/Trigger) resets the simulation through its reset service and plays the scripted
demonstration for the cube of the episode the simulation reset to: sim_node's episode k uses seed
``seed + k``, and its reset reply names both, which is checked against this node's ``seed``
parameter (a mismatch means the two nodes were launched with different seeds, and the script
would grasp at a cube that is not there). ~/done (std_msgs/Bool) is false when an episode starts
playing and true when its script has ended; the leader then holds the last command.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from vla_ros.robot.profile import ArmSpec, ProfileError, RobotProfile, load_profile
from vla_ros.ros import convert
from vla_ros.ros.command_interfaces import make_sender
from vla_ros.ros.follower_setup import FollowerSetupError, run_follower_setup
from vla_ros.ros.params import ParameterError, ParamSpec, declare_parameters
from vla_ros.ros.qos import state_qos
from vla_ros.sim.aloha_sim import ACTION_DIM, SIM_DT
from vla_ros.sim.scripted import ScriptedLeader
from vla_ros.ros.node_main import run_node

# sim_node's ~/reset reply, e.g. "episode 3 seed 7"
SIM_RESET_REPLY = re.compile(r"episode (\d+) seed (\d+)")

PARAMETERS = (
    ParamSpec("profile", "aloha_sim", "robot profile: a bundled name (config/<name>.yaml) or a YAML path"),
    ParamSpec("seed", 0, "sim_node's `seed` parameter: its episode k (after k resets) has the cube of seed + k",
              minimum=0, maximum=2**31 - 1),
    ParamSpec("sim_reset_service", "/sim_node/reset", "std_srvs/Trigger that resets the simulation; every "
              "~/start calls it so that the follower and the cube start the episode afresh"),
    ParamSpec("reset_timeout", 20.0, "seconds to wait for the reset service and its reply", minimum=0.1,
              maximum=600.0),
    ParamSpec("max_steps", 0, "control steps of the script to play per episode; 0 = the whole script",
              minimum=0, maximum=100000),
    ParamSpec("mirror_finger_joint", "right_finger", "name of the leader's second finger joint in the "
              "published JointState (its position is minus the finger's)"),
    ParamSpec("follower_setup", True, "interbotix interface: before the first episode, do the ALOHA scripts' "
              "follower setup through the drivers' services (see policy_node)"),
)


def leader_joint_state(profile: RobotProfile, arm: ArmSpec, command: np.ndarray, stamp,
                       mirror_finger_joint: str) -> JointState:
    """One arm's 7 command entries (gripper normalised) as its leader arm reports them: the arm
    joints, the leader gripper joint angle, the leader finger and the mirrored finger. Velocity
    and effort stay empty (sensor_msgs/JointState allows it; nothing downstream reads them)."""
    command = np.asarray(command, dtype=np.float64)
    if command.shape != (profile.joints_per_arm,):
        raise ValueError(f"arm command must have {profile.joints_per_arm} entries, got shape {command.shape}")
    gripper = command[-1]
    finger = float(profile.leader_finger.denormalize(gripper))
    msg = JointState(header=convert.make_header(stamp))
    msg.name = [*profile.arm_joints, arm.leader_gripper_joint, arm.finger_joint, mirror_finger_joint]
    msg.position = [*map(float, command[:-1]), float(profile.leader_joint.denormalize(gripper)), finger, -finger]
    return msg


@dataclass
class Playback:
    leader: ScriptedLeader
    seed: int
    steps: int
    step: int = 0


class ScriptedLeaderNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__("scripted_leader", **node_kwargs)
        self.params = declare_parameters(self, PARAMETERS)
        self.profile = load_profile(self.params["profile"])
        if self.profile.action_dim != ACTION_DIM:
            raise ValueError(f"profile {self.profile.name} describes a {self.profile.action_dim}-dim robot; "
                             f"the scripted ALOHA demonstration has {ACTION_DIM} joints")
        if not self.params["sim_reset_service"].strip():
            raise ParameterError("parameter 'sim_reset_service' must name the simulation's reset service")
        self.command = self.profile.start_pose.copy()  # what the leader arms hold
        self.playback: Playback | None = None
        self.episodes_played = 0
        self.leader_pubs = [self.create_publisher(JointState, arm.leader_joint_states_topic, state_qos())
                            for arm in self.profile.arms]
        self.sender = make_sender(self, self.profile, self.profile.dt)
        self.setup_needed = self.params["follower_setup"] and self.profile.command_interface == "interbotix"
        self.done_pub = self.create_publisher(Bool, "~/done", state_qos())
        # ~/start waits for the reset reply while the control timer keeps publishing.
        self.reset_client = self.create_client(Trigger, self.params["sim_reset_service"],
                                               callback_group=MutuallyExclusiveCallbackGroup())
        self.create_service(Trigger, "~/start", self.on_start, callback_group=MutuallyExclusiveCallbackGroup())
        self.create_timer(SIM_DT, self.on_control_tick, callback_group=MutuallyExclusiveCallbackGroup())

    # --- episodes ---------------------------------------------------------------------------

    def reset_simulation(self) -> tuple[int, int]:
        """Reset the simulation; (its episode, that episode's seed), or RuntimeError."""
        timeout = self.params["reset_timeout"]
        service = self.params["sim_reset_service"]
        if not self.reset_client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(f"simulation reset service {service} is not available (waited {timeout:g} s)")
        future = self.reset_client.call_async(Trigger.Request())
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline or not self.context.ok():
                future.cancel()
                raise RuntimeError(f"no reply from {service} within {timeout:g} s")
            time.sleep(0.005)
        reply = future.result()
        if not reply.success:
            raise RuntimeError(f"{service} failed: {reply.message}")
        match = SIM_RESET_REPLY.search(reply.message)
        if match is None:
            raise RuntimeError(f"{service} replied {reply.message!r}; expected sim_node's 'episode N seed S'")
        episode, seed = int(match.group(1)), int(match.group(2))
        if seed != self.params["seed"] + episode:
            raise RuntimeError(f"the simulation reset to episode {episode} with seed {seed}, but this leader's "
                               f"seed parameter ({self.params['seed']}) gives seed {self.params['seed'] + episode}: "
                               "launch sim_node and scripted_leader with the same seed")
        return episode, seed

    def on_start(self, request, response):
        playing = self.playback
        if playing is not None:
            response.success = False
            response.message = (f"seed {playing.seed} is playing (step {playing.step} of {playing.steps}); "
                                "wait for ~/done")
            return response
        try:
            episode, seed = self.reset_simulation()  # first: only a simulation answers it
            if self.setup_needed:
                run_follower_setup(self, self.profile, self.params["reset_timeout"])
                self.setup_needed = False
            leader = ScriptedLeader.from_seed(seed)
        except (RuntimeError, ValueError, FollowerSetupError) as exc:
            response.success, response.message = False, f"cannot start: {exc}"
            self.get_logger().error(response.message)
            return response
        steps = min(self.params["max_steps"] or leader.num_steps, leader.num_steps)
        self.done_pub.publish(Bool(data=False))
        self.playback = Playback(leader, seed, steps)
        response.success = True
        response.message = f"playing simulation episode {episode} (seed {seed}): {steps} steps, {steps * SIM_DT:.2f} s"
        self.get_logger().info(response.message)
        return response

    # --- control tick -----------------------------------------------------------------------

    def on_control_tick(self) -> None:
        try:
            self.publish_tick()
        except Exception:
            if self.context.ok():
                raise  # otherwise: shut down (Ctrl-C) while this thread was publishing

    def publish_tick(self) -> None:
        stamp = self.get_clock().now().to_msg()
        playback = self.playback
        if playback is not None:
            self.command = playback.leader.action_at(playback.step)
            self.sender.send(self.command)
        for index, (arm, pub) in enumerate(zip(self.profile.arms, self.leader_pubs)):
            pub.publish(leader_joint_state(self.profile, arm, self.command[self.profile.arm_slice(index)],
                                           stamp, self.params["mirror_finger_joint"]))
        if playback is not None:
            playback.step += 1
            if playback.step >= playback.steps:
                self.playback = None
                self.episodes_played += 1
                self.done_pub.publish(Bool(data=True))
                self.get_logger().info(f"seed {playback.seed}: script done after {playback.steps} steps")


def main(argv: list[str] | None = None) -> int:
    return run_node("scripted_leader", ScriptedLeaderNode, (ParameterError, ProfileError, ValueError, ImportError), argv,
                    make_executor=lambda: MultiThreadedExecutor(num_threads=3))


if __name__ == "__main__":
    sys.exit(main())
