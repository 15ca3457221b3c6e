"""The checkpoint `make demo` ships (checkpoints/transfer_cube_default): small enough to keep in
the repository, fits the simulated robot, records where it came from, and has learnt the
demonstrated motion: on cube poses it never saw, its chunks follow the scripted plan at least
twice as closely as holding still would (a random policy is ~6x worse than holding still)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vla_ros.policy.runtime import PolicyRuntime
from vla_ros.robot.profile import load_profile
from vla_ros.sim.aloha_sim import AlohaSim
from vla_ros.sim.collect import TASK_TEXT
from vla_ros.sim.scripted import scripted_transfer_cube

CHECKPOINT = Path(os.environ.get("VLA_ROS_BUNDLED_CHECKPOINT",
                                 Path(__file__).resolve().parents[2] / "checkpoints" / "transfer_cube_default"))
HELD_OUT_SEEDS = (1001, 1002, 1003)  # the policy was trained on seeds 0..199
STEPS_ALONG_THE_PLAN = (40, 110, 180, 260)  # reaching, descending, handing over, releasing


def test_small_enough_for_the_repository():
    size = sum(p.stat().st_size for p in CHECKPOINT.rglob("*") if p.is_file())
    assert 0 < size < 50 * 2**20


@pytest.fixture(scope="module")
def runtime():
    runtime = PolicyRuntime(CHECKPOINT, profile=load_profile("aloha_sim"), deterministic=True)
    runtime.set_instruction(TASK_TEXT["transfer_cube"])
    return runtime


def test_is_a_one_step_high_noise_policy_with_its_provenance(runtime):
    config = runtime.policy.config
    assert config.alpha > 1.0 and config.recommended_steps == 1
    training = config.extra["training"]
    assert training["camera_image_sizes"] == {"cam_high": [96, 128]}
    assert max(training["train_episodes"]) < 200


def test_follows_the_demonstrated_motion_on_unseen_cube_poses(runtime):
    sim = AlohaSim("transfer_cube", cameras=("top",), image_width=128, image_height=96)
    horizon = runtime.policy.config.horizon
    policy_error, hold_error = [], []
    for seed in HELD_OUT_SEEDS:
        plan = scripted_transfer_cube(seed).joint_actions
        observation = sim.reset(seed)
        for step, action in enumerate(plan[:max(STEPS_ALONG_THE_PLAN) + 1]):
            if step in STEPS_ALONG_THE_PLAN:
                chunk = runtime.predict({"cam_high": observation["images"]["top"]}, observation["qpos"])
                target = plan[step:step + horizon]
                policy_error.append(np.abs(chunk - target).mean())
                hold_error.append(np.abs(observation["qpos"] - target).mean())
            observation, _, _ = sim.step(action)
    policy_error, hold_error = np.mean(policy_error), np.mean(hold_error)
    assert policy_error < hold_error / 2, (
        f"chunks are {policy_error:.3f} from the plan on average; holding still is {hold_error:.3f}")
