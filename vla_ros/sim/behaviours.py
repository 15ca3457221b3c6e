"""Which behaviour an episode of the transfer-cube scene completed, read off the physics.

One scene, several instructions: an evaluation that gives the policy one instruction must be able
to tell whether it did what was asked, something else that was scripted for another instruction,
or nothing. Every detector therefore runs on every episode, whatever was asked, and records the
control step at which its behaviour completed (None if it never did):

- ``transfer``: gym-aloha's own success, reward 4 (the cube held by the left gripper, off the
  table). This is sim_node's ``~/success`` for the task.
- ``lift_place``: the right gripper lifted the cube at least LIFT_HEIGHT off the table, and later
  the cube rests on the table again (touching it, touched by no gripper, nearly still) within
  PLACE_TOLERANCE of where it started, with the right gripper open; the left arm never touched it.

An episode is classified by the behaviour completed first (``classify``), so that a policy that,
say, puts the cube down and then hands it over counts once.
"""

from __future__ import annotations

import numpy as np

TRANSFER = "transfer"
LIFT_PLACE = "lift_place"
NONE = "none"
BEHAVIOURS = (TRANSFER, LIFT_PLACE)
# The instruction each behaviour's demonstrations are labelled with (collect-sim, sim-eval).
INSTRUCTIONS = {
    TRANSFER: "transfer the cube to the left arm",
    LIFT_PLACE: "lift the cube with the right arm and put it back down",
}

TRANSFER_REWARD = 4  # gym-aloha TransferCubeTask: left gripper holds the cube off the table
CUBE_GEOM = "red_box"
CUBE_JOINT = "red_box_joint"
TABLE_GEOM = "table"
LEFT_PREFIX, RIGHT_PREFIX = "vx300s_left/", "vx300s_right/"
RIGHT_FINGERS = ("vx300s_right/10_left_gripper_finger", "vx300s_right/10_right_gripper_finger")
RIGHT_GRIPPER_QPOS = 13  # index of the right gripper in the task's normalised 14-dim qpos
CUBE_REST_HEIGHT = 0.02  # the cube's centre when it lies on the table (half its 4 cm size)
LIFT_HEIGHT = 0.05  # m the cube's centre must rise above resting for "lifted"
PLACE_TOLERANCE = 0.04  # m (horizontal) from the cube's start position
REST_SPEED = 0.05  # m/s: slower than this counts as resting
OPEN_GRIPPER = 0.5  # normalised right gripper position (0 closed, 1 open) counted as open


class BehaviourMonitor:
    """Feed it the physics after every step of an episode; `completed` maps each behaviour to
    the step (1-based, as counted by `update`) at which it first completed, or None."""

    def __init__(self, physics):
        names = [physics.model.id2name(i, "geom") for i in range(physics.model.ngeom)]
        if CUBE_GEOM not in names or TABLE_GEOM not in names:
            raise ValueError(f"the scene has no {CUBE_GEOM!r} or {TABLE_GEOM!r} geom: not the transfer-cube scene")
        self._cube = names.index(CUBE_GEOM)
        self._table = names.index(TABLE_GEOM)
        self._left = {i for i, name in enumerate(names) if name.startswith(LEFT_PREFIX)}
        self._right = {i for i, name in enumerate(names) if name.startswith(RIGHT_PREFIX)}
        self._right_fingers = {names.index(name) for name in RIGHT_FINGERS}
        self.reset(physics)

    def reset(self, physics) -> None:
        """Call after the environment's reset: the cube's start position is read here."""
        self.start_xy = np.array(physics.named.data.qpos[CUBE_JOINT][:2], dtype=np.float64)
        self.steps = 0
        self.left_touched = False
        self.lifted_by_right = False
        self.completed: dict[str, int | None] = dict.fromkeys(BEHAVIOURS)

    def _cube_contacts(self, physics) -> set[int]:
        touching = set()
        for contact in physics.data.contact[: physics.data.ncon]:
            if contact.geom1 == self._cube:
                touching.add(int(contact.geom2))
            elif contact.geom2 == self._cube:
                touching.add(int(contact.geom1))
        return touching

    def update(self, physics, reward: float, qpos) -> dict[str, int | None]:
        """One control step done: `reward` is the task's reward for it, `qpos` the task's
        normalised 14-dim observation after it."""
        self.steps += 1
        touching = self._cube_contacts(physics)
        cube = physics.named.data.qpos[CUBE_JOINT]
        on_table = self._table in touching
        by_left = bool(touching & self._left)
        by_right = bool(touching & self._right)
        self.left_touched = self.left_touched or by_left
        if self.completed[TRANSFER] is None and reward >= TRANSFER_REWARD:
            self.completed[TRANSFER] = self.steps
        if (touching & self._right_fingers) and not on_table and cube[2] >= CUBE_REST_HEIGHT + LIFT_HEIGHT:
            self.lifted_by_right = True
        if self.completed[LIFT_PLACE] is None and self.lifted_by_right and not self.left_touched:
            speed = float(np.linalg.norm(physics.named.data.qvel[CUBE_JOINT][:3]))
            placed = on_table and not by_right and speed < REST_SPEED
            near_start = float(np.linalg.norm(cube[:2] - self.start_xy)) <= PLACE_TOLERANCE
            if placed and near_start and qpos[RIGHT_GRIPPER_QPOS] >= OPEN_GRIPPER:
                self.completed[LIFT_PLACE] = self.steps
        return dict(self.completed)


def classify(completed: dict[str, int | None]) -> str:
    """The behaviour an episode completed first (ties go to BEHAVIOURS order), else NONE."""
    done = [(step, BEHAVIOURS.index(name), name) for name, step in completed.items() if step is not None]
    return min(done)[2] if done else NONE
