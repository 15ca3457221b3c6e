"""Scripted demonstrations of the simulated ALOHA transfer-cube task.

Why two simulations: a hand-written plan is easy to express as gripper poses, so the plan runs
in gym-aloha's end-effector variant of the task, where mocap bodies welded to the gripper links
drag the arms. The joints that this produces are what a leader arm would have commanded, so the
recorded joint trajectory (14-dim, grippers normalised, 50 Hz) is replayed as ACTIONS in the
joint-space task that sim_node and the policy use; only episodes that succeed there count.
The end-effector run stiffens the package's welds and adds weak, damped wrist-roll springs (see
WELD_SOLIMP, ROLL_SPRING_STIFFNESS, ROLL_DAMPING) so that the arms follow the plan; the
joint-space task's physics is left exactly as gym-aloha ships it.

Cube pose: ``cube_pose_for_seed(seed)`` is ``gym_aloha.utils.sample_box_pose(seed)``, the very
call that ``gym_aloha``'s ``AlohaEnv.reset(seed=seed)`` makes. The joint-space task reads the
pose from the module global ``gym_aloha.tasks.sim.BOX_POSE[0]`` when it resets, so anything
that drives ``TransferCubeTask`` directly (sim_node, collect-sim) injects the same cube with::

    gym_aloha.tasks.sim.BOX_POSE[0] = cube_pose_for_seed(seed)   # then reset the environment

and ``AlohaEnv.reset(seed=seed)`` does exactly this by itself.

Gripper commands: both tasks turn a normalised gripper action g into the finger position target
``unnormalize_puppet_gripper_position(g)``; the recorded gripper entry is therefore the
normalised COMMAND, not the measured finger (a closed gripper stops on the cube, and replaying
that measurement would not squeeze it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import mujoco as mj
import numpy as np
from dm_control import mujoco
from dm_control.rl import control
from gym_aloha.constants import ASSETS_DIR, DT
from gym_aloha.tasks import sim as joint_sim
from gym_aloha.tasks.sim_end_effector import TransferCubeEndEffectorTask
from gym_aloha.utils import sample_box_pose

from vla_ros.sim.behaviours import BEHAVIOURS, TRANSFER, BehaviourMonitor

END_EFFECTOR_XML = ASSETS_DIR / "bimanual_viperx_end_effector_transfer_cube.xml"
JOINT_XML = ASSETS_DIR / "bimanual_viperx_transfer_cube.xml"
EPISODE_LEN = 400
SUCCESS_REWARD = 4
CUBE_JOINT = "red_box_joint"
CUBE_HALF_SIZE = 0.02
ARM_NAMES = ("left", "right")

# Distance (m) along the gripper link's forward axis from the link origin to the point midway
# between the fingertips' pads: the point the plan puts on the cube.
GRASP_POINT_DEPTH = 0.13
# Where the cube changes hands, above the table centre and within reach of both arms.
MEETING_POINT = np.array([0.0, 0.5, 0.25])
UP, TOWARD_RIGHT = np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])  # world directions
# The package's welds (solimp 0.25) are so soft that gravity and the arms' inertia leave a grasp
# point centimetres from its mocap target and make it overshoot; the plan runs with stiff ones.
WELD_SOLIMP = [0.95, 0.99, 0.001]
# Passing through the wrist's straight (singular) posture, the welds alone let the two roll
# joints spin against each other, sometimes to the flipped solution at +-pi; weak springs toward
# zero pick the unflipped one without moving the gripper. N m / rad.
ROLL_JOINTS = ("forearm_roll", "wrist_rotate")
ROLL_SPRING_STIFFNESS = 2.0
# The springs do not stop the two rolls from swinging against each other (0.14-0.25 rad within the
# first 60 steps in 7 of 10 seeds) while the wrist passes its straight posture: such a swing is
# capped by the safety filter wherever it is replayed, and a policy imitates it. Viscous damping
# on the same joints takes the swing out; the gripper's pose is the welds', so it is unchanged.
# N m s / rad.
ROLL_DAMPING = 1.0
# Control step just after the cube reaches the meeting point (step 175): the left arm, which has
# been moving toward its place beside the meeting point since the start, goes straight on to the
# cube, planned around where the cube actually is in the right gripper. Why no pause: a policy
# sees no clock, so during a wait with both arms still only incidental cues can tell it when to
# move on. Policies trained with a pause keyed on the exact look of the right gripper, which
# drifts in closed loop, and waited forever (README, "Proof in simulation").
HANDOVER_STEP = 178
# Control step at which the left gripper has closed on the cube and the right one starts to open,
# and how many steps the right gripper takes to open.
RELEASE_STEP = 230
RELEASE_TICKS = 20
ARM_JOINT_INDICES = np.r_[0:6, 7:13]
# Lift-and-place: how far the right arm lifts the cube (up, and toward its own side), the step at
# which it is back down, and how far the left arm rises meanwhile (plan_lift_place says why).
LIFT_PLACE_RISE = 0.10
LIFT_PLACE_SHIFT = 0.06
LIFT_PLACE_LEFT_RISE = 0.15
PLACE_STEP = 210
# Half-width (control steps) of the triangular window that smooths the piecewise-linear plan;
# every plan also holds its start for as many steps (_eased_in), so that it leaves rest smoothly.
# Linear segments jump in velocity at every waypoint; replayed through the safety filter, such a
# plan hit the 8 rad/s^2 acceleration cap on 16-20% of ticks, and a policy that imitates it is
# capped as often. Smoothed over +-8 steps (0.16 s), the velocity is continuous and the same
# plans are capped only while the soft start lags them (docs/experiments.md, "Smoother plans").
PLAN_SMOOTHING_STEPS = 8


def cube_pose_for_seed(seed: int) -> np.ndarray:
    """The transfer-cube task's random cube pose [x, y, z, qw, qx, qy, qz] for this seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    return sample_box_pose(int(seed)).astype(np.float64)


