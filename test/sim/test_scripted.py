"""Scripted transfer-cube demonstrations: they must succeed when replayed as joint actions in the
joint-space task that sim_node runs, stay inside the sim profile's limits, and be reproducible
from the seed (collect-sim and sim_node rely on the seed alone)."""

import dataclasses
import json

import numpy as np
import pytest
from gym_aloha.tasks import sim as joint_sim
from gym_aloha.utils import sample_box_pose

from vla_ros.robot.profile import load_profile
from vla_ros.sim import scripted

# 2 and 8 put the cube near the table's near and far edges (y = 0.405 and 0.594), the hardest
# reaches for the right arm; 0 and 9 are central.
SEEDS = (0, 2, 8, 9)


@pytest.fixture(scope="module")
def episodes():
    return {seed: scripted.scripted_transfer_cube(seed) for seed in SEEDS}


def test_cube_pose_is_the_task_pose_for_the_seed():
    pose = scripted.cube_pose_for_seed(7)
    np.testing.assert_array_equal(pose, scripted.cube_pose_for_seed(7))
    np.testing.assert_array_equal(pose, sample_box_pose(7))  # what AlohaEnv.reset(seed=7) uses
    assert not np.array_equal(pose, scripted.cube_pose_for_seed(8))


def test_episode_is_reproducible_from_seed(episodes):
    again = scripted.scripted_transfer_cube(SEEDS[0])
    np.testing.assert_array_equal(again.cube_pose, episodes[SEEDS[0]].cube_pose)
    np.testing.assert_array_equal(again.joint_actions, episodes[SEEDS[0]].joint_actions)


@pytest.mark.parametrize("seed", SEEDS)
def test_joint_space_replay_succeeds(episodes, seed):
    episode = episodes[seed]
    assert episode.seed == seed and episode.success_in_ee_env
    replay = scripted.replay_in_joint_env(episode)
    assert replay.success and replay.rewards.max() == scripted.SUCCESS_REWARD
    assert replay.observations.shape == episode.joint_actions.shape == (scripted.EPISODE_LEN, 14)
    assert replay.images is None
    # the cube was injected the documented way
    np.testing.assert_array_equal(joint_sim.BOX_POSE[0], scripted.cube_pose_for_seed(seed))


@pytest.mark.parametrize("seed", SEEDS)
def test_actions_are_finite_and_within_profile_limits(episodes, seed):
    profile = load_profile("aloha_sim")
    actions = episodes[seed].joint_actions
    assert np.all(np.isfinite(actions))
    assert np.all(actions >= profile.safe_lower()) and np.all(actions <= profile.safe_upper())
    speeds = np.abs(np.diff(actions, axis=0)) / profile.dt
    assert np.all(speeds <= profile.velocity_limit)
    np.testing.assert_allclose(actions[0, profile.arm_slice(0)][:6], profile.start_pose[:6], atol=0.05)


@pytest.mark.parametrize("seed", SEEDS)
def test_something_moves_until_the_cube_has_changed_hands(episodes, seed):
    """A policy sees no clock: while everything stands still it cannot tell when to move on, and
    the policies trained on a plan with such a pause waited there forever (README, "Proof in
    simulation"). Until the right gripper has opened, some joint moves in every 0.2 s."""
    actions = episodes[seed].joint_actions
    window = 10
    done = scripted.RELEASE_STEP + scripted.RELEASE_TICKS
    travel = np.abs(actions[window:done] - actions[:done - window]).max(axis=1)
    assert travel.min() > 0.02, f"nothing moves around step {int(travel.argmin())}"


