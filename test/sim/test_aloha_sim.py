"""The fast gym-aloha wrapper: same state and object poses as gym-aloha for a seed, only the
requested cameras at the requested size, joint targets are followed, bad actions rejected."""

import numpy as np
import pytest
from gym_aloha.tasks import sim as joint_sim
from gym_aloha.utils import sample_box_pose

from vla_ros.sim.aloha_sim import AlohaSim


@pytest.fixture(scope="module")
def sim():
    return AlohaSim("transfer_cube", cameras=("top",), image_width=160, image_height=120)


def test_reset_observation(sim):
    obs = sim.reset(3)
    assert obs["qpos"].shape == (14,) and obs["qvel"].shape == (14,)
    assert set(obs["images"]) == {"top"}
    image = obs["images"]["top"]
    assert image.shape == (120, 160, 3) and image.dtype == np.uint8 and image.std() > 0
    np.testing.assert_allclose(obs["qpos"][[0, 1, 2, 4]], [0.0, -0.96, 1.16, -0.3], atol=1e-6)
    assert 0.0 < obs["qpos"][6] < 1.0  # normalised gripper
    np.testing.assert_allclose(joint_sim.BOX_POSE[0], sample_box_pose(3))
    np.testing.assert_allclose(sim.physics.named.data.qpos["red_box_joint"][:3], sample_box_pose(3)[:3])


def test_seed_determines_episode(sim):
    def run(seed):
        obs = sim.reset(seed)
        target = obs["qpos"] + 0.05
        for _ in range(5):
            obs, reward, success = sim.step(target)
        return obs["qpos"], obs["images"]["top"]

    qpos_a, image_a = run(7)
    qpos_b, image_b = run(7)
    np.testing.assert_array_equal(qpos_a, qpos_b)
    np.testing.assert_array_equal(image_a, image_b)
    assert not np.array_equal(run(8)[1], image_a)  # the cube moved


def test_joints_follow_targets(sim):
    obs = sim.reset(0)
    target = obs["qpos"].copy()
    target[[0, 7]] += 0.2  # both waists
    target[[6, 13]] = 0.9  # open both grippers
    for _ in range(75):
        obs, reward, success = sim.step(target)
    np.testing.assert_allclose(obs["qpos"][[0, 7]], target[[0, 7]], atol=0.02)
    np.testing.assert_allclose(obs["qpos"][[6, 13]], 0.9, atol=0.05)
    assert reward == 0.0 and success is False
    assert sim.sim_time == pytest.approx(75 * 0.02)


@pytest.mark.parametrize("action, message", [(np.zeros(13), "shape"), (np.full(14, np.nan), "non-finite")])
def test_bad_actions_rejected(sim, action, message):
    sim.reset(0)
    with pytest.raises(ValueError, match=message):
        sim.step(action)


def test_bad_configuration_rejected():
    with pytest.raises(ValueError, match="unknown sim task"):
        AlohaSim("stack_blocks")
    with pytest.raises(ValueError, match="unknown sim cameras"):
        AlohaSim("transfer_cube", cameras=("cam_high",))
    with pytest.raises(ValueError, match="seed"):
        AlohaSim("insertion", cameras=("top",), image_width=32, image_height=32).reset(-1)