def _check_cube_pose(cube_pose) -> np.ndarray:
    pose = np.asarray(cube_pose, dtype=np.float64)
    if pose.shape != (7,) or not np.all(np.isfinite(pose)):
        raise ValueError(
            f"cube_pose must be 7 finite numbers [x, y, z, qw, qx, qy, qz], got {cube_pose!r}"
        )
    return pose


def _check_episode_len(episode_len: int) -> int:
    if isinstance(episode_len, bool) or not isinstance(episode_len, (int, np.integer)):
        raise TypeError(f"episode_len must be an int, got {type(episode_len).__name__}")
    if episode_len < EPISODE_LEN:
        raise ValueError(
            f"episode_len must be at least {EPISODE_LEN} (the plan's length), got {episode_len}"
        )
    return int(episode_len)


# ---------------------------------------------------------------------------------------------
# Quaternion helpers (MuJoCo convention: [w, x, y, z]).


def _axis_angle(axis, degrees: float) -> np.ndarray:
    quat = np.empty(4)
    mj.mju_axisAngle2Quat(quat, np.asarray(axis, dtype=np.float64), np.deg2rad(degrees))
    return quat


def _multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    quat = np.empty(4)
    mj.mju_mulQuat(quat, a, b)
    return quat


def _conjugate(quat: np.ndarray) -> np.ndarray:
    return quat * np.array([1.0, -1.0, -1.0, -1.0])


def _rotate(quat: np.ndarray, vector: np.ndarray) -> np.ndarray:
    out = np.empty(3)
    mj.mju_rotVecQuat(out, np.asarray(vector, dtype=np.float64), quat)
    return out


# ---------------------------------------------------------------------------------------------
# The end-effector plan.


@dataclass(frozen=True)
class Waypoint:
    """Where one arm's grasp point must be at a control step, the world rotation of its gripper
    away from the arm's straight-out reference orientation, and its normalised gripper command."""

    step: int
    grasp_point: np.ndarray
    rotation: np.ndarray
    gripper: float