@pytest.mark.parametrize("behaviour", scripted.BEHAVIOURS)
@pytest.mark.parametrize("seed", SEEDS)
def test_plans_leave_rest_smoothly_and_stay_under_the_acceleration_cap(episodes, seed, behaviour):
    """A policy imitates its demonstrations' accelerations, and the safety filter caps what exceeds
    the profile's limit. The plans start from rest (the arms are still when an episode starts) and
    their arm joints exceed the limit on under 2% of steps, from the first step on: the transfer
    on none, the lift only at the top, where the right wrist turns from lifting to placing.
    Before the start was held and the wrist rolls damped, the first steps moved up to 0.02 rad per
    tick and the two roll joints swung up to 0.3 rad against each other, over the cap on some 50
    steps per episode."""
    profile = load_profile("aloha_sim")
    arms = scripted.ARM_JOINT_INDICES
    actions = (episodes[seed] if behaviour == scripted.TRANSFER
               else scripted.scripted_transfer_cube(seed, behaviour=behaviour)).joint_actions
    cap = profile.acceleration_limit[arms] * profile.dt ** 2
    assert np.abs(actions[1, arms] - actions[0, arms]).max() < 0.1 * cap.min() / profile.dt
    over_cap = (np.abs(np.diff(actions, n=2, axis=0))[:, arms] > cap).any(axis=1)
    assert over_cap.mean() < 0.02
    if behaviour == scripted.TRANSFER:
        assert not over_cap.any(), f"over the cap at steps {np.flatnonzero(over_cap)}"


def test_a_plan_too_short_to_hold_its_start_is_refused():
    start = scripted.Waypoint(0, np.zeros(3), np.array([1.0, 0.0, 0.0, 0.0]), 0.0)
    moved = dataclasses.replace(start, step=scripted.PLAN_SMOOTHING_STEPS, grasp_point=np.ones(3))
    with pytest.raises(ValueError, match="no room to hold its start"):
        scripted._eased_in([start, moved])
    held = scripted._eased_in([start, dataclasses.replace(moved, step=60)])
    assert [w.step for w in held] == [0, scripted.PLAN_SMOOTHING_STEPS, 60]
    np.testing.assert_array_equal(held[1].grasp_point, start.grasp_point)


@pytest.mark.parametrize("soft_start_time, max_capped", [(2.0, 0.03), (0.2, 0.01)])  # policy_node's default, sim-eval's
def test_plan_through_the_controller_is_almost_never_capped(episodes, soft_start_time, max_capped):
    """The plan executed as policy_node would execute a perfect imitation of it (chunks every 0.1 s
    through the Controller and its safety filter) over the 400 ticks that sim-eval runs: never
    capped after the soft start, and within it on 1-9 ticks with the 2 s soft start (seeds 0, 2,
    8, 9: the quarter speed lags the plan) and on 1 tick with sim-eval's 0.2 s. Issue 17's
    target for the policy is 10%."""
    from vla_ros.control.controller import Controller, ControllerConfig
    from vla_ros.policy.rollout import REPLAN_PERIOD, drive
    from vla_ros.sim.aloha_sim import AlohaSim

    profile = load_profile("aloha_sim")
    controller = Controller(profile, ControllerConfig(soft_start_time=soft_start_time))
    sim = AlohaSim("transfer_cube", cameras=())
    for seed in SEEDS:
        plan = episodes[seed].joint_actions
        result = drive(controller, sim, seed, lambda tick, *_: plan[tick:tick + 20],
                       round(REPLAN_PERIOD / profile.dt), len(plan), run_out=True)
        assert result["success"] and result["ticks"] == len(plan), seed
        assert result["interventions_ticks_after_soft_start"]["cap_acceleration"] == 0, seed
        assert result["interventions_ticks"]["cap_acceleration"] <= max_capped * result["ticks"], (seed, result)


def test_replay_renders_the_requested_camera(episodes):
    short = dataclasses.replace(episodes[SEEDS[0]], joint_actions=episodes[SEEDS[0]].joint_actions[:3])
    replay = scripted.replay_in_joint_env(short, render_camera="top", size=(48, 64))
    assert len(replay.images) == 3
    assert replay.images[0].shape == (48, 64, 3) and replay.images[0].dtype == np.uint8
    assert not replay.success


