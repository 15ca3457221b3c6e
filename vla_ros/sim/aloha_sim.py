"""The gym-aloha joint-space tasks, fast enough to run in real time.

Stock gym-aloha renders three 480x640 cameras with shadows and multisampling on every step
(~4 steps/s here). This wrapper drives the same dm_control tasks but renders only the cameras
asked for, at the size asked for, through cameras created once, with shadows off and
``offsamples = 0`` (~54 steps/s at 480x640 with one camera on 2 cores; real time is 50).

Seeding matches ``gym_aloha.env.AlohaEnv.reset(seed)``: the same object poses for the same seed.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from dm_control import mujoco
from dm_control.mujoco.engine import Camera
from dm_control.rl import control
from gym_aloha.constants import ASSETS_DIR, DT
from gym_aloha.tasks import sim as joint_sim
from gym_aloha.utils import sample_box_pose, sample_insertion_pose

from vla_ros.sim.behaviours import BehaviourMonitor

ACTION_DIM = 14
SIM_CAMERAS = ("top", "angle", "front_close")
SUCCESS_REWARD = 4
# Which simulated camera stands in for which robot-profile camera (the scene has no wrist cameras).
SIM_CAMERA_FOR_PROFILE_CAMERA = {"cam_high": "top"}


@dataclass(frozen=True)
class SimTaskSpec:
    xml: str
    task_class: type
    sample_objects: Callable[[int | None], np.ndarray]  # seed -> object poses for BOX_POSE


TASKS = {
    "transfer_cube": SimTaskSpec("bimanual_viperx_transfer_cube.xml", joint_sim.TransferCubeTask, sample_box_pose),
    "insertion": SimTaskSpec(
        "bimanual_viperx_insertion.xml",
        joint_sim.InsertionTask,
        lambda seed: np.concatenate(sample_insertion_pose(seed)),
    ),
}
# gym ids name the same tasks
TASK_ALIASES = {"AlohaTransferCube-v0": "transfer_cube", "AlohaInsertion-v0": "insertion"}

SIM_DT = DT


def _state_only(task_class: type) -> type:
    """The task with an observation of qpos/qvel only: images are rendered by AlohaSim itself."""

    class StateOnly(task_class):
        def get_observation(self, physics):
            obs = collections.OrderedDict()
            obs["qpos"] = self.get_qpos(physics)
            obs["qvel"] = self.get_qvel(physics)
            return obs

    StateOnly.__name__ = f"StateOnly{task_class.__name__}"
    return StateOnly


class AlohaSim:
    """One simulated bimanual ALOHA task with joint-position actions.

    Observations: ``{'qpos': (14,), 'qvel': (14,), 'images': {camera: HxWx3 uint8 RGB}}`` with
    grippers normalised as gym-aloha gives them (0 = closed). Actions: 14 joint targets, grippers
    normalised. In the transfer-cube scene, ``behaviours`` says which of the scene's behaviours
    the episode has completed (vla_ros.sim.behaviours); it is None in other scenes."""

    def __init__(
        self,
        task: str = "transfer_cube",
        cameras: tuple[str, ...] = ("top",),
        image_width: int = 640,
        image_height: int = 480,
    ):
        task = TASK_ALIASES.get(task, task)
        if task not in TASKS:
            raise ValueError(f"unknown sim task {task!r}; choose one of {sorted(TASKS)} (or {sorted(TASK_ALIASES)})")
        unknown = [c for c in cameras if c not in SIM_CAMERAS]
        if unknown:
            raise ValueError(f"unknown sim cameras {unknown}; the scene has {SIM_CAMERAS}")
        if int(image_width) <= 0 or int(image_height) <= 0:
            raise ValueError(f"image size must be positive, got {image_width}x{image_height}")
        self.task_name = task
        self.spec = TASKS[task]
        self.camera_names = tuple(cameras)
        self.image_width, self.image_height = int(image_width), int(image_height)

        physics = mujoco.Physics.from_xml_path(str(ASSETS_DIR / self.spec.xml))
        quality = physics.model.vis.quality
        quality.offsamples = 0
        global_vis = physics.model.vis.global_
        global_vis.offwidth = max(int(global_vis.offwidth), self.image_width)
        global_vis.offheight = max(int(global_vis.offheight), self.image_height)
        physics.model.light_castshadow[:] = 0
        self._env = control.Environment(
            physics,
            _state_only(self.spec.task_class)(),
            time_limit=float("inf"),
            control_timestep=DT,
            n_sub_steps=None,
            flat_observation=False,
        )
        self._cameras = {}
        self.steps = 0
        self.behaviours = BehaviourMonitor(physics) if task == "transfer_cube" else None

    @property
    def physics(self):
        return self._env.physics

    def render(self) -> dict[str, np.ndarray]:
        """The configured cameras' current views (created lazily: the GL context is made on first use)."""
        if not self._cameras:
            self._cameras = {
                name: Camera(self.physics, height=self.image_height, width=self.image_width, camera_id=name)
                for name in self.camera_names
            }
        # copies: a Camera renders into one buffer that the next render overwrites
        return {name: cam.render(render_flag_overrides={"shadow": False}).copy() for name, cam in self._cameras.items()}

    def _observation(self, state) -> dict:
        return {"qpos": np.asarray(state["qpos"], dtype=np.float64),
                "qvel": np.asarray(state["qvel"], dtype=np.float64),
                "images": self.render()}

    def reset(self, seed: int | None = None) -> dict:
        """A new episode; the object poses are those gym-aloha draws for ``seed``."""
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
                raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
            self._env.task.random.seed(int(seed))
        joint_sim.BOX_POSE[0] = self.spec.sample_objects(seed)
        timestep = self._env.reset()
        self.steps = 0
        if self.behaviours is not None:
            self.behaviours.reset(self.physics)
        return self._observation(timestep.observation)

    def step(self, action) -> tuple[dict, float, bool]:
        """Advance one control period (``SIM_DT``) towards the 14 joint targets in ``action``."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action must have shape ({ACTION_DIM},), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError("action has non-finite entries")
        timestep = self._env.step(action)
        self.steps += 1
        reward = float(timestep.reward or 0.0)
        if self.behaviours is not None:
            self.behaviours.update(self.physics, reward, timestep.observation["qpos"])
        return self._observation(timestep.observation), reward, reward >= SUCCESS_REWARD

    @property
    def sim_time(self) -> float:
        """Seconds of simulated time since the last reset."""
        return self.steps * SIM_DT