def _interpolate(waypoints: list[Waypoint], step: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Linear interpolation between the two waypoints around `step` (held after the last)."""
    if step >= waypoints[-1].step:
        last = waypoints[-1]
        return last.grasp_point, last.rotation, last.gripper
    for before, after in itertools.pairwise(waypoints):
        if before.step <= step < after.step:
            frac = (step - before.step) / (after.step - before.step)
            point = before.grasp_point + frac * (after.grasp_point - before.grasp_point)
            second = after.rotation if np.dot(before.rotation, after.rotation) >= 0 else -after.rotation
            rotation = before.rotation + frac * (second - before.rotation)
            gripper = before.gripper + frac * (after.gripper - before.gripper)
            return point, rotation / np.linalg.norm(rotation), gripper
    raise ValueError(f"step {step} precedes the first waypoint (step {waypoints[0].step})")


def _eased_in(waypoints: list[Waypoint]) -> list[Waypoint]:
    """The plan with its start held for PLAN_SMOOTHING_STEPS steps. Why: the smoothing window is clamped at the
    plan's first step, so without the hold the smoothed path already moves at full speed on step
    0 (up to 0.02 rad per tick): a jump from rest that the safety filter caps, and that a policy
    trained on it learns to make."""
    start = waypoints[0]
    if waypoints[1].step <= start.step + PLAN_SMOOTHING_STEPS:
        raise ValueError(f"the plan's second waypoint (step {waypoints[1].step}) leaves no room to hold its start")
    held = Waypoint(start.step + PLAN_SMOOTHING_STEPS, start.grasp_point, start.rotation, start.gripper)
    return [start, held, *waypoints[1:]]


def _smoothed(waypoints: list[Waypoint], step: int, half_width: int = PLAN_SMOOTHING_STEPS):
    """The linear path averaged over steps step +- half_width with triangular weights (two box
    filters: continuous velocity, bounded acceleration), clamped to the plan's span so that the
    start and the final hold are unchanged. Corners are rounded: the path reaches a waypoint's
    point up to half_width steps late, and reaches a held one fully by then."""
    offsets = np.arange(-half_width, half_width + 1)
    weights = (half_width + 1 - np.abs(offsets)).astype(np.float64)
    weights /= weights.sum()
    first, last = waypoints[0].step, waypoints[-1].step
    samples = [_interpolate(waypoints, int(np.clip(step + offset, first, last))) for offset in offsets]
    points = np.array([point for point, _, _ in samples])
    rotations = np.array([rotation for _, rotation, _ in samples])
    rotations *= np.where(rotations @ rotations[0] < 0, -1.0, 1.0)[:, None]  # one hemisphere
    rotation = weights @ rotations
    grippers = np.array([gripper for _, _, gripper in samples])
    return weights @ points, rotation / np.linalg.norm(rotation), float(weights @ grippers)


def plan_transfer_cube(
    cube_position, right_base, left_start: Waypoint, right_start: Waypoint, handover_point=MEETING_POINT
) -> dict[str, list[Waypoint]]:
    """Timed waypoints for both arms: the right arm picks the cube and brings it to the meeting
    point, the left arm takes it at `handover_point` (where the cube is once it got there), the
    right arm lets go and backs away.

    The right gripper pitches down 60 degrees so that its fingers close on the cube's side faces,
    and turns toward the cube as seen from its base (`right_base`) so that the wrist never has to
    twist the gripper sideways while it passes through its straight, singular posture. The left
    gripper comes in level and rolled 90 degrees so that its fingers close on the top and bottom
    faces, clear of the right fingers.
    """
    cube = np.asarray(cube_position, dtype=np.float64).copy()
    cube[2] = CUBE_HALF_SIZE  # the sampled height is a drop height; the cube rests on the table
    handover = np.asarray(handover_point, dtype=np.float64)
    pick, pitch_down = _pick_orientation(cube, right_base)
    level_rolled = _axis_angle([1.0, 0.0, 0.0], 90.0)
    meet = MEETING_POINT
    grasp_height = 0.01 * UP  # keeps the fingertips off the table

    right = [
        right_start,
        Waypoint(60, cube + 0.08 * UP, pick, 1.0),  # above the cube, open
        Waypoint(100, cube + grasp_height, pick, 1.0),  # fingers around the cube
        Waypoint(130, cube + grasp_height, pick, 0.0),  # closed
        Waypoint(175, meet, pitch_down, 0.0),  # cube at the meeting point
        Waypoint(RELEASE_STEP, meet, pitch_down, 0.0),
        Waypoint(RELEASE_STEP + RELEASE_TICKS, meet, pitch_down, 1.0),  # released
        Waypoint(RELEASE_STEP + 60, meet + 0.1 * TOWARD_RIGHT + 0.03 * UP, pitch_down, 1.0),  # backed away
    ]
    left = [
        left_start,
        Waypoint(HANDOVER_STEP, meet - 0.12 * TOWARD_RIGHT, level_rolled, 1.0),  # open, beside the meeting point
        Waypoint(HANDOVER_STEP + 30, handover - 0.005 * TOWARD_RIGHT, level_rolled, 1.0),  # fingers around the cube
        Waypoint(RELEASE_STEP, handover - 0.005 * TOWARD_RIGHT, level_rolled, 0.0),  # closed
        Waypoint(RELEASE_STEP + RELEASE_TICKS, handover - 0.005 * TOWARD_RIGHT, level_rolled, 0.0),
        Waypoint(RELEASE_STEP + 60, handover - 0.06 * TOWARD_RIGHT + 0.02 * UP, level_rolled, 0.0),  # carried away
    ]
    return {"left": left, "right": right}


def _pick_orientation(cube: np.ndarray, right_base) -> tuple[np.ndarray, np.ndarray]:
    """The right gripper's orientation for picking the cube, and for carrying it (pitched down)."""
    pitch_down = _axis_angle([0.0, 1.0, 0.0], -60.0)
    reach = cube[:2] - np.asarray(right_base, dtype=np.float64)[:2]
    heading = np.rad2deg(np.arctan2(-reach[1], -reach[0]))  # from the arm's straight-out -x
    return _multiply(_axis_angle([0.0, 0.0, 1.0], heading), pitch_down), pitch_down


def plan_lift_place(cube_position, right_base, left_start: Waypoint, right_start: Waypoint) -> dict[str, list[Waypoint]]:
    """Timed waypoints for the other instruction of the scene: the right arm picks the cube as in
    the transfer, lifts it LIFT_PLACE_RISE up and LIFT_PLACE_SHIFT toward its own side, puts it
    back down where it was, opens and backs up; the left arm, clear of the cube, rises steadily
    by LIFT_PLACE_LEFT_RISE until the right arm has backed up. No pauses, for the reason given
    at HANDOVER_STEP. The right arm's first 130 - PLAN_SMOOTHING_STEPS steps are the transfer's: only the left arm
    (rising here, reaching there) and the instruction tell the two apart early on.

    Why the left arm moves and the way up is not the way down: with a still left arm and a
    straight lift, the state after the pick (right arm above the cube) equalled the state before
    it up to the gripper, and nothing told a small policy which half of the episode it was in.
    Trained so, it settled between the two poses with the gripper open and never grasped (0 of
    50 episodes through ROS, docs/experiments.md). The transfer's left arm gives the same cue."""
    cube = np.asarray(cube_position, dtype=np.float64).copy()
    cube[2] = CUBE_HALF_SIZE
    pick, _ = _pick_orientation(cube, right_base)
    grasp = cube + 0.01 * UP
    backed_up = PLACE_STEP + 60
    right = [
        right_start,
        Waypoint(60, cube + 0.08 * UP, pick, 1.0),
        Waypoint(100, grasp, pick, 1.0),
        Waypoint(130, grasp, pick, 0.0),  # closed
        Waypoint(170, grasp + LIFT_PLACE_RISE * UP + LIFT_PLACE_SHIFT * TOWARD_RIGHT, pick, 0.0),  # lifted
        Waypoint(PLACE_STEP, grasp, pick, 0.0),  # back on the table
        Waypoint(PLACE_STEP + RELEASE_TICKS, grasp, pick, 1.0),  # released
        Waypoint(backed_up, cube + 0.1 * UP, pick, 1.0),  # backed up
    ]
    left_raised = Waypoint(backed_up, left_start.grasp_point + LIFT_PLACE_LEFT_RISE * UP, left_start.rotation,
                           left_start.gripper)
    return {"left": [left_start, left_raised], "right": right}


# ---------------------------------------------------------------------------------------------
# Quiet tasks: gym-aloha's tasks render three 480x640 cameras every step; these render nothing.


class _EndEffectorTransferCube(TransferCubeEndEffectorTask):
    """End-effector task with a given cube pose (instead of an unseeded random one), mocap
    bodies starting where the grippers are (so the first steps do not yank the arms), and no
    rendering."""

    def __init__(self, cube_pose: np.ndarray):
        super().__init__()
        self._cube_pose = cube_pose

    def initialize_episode(self, physics):
        super().initialize_episode(physics)
        physics.named.data.qpos[CUBE_JOINT] = self._cube_pose
        mj.mj_kinematics(physics.model.ptr, physics.data.ptr)
        for arm_index, arm in enumerate(ARM_NAMES):
            link = f"vx300s_{arm}/gripper_link"
            offset, relative_quat = _weld_offset(physics, arm_index)
            mocap_quat = _multiply(physics.named.data.xquat[link], _conjugate(relative_quat))
            physics.data.mocap_quat[arm_index] = mocap_quat
            link_pos = physics.named.data.xpos[link]
            physics.data.mocap_pos[arm_index] = link_pos - _rotate(mocap_quat, offset)

    def get_observation(self, physics):
        return {"qpos": self.get_qpos(physics)}


class _JointTransferCube(joint_sim.TransferCubeTask):
    """Joint-space task with a given cube pose, rendering at most one camera."""

    def __init__(self, cube_pose: np.ndarray, render_camera: str | None, size: tuple[int, int]):
        super().__init__()
        self._cube_pose = cube_pose
        self._render_camera = render_camera
        self._size = size

    def initialize_episode(self, physics):
        joint_sim.BOX_POSE[0] = self._cube_pose  # gym-aloha's (only) way in
        super().initialize_episode(physics)

    def get_observation(self, physics):
        observation = {"qpos": self.get_qpos(physics)}
        if self._render_camera is not None:
            height, width = self._size
            observation["image"] = physics.render(
                height=height, width=width, camera_id=self._render_camera
            )
        return observation


def _weld_offset(physics, arm_index: int) -> tuple[np.ndarray, np.ndarray]:
    """The gripper link's pose in its mocap body's frame, as the weld constraint holds it.

    The XML leaves the weld's relative pose to MuJoCo, which takes it from the reference
    configuration: the link sits 13 cm from its mocap body, so a mocap target is not a gripper
    target.
    """
    data = physics.model.eq_data[arm_index]
    return data[3:6].copy(), data[6:10].copy()


def _grasp_offset(physics, arm_index: int) -> np.ndarray:
    """The grasp point in the mocap body's frame."""
    offset, relative_quat = _weld_offset(physics, arm_index)
    return offset + _rotate(relative_quat, [GRASP_POINT_DEPTH, 0.0, 0.0])


def _make_environment(physics, task) -> control.Environment:
    return control.Environment(physics, task, float("inf"), control_timestep=DT, flat_observation=False)


def _max_reward_reached(rewards) -> bool:
    return bool(rewards) and max(rewards) >= SUCCESS_REWARD


def _check_behaviour(behaviour: str) -> str:
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"no scripted plan for behaviour {behaviour!r} (available: {list(BEHAVIOURS)})")
    return behaviour