def test_scripted_leader_steps_through_the_episode(episodes):
    episode = episodes[SEEDS[0]]
    leader = scripted.ScriptedLeader(episode.cube_pose)
    assert leader.num_steps == scripted.EPISODE_LEN
    np.testing.assert_array_equal(leader.action_at(120), episode.joint_actions[120])
    np.testing.assert_array_equal(leader.action_at(10_000), episode.joint_actions[-1])
    from_seed = scripted.ScriptedLeader.from_seed(SEEDS[0])
    np.testing.assert_array_equal(from_seed.cube_pose, episode.cube_pose)
    np.testing.assert_array_equal(from_seed.action_at(5), episode.joint_actions[5])
    with pytest.raises(ValueError):
        leader.action_at(-1)


def test_successful_demonstrations_count_kept_and_tried(monkeypatch):
    real_replay = scripted.replay_in_joint_env

    def replay_failing_seed_1(episode, *args):
        replay = real_replay(episode, *args)
        return replay._replace(success=False) if episode.seed == 1 else replay

    monkeypatch.setattr(scripted, "replay_in_joint_env", replay_failing_seed_1)
    stream = scripted.SuccessfulDemonstrations(start_seed=0, max_tries=5)
    kept = stream.take(2)
    assert [demo.episode.seed for demo in kept] == [0, 2]
    assert (stream.kept, stream.tried) == (2, 3)
    assert all(demo.replay.success for demo in kept)


def test_max_tries_bounds_the_stream(monkeypatch):
    def failed_replay(episode, *args):
        return scripted.JointReplay(None, None, None, False)

    monkeypatch.setattr(scripted, "replay_in_joint_env", failed_replay)
    stream = scripted.SuccessfulDemonstrations(start_seed=3, max_tries=2)
    assert stream.take(5) == []
    assert (stream.kept, stream.tried) == (0, 2)


@pytest.mark.parametrize(
    "call",
    [
        lambda: scripted.cube_pose_for_seed(-1),
        lambda: scripted.cube_pose_for_seed(2**32),
        lambda: scripted.record_transfer_cube([0.1, 0.5]),
        lambda: scripted.record_transfer_cube([np.nan, 0.5, 0.05, 1, 0, 0, 0]),
        lambda: scripted.scripted_transfer_cube(0, episode_len=100),
        lambda: scripted.SuccessfulDemonstrations(max_tries=0),
        lambda: scripted.replay_in_joint_env(
            scripted.ScriptedEpisode(0, scripted.cube_pose_for_seed(0), np.zeros((5, 13)), True)
        ),
        lambda: scripted.replay_in_joint_env(
            scripted.ScriptedEpisode(0, scripted.cube_pose_for_seed(0), np.zeros((5, 14)), True),
            render_camera="nope",
        ),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(call):
    with pytest.raises(ValueError):
        call()


def test_non_integer_seed_is_refused():
    with pytest.raises(TypeError):
        scripted.cube_pose_for_seed(1.5)


@pytest.mark.slow
def test_gym_env_reset_with_the_seed_replays_identically(episodes):
    """sim_node-style use: gym-aloha's own env reset with the seed gets the same cube and, fed the
    same actions, the same joints (its observation renders three cameras: a few steps only)."""
    from gym_aloha.env import AlohaEnv

    seed, steps = SEEDS[0], 8
    short = dataclasses.replace(episodes[seed], joint_actions=episodes[seed].joint_actions[:steps])
    replay = scripted.replay_in_joint_env(short)
    env = AlohaEnv("transfer_cube", obs_type="pixels_agent_pos")
    observation, _ = env.reset(seed=seed)
    np.testing.assert_array_equal(
        env._env.physics.named.data.qpos[scripted.CUBE_JOINT], scripted.cube_pose_for_seed(seed)
    )
    for action, expected in zip(short.joint_actions, replay.observations):
        np.testing.assert_array_equal(observation["agent_pos"], expected)
        observation, *_ = env.step(action)


def test_main_prints_the_success_rate_as_json(capsys):
    assert scripted.main(["--episodes", "1", "--start-seed", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["start_seed"] == 4 and report["tried"] == 1
    assert report["succeeded"] == 1 and report["failed_seeds"] == []


def test_main_refuses_an_empty_range():
    with pytest.raises(SystemExit):
        scripted.main(["--episodes", "0"])
