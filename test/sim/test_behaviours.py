"""The transfer-cube scene's two behaviours: each scripted plan completes its own behaviour by the
detectors in vla_ros.sim.behaviours, in the joint-space task that sim_node runs, and never the
other's; the detectors classify an episode by what it completed first."""

import numpy as np
import pytest
from dm_control import mujoco
from gym_aloha.constants import ASSETS_DIR

from vla_ros.robot.profile import load_profile
from vla_ros.sim import behaviours, scripted
from vla_ros.sim.aloha_sim import AlohaSim
from vla_ros.sim.behaviours import LIFT_PLACE, NONE, TRANSFER, BehaviourMonitor, classify

# 2 and 8 put the cube near the table's near and far edges; 0 and 9 are central.
SEEDS = (0, 2, 8, 9)


@pytest.fixture(scope="module")
def replays():
    """(behaviour, seed) -> (scripted episode, its joint-space replay)."""
    out = {}
    for behaviour in behaviours.BEHAVIOURS:
        for seed in SEEDS:
            episode = scripted.scripted_transfer_cube(seed, behaviour=behaviour)
            out[behaviour, seed] = episode, scripted.replay_in_joint_env(episode)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_lift_place_plan_completes_lift_place_and_is_no_transfer(replays, seed):
    episode, replay = replays[LIFT_PLACE, seed]
    assert episode.behaviour == LIFT_PLACE and episode.success_in_ee_env
    assert replay.completed[LIFT_PLACE] is not None
    assert replay.completed[TRANSFER] is None and not replay.success
    assert replay.rewards.max() == 2  # lifted by the right gripper; the left never touched it
    assert classify(replay.completed) == LIFT_PLACE


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_transfer_plan_completes_transfer_and_is_no_lift_place(replays, seed):
    _, replay = replays[TRANSFER, seed]
    assert replay.success and replay.completed[TRANSFER] is not None
    assert replay.completed[LIFT_PLACE] is None
    assert classify(replay.completed) == TRANSFER


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_lift_place_actions_stay_within_profile_limits_and_mark_time_with_the_left_arm(replays, seed):
    profile = load_profile("aloha_sim")
    actions = replays[LIFT_PLACE, seed][0].joint_actions
    assert np.all(np.isfinite(actions))
    assert np.all(actions >= profile.safe_lower()) and np.all(actions <= profile.safe_upper())
    assert np.all(np.abs(np.diff(actions, axis=0)) / profile.dt <= profile.velocity_limit)
    # The left arm rises steadily (a cue of progress far above the training's 0.05 rad state
    # noise) and never reaches out: its waist does not turn toward the cube.
    left = actions[:, profile.arm_slice(0)][:, :6]
    assert np.ptp(left, axis=0).max() > 0.3
    assert np.ptp(left[:, 0]) < 0.05
    progress = np.diff(left[:scripted.PLACE_STEP + 60, 2])  # the elbow
    assert np.all(progress * np.sign(progress.sum()) >= -1e-3), "the left arm's motion is monotonic"
    # the right arm differs from the transfer's only after the pick (step 130, less the smoothing)
    transfer = replays[TRANSFER, seed][0].joint_actions
    right = profile.arm_slice(1)
    same = 130 - scripted.PLAN_SMOOTHING_STEPS
    np.testing.assert_allclose(actions[:same, right], transfer[:same, right], atol=0.02)
    assert np.abs(actions[200:, right] - transfer[200:, right]).max() > 0.2
    # the way up is not the way down: lifted (step 170), the shoulder is far from where it was
    # above the cube (step 60); 0.02-0.04 rad with a straight lift
    assert abs(actions[170, right][1] - actions[60, right][1]) > 0.1


@pytest.mark.slow
def test_aloha_sim_reports_the_behaviour_it_replays(replays):
    """The same detectors in AlohaSim (what sim_node and collect-sim step), reset per episode."""
    sim = AlohaSim("transfer_cube", cameras=("top",), image_width=32, image_height=32)
    for behaviour in behaviours.BEHAVIOURS:
        episode = replays[behaviour, SEEDS[0]][0]
        sim.reset(episode.seed)
        assert sim.behaviours.completed == dict.fromkeys(behaviours.BEHAVIOURS)
        for action in episode.joint_actions:
            sim.step(action)
        assert classify(sim.behaviours.completed) == behaviour
        assert sim.behaviours.completed == replays[behaviour, SEEDS[0]][1].completed


def test_an_untouched_cube_completes_nothing():
    sim = AlohaSim("transfer_cube", cameras=("top",), image_width=32, image_height=32)
    observation = sim.reset(3)
    for _ in range(50):
        observation, _, _ = sim.step(observation["qpos"])
    assert sim.behaviours.completed == {TRANSFER: None, LIFT_PLACE: None}
    assert not sim.behaviours.lifted_by_right and not sim.behaviours.left_touched


def test_other_scenes_have_no_behaviour_detectors():
    assert AlohaSim("insertion", cameras=("top",), image_width=32, image_height=32).behaviours is None
    physics = mujoco.Physics.from_xml_path(str(ASSETS_DIR / "bimanual_viperx_insertion.xml"))
    with pytest.raises(ValueError, match="not the transfer-cube scene"):
        BehaviourMonitor(physics)


@pytest.mark.parametrize("completed, expected", [
    ({TRANSFER: None, LIFT_PLACE: None}, NONE),
    ({TRANSFER: 220, LIFT_PLACE: None}, TRANSFER),
    ({TRANSFER: None, LIFT_PLACE: 224}, LIFT_PLACE),
    ({TRANSFER: 300, LIFT_PLACE: 224}, LIFT_PLACE),  # put down first, handed over later
    ({TRANSFER: 224, LIFT_PLACE: 224}, TRANSFER),  # a tie goes to the order of BEHAVIOURS
])
def test_an_episode_counts_as_the_behaviour_it_completed_first(completed, expected):
    assert classify(completed) == expected


def test_unknown_behaviour_has_no_plan():
    with pytest.raises(ValueError, match="no scripted plan"):
        scripted.scripted_transfer_cube(0, behaviour="juggle")