# ---------------------------------------------------------------------------------------------
# Public API.


@dataclass(frozen=True)
class ScriptedEpisode:
    """One scripted demonstration: the cube it was planned for and the joint commands (T, 14)
    [left 6 joints, left gripper, right 6 joints, right gripper] to replay at 50 Hz, and which
    behaviour (vla_ros.sim.behaviours) they perform; success_in_ee_env is that behaviour's
    detector in the end-effector run."""

    seed: int | None
    cube_pose: np.ndarray
    joint_actions: np.ndarray
    success_in_ee_env: bool
    behaviour: str = TRANSFER


class JointReplay(NamedTuple):
    """A replay in the joint-space task. observations[t] and images[t] are what was seen BEFORE
    actions[t] was applied; rewards[t] is the reward right after it. success is the transfer
    (gym-aloha reward 4); completed maps every behaviour to the step it completed at, or None."""

    observations: np.ndarray
    images: list[np.ndarray] | None
    rewards: np.ndarray
    success: bool
    completed: dict | None = None


def record_transfer_cube(
    cube_pose, episode_len: int = EPISODE_LEN, seed: int | None = None, behaviour: str = TRANSFER
) -> ScriptedEpisode:
    """Runs the behaviour's plan in the end-effector task for this cube and records, at every
    control step, the arm joints it reached and the gripper commands it sent."""
    cube_pose = _check_cube_pose(cube_pose)
    episode_len = _check_episode_len(episode_len)
    behaviour = _check_behaviour(behaviour)
    physics = mujoco.Physics.from_xml_path(str(END_EFFECTOR_XML))
    physics.model.eq_solimp[:2, :3] = WELD_SOLIMP
    for arm in ARM_NAMES:
        for joint in ROLL_JOINTS:
            physics.named.model.jnt_stiffness[f"vx300s_{arm}/{joint}"] = ROLL_SPRING_STIFFNESS
            physics.named.model.dof_damping[f"vx300s_{arm}/{joint}"] = ROLL_DAMPING
    env = _make_environment(physics, _EndEffectorTransferCube(cube_pose))
    env.reset()

    grasp_offsets = [_grasp_offset(physics, i) for i in range(len(ARM_NAMES))]

    def grasp_point(arm: str) -> np.ndarray:
        link = f"vx300s_{arm}/gripper_link"
        forward = physics.named.data.xmat[link].reshape(3, 3)[:, 0]
        return physics.named.data.xpos[link] + GRASP_POINT_DEPTH * forward

    # Both grippers start closed: initialize_robots commands them so.
    starts = [
        Waypoint(0, grasp_point(arm), physics.data.mocap_quat[i].copy(), 0.0)
        for i, arm in enumerate(ARM_NAMES)
    ]
    right_base = physics.named.data.xpos["vx300s_right"].copy()

    def eased(plan: dict[str, list[Waypoint]]) -> dict[str, list[Waypoint]]:
        return {arm: _eased_in(waypoints) for arm, waypoints in plan.items()}

    planner = plan_transfer_cube if behaviour == TRANSFER else plan_lift_place
    plan = eased(planner(cube_pose[:3], right_base, *starts))
    monitor = BehaviourMonitor(physics)

    joint_actions = np.empty((episode_len, 14))
    for step in range(episode_len):
        if behaviour == TRANSFER and step == HANDOVER_STEP:
            cube_in_hand = physics.named.data.qpos[CUBE_JOINT][:3].copy()
            plan = eased(plan_transfer_cube(cube_pose[:3], right_base, *starts, handover_point=cube_in_hand))
        mocap_action = []
        for arm_index, arm in enumerate(ARM_NAMES):
            point, quat, gripper = _smoothed(plan[arm], step)
            mocap_pos = point - _rotate(quat, grasp_offsets[arm_index])
            mocap_action.append(np.concatenate([mocap_pos, quat, [gripper]]))
            joint_actions[step, 7 * arm_index + 6] = gripper
        reward = env.step(np.concatenate(mocap_action)).reward
        qpos = env.task.get_qpos(physics)
        monitor.update(physics, reward, qpos)
        joint_actions[step, ARM_JOINT_INDICES] = qpos[ARM_JOINT_INDICES]
    return ScriptedEpisode(seed, cube_pose, joint_actions, monitor.completed[behaviour] is not None, behaviour)


def scripted_transfer_cube(seed: int, episode_len: int = EPISODE_LEN, behaviour: str = TRANSFER) -> ScriptedEpisode:
    """The scripted demonstration of `behaviour` for the cube pose that `seed` gives the task."""
    return record_transfer_cube(cube_pose_for_seed(seed), episode_len, seed=int(seed), behaviour=behaviour)


def replay_in_joint_env(
    episode: ScriptedEpisode, render_camera: str | None = None, size: tuple[int, int] = (480, 640)
) -> JointReplay:
    """Replays the episode's joint commands as actions of the joint-space task (the one sim_node
    runs) from the episode's cube pose. `size` is (height, width) of the optional camera images;
    rendering is slow on CPU, so leave render_camera None when only success matters."""
    actions = np.asarray(episode.joint_actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[1] != 14 or len(actions) == 0:
        raise ValueError(f"episode.joint_actions must be a (T, 14) array, got shape {actions.shape}")
    if not np.all(np.isfinite(actions)):
        raise ValueError("episode.joint_actions holds NaN or infinite values")
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"size must be (height, width) with positive entries, got {size!r}")
    cube_pose = _check_cube_pose(episode.cube_pose)
    physics = mujoco.Physics.from_xml_path(str(JOINT_XML))
    cameras = [physics.model.id2name(i, "camera") for i in range(physics.model.ncam)]
    if render_camera is not None and render_camera not in cameras:
        raise ValueError(f"unknown camera {render_camera!r}; the scene has {cameras}")
    env = _make_environment(physics, _JointTransferCube(cube_pose, render_camera, tuple(size)))
    observation = env.reset().observation
    monitor = BehaviourMonitor(physics)
    observations, images, rewards = [], [], []
    for action in actions:
        observations.append(observation["qpos"])
        if render_camera is not None:
            images.append(observation["image"])
        timestep = env.step(action)
        rewards.append(timestep.reward)
        observation = timestep.observation
        monitor.update(physics, timestep.reward, observation["qpos"])
    return JointReplay(
        observations=np.asarray(observations),
        images=images if render_camera is not None else None,
        rewards=np.asarray(rewards, dtype=np.float64),
        success=_max_reward_reached(rewards),
        completed=dict(monitor.completed),
    )


class KeptDemonstration(NamedTuple):
    """A demonstration whose joint-space replay succeeded, with that replay."""

    episode: ScriptedEpisode
    replay: JointReplay


class SuccessfulDemonstrations:
    """Scripted demonstrations for consecutive seeds, keeping those whose joint-space replay
    succeeds; `tried` and `kept` count them so that a collector can report its yield. Every
    iteration starts again at `start_seed`, with fresh counts."""

    def __init__(
        self,
        start_seed: int = 0,
        max_tries: int | None = None,
        episode_len: int = EPISODE_LEN,
        render_camera: str | None = None,
        size: tuple[int, int] = (480, 640),
    ):
        cube_pose_for_seed(start_seed)
        positive_int = isinstance(max_tries, int) and not isinstance(max_tries, bool) and max_tries >= 1
        if max_tries is not None and not positive_int:
            raise ValueError(f"max_tries must be a positive int or None, got {max_tries!r}")
        self.start_seed = int(start_seed)
        self.max_tries = max_tries
        self.episode_len = _check_episode_len(episode_len)
        self.render_camera = render_camera
        self.size = size
        self.tried = 0
        self.kept = 0

    def __iter__(self) -> Iterator[KeptDemonstration]:
        if self.max_tries is None:
            seeds = itertools.count(self.start_seed)
        else:
            seeds = range(self.start_seed, self.start_seed + self.max_tries)
        self.tried = self.kept = 0
        for seed in seeds:
            episode = scripted_transfer_cube(seed, self.episode_len)
            replay = replay_in_joint_env(episode, self.render_camera, self.size)
            self.tried += 1
            if replay.success:
                self.kept += 1
                yield KeptDemonstration(episode, replay)

    def take(self, count: int) -> list[KeptDemonstration]:
        """The first `count` successful demonstrations (fewer if max_tries runs out first)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        return list(itertools.islice(self, count))


class ScriptedLeader:
    """A leader arm pair that performs the scripted transfer step by step: action_at(step) is
    the 14-dim command for control step `step` (50 Hz), held at the last one after the end."""

    def __init__(self, cube_pose, episode_len: int = EPISODE_LEN, seed: int | None = None):
        self.episode = record_transfer_cube(cube_pose, episode_len, seed)

    @classmethod
    def from_seed(cls, seed: int, episode_len: int = EPISODE_LEN) -> ScriptedLeader:
        """The leader for the cube that `seed` gives the task (sim_node must reset with it)."""
        return cls(cube_pose_for_seed(seed), episode_len, int(seed))

    @property
    def cube_pose(self) -> np.ndarray:
        return self.episode.cube_pose

    @property
    def num_steps(self) -> int:
        return len(self.episode.joint_actions)

    def action_at(self, step: int) -> np.ndarray:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        return self.episode.joint_actions[min(int(step), self.num_steps - 1)].copy()


def measure_success_rate(seeds: Sequence[int], episode_len: int = EPISODE_LEN) -> dict:
    """How often the scripted demonstrations succeed in the joint-space task (no rendering)."""
    start = time.perf_counter()
    failed = [
        seed
        for seed in seeds
        if not replay_in_joint_env(scripted_transfer_cube(seed, episode_len)).success
    ]
    tried = len(seeds)
    return {
        "tried": tried,
        "succeeded": tried - len(failed),
        "success_rate": (tried - len(failed)) / tried if tried else None,
        "failed_seeds": failed,
        "seconds_per_episode": (time.perf_counter() - start) / tried if tried else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Prints, as JSON, the success rate of the scripted demonstrations over a range of seeds."""
    parser = argparse.ArgumentParser(
        prog="scripted-demos", description="Success rate of the scripted transfer-cube demos."
    )
    parser.add_argument("--episodes", type=int, default=20, help="number of seeds to try")
    parser.add_argument("--start-seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.start_seed < 0:
        parser.error("--episodes must be >= 1 and --start-seed >= 0")
    seeds = list(range(args.start_seed, args.start_seed + args.episodes))
    print(json.dumps({"start_seed": args.start_seed, **measure_success_rate(seeds)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
