"""`vla-ros rollout`: in-process closed-loop episodes and the smoothness/intervention figures."""

import json

import numpy as np
import pytest

from vla_ros.policy import rollout
from vla_ros.policy.checkpoint import build_random_policy, save_checkpoint
from vla_ros.robot.profile import load_profile
from vla_ros.sim.scripted import scripted_transfer_cube


def test_roughness_counts_the_arm_joints_only():
    values = np.zeros((4, 14))
    values[:, 0] = [0.0, 0.1, 0.3, 0.6]  # left waist: steps 0.1, 0.2, 0.3; second differences 0.1, 0.1
    values[:, 6] = [0.0, 1.0, 0.0, 1.0]  # left gripper: ignored
    assert rollout.roughness(values) == pytest.approx(0.2 / 12)
    assert rollout.roughness(values, 2) == pytest.approx(0.1 / 12)
    assert np.isnan(rollout.roughness(values[:1]))


def test_wilson_interval_matches_the_documented_one():
    assert rollout.wilson_interval(41, 50) == pytest.approx([0.692, 0.902], abs=0.001)  # 69-90%
    assert rollout.wilson_interval(0, 0) == [0.0, 1.0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    policy = build_random_policy("tiny", load_profile("aloha_sim"), ("cam_high",), seed=5)
    return save_checkpoint(policy, tmp_path_factory.mktemp("rollout") / "ckpt")


def test_a_short_rollout_reports_success_roughness_and_interventions(checkpoint, tmp_path, capsys):
    path = tmp_path / "rollout.json"
    code = rollout.main(["--checkpoint", str(checkpoint), "--episodes", "2", "--max-ticks", "12",
                         "--noise-correlation", "3", "--noise-per-episode", "--report", str(path)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads(path.read_text())
    assert printed["successes"] == report["summary"]["successes"] == 0  # a random policy
    assert (report["noise_correlation"], report["noise_per_episode"], report["replan_ticks"]) == (3.0, True, 5)
    episode = report["per_episode"][0]
    assert episode["seed"] == 1001 and episode["ticks"] == 12 and episode["ended"] == "time"
    # One controller serves every episode, as in the node; the clock goes on, so the second
    # episode's first chunk is not taken for an old one (which held the arms for 0.1 s).
    assert [e["interventions_ticks"]["hold"] for e in report["per_episode"]] == [0, 0]
    for key in ("chunk_roughness", "target_roughness", "command_roughness"):
        assert np.isfinite(episode[key]) and episode[key] >= 0
    # Interventions are counted once per tick, whatever the number of joints they cut.
    assert all(0 <= count <= 12 for count in episode["interventions_ticks"].values())
    assert 0 <= report["summary"]["interventions_per_tick"]["cap_acceleration"] <= 1
    demo = episode["demonstration"]
    plan = scripted_transfer_cube(1001).joint_actions
    assert demo["success_tick"] is not None  # the scripted plan succeeds on its own
    assert demo["roughness"] == pytest.approx(rollout.roughness(plan[:demo["success_tick"]]))
    summary = report["summary"]
    assert summary["roughness_to_demonstrations"]["chunk_roughness"] == pytest.approx(
        summary["roughness"]["chunk_roughness"] / summary["demonstrations"]["roughness"])


def test_bad_arguments_get_one_line(checkpoint, capsys):
    assert rollout.main(["--checkpoint", str(checkpoint), "--episodes", "0"]) == 1
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert rollout.main(["--checkpoint", str(checkpoint), "--noise-scale", "-1", "--max-ticks", "1"]) == 1
    assert "noise scale" in capsys.readouterr().err


@pytest.mark.parametrize("latency_ticks", [0, 3])
def test_latency_ticks_delay_each_chunk_to_the_controller(latency_ticks):
    """A chunk observed at tick k reaches the controller at tick k + latency_ticks: before the first
    one arrives the controller has nothing to follow and holds."""
    from vla_ros.control.controller import Controller, ControllerConfig
    from vla_ros.sim.aloha_sim import AlohaSim

    profile = load_profile("aloha_sim")
    controller = Controller(profile, ControllerConfig(soft_start_time=0.2))
    episode = rollout.drive(controller, AlohaSim("transfer_cube", cameras=()), 1001,
                            lambda tick, observation, now: np.tile(observation["qpos"], (20, 1)), replan_ticks=5,
                            max_ticks=10, latency_ticks=latency_ticks)
    assert episode["interventions_ticks"]["hold"] == latency_ticks
    with pytest.raises(ValueError, match="latency-ticks"):
        rollout.rollout("unused", latency_ticks=-1)


def test_each_behaviour_is_scored_by_its_own_detector():
    """A perfect imitation of one instruction's plan succeeds under that instruction and, under the
    other, ends as the behaviour it completed: a failure, counted as that behaviour."""
    from vla_ros.control.controller import Controller, ControllerConfig
    from vla_ros.sim.aloha_sim import AlohaSim

    profile = load_profile("aloha_sim")
    controller = Controller(profile, ControllerConfig())
    sim = AlohaSim("transfer_cube", cameras=())
    lift = rollout.demonstration(1001, sim, controller, 5, 20, behaviour="lift_place")
    assert lift["success_tick"] is not None and lift["through_controller"]["success"]
    plan = scripted_transfer_cube(1001).joint_actions
    asked_to_lift = rollout.drive(controller, sim, 1001, lambda tick, *_: plan[tick:tick + 20], 5, len(plan),
                                  behaviour="lift_place")
    assert not asked_to_lift["success"]
    assert asked_to_lift["behaviour_completed"] == asked_to_lift["ended"] == "transfer"
    summary = rollout.summarize([asked_to_lift], [])
    assert summary["successes"] == 0
    assert summary["behaviours_completed"] == {"transfer": 1, "lift_place": 0, "none": 0}
    with pytest.raises(ValueError, match="unknown behaviour"):
        rollout.rollout("unused", behaviour="wave")


def test_run_out_goes_on_after_completion_and_counts_those_ticks_apart():
    """With run_out an episode runs all its ticks, as sim-eval's do; it still counts as the behaviour
    it completed first, at the tick it would have ended without run_out."""
    from vla_ros.control.controller import Controller, ControllerConfig
    from vla_ros.sim.aloha_sim import AlohaSim

    profile = load_profile("aloha_sim")
    controller = Controller(profile, ControllerConfig(soft_start_time=0.2))
    sim = AlohaSim("transfer_cube", cameras=())
    plan = scripted_transfer_cube(1001).joint_actions
    follow = lambda tick, *_: plan[tick:tick + 20]  # noqa: E731
    ended = rollout.drive(controller, sim, 1001, follow, 5, len(plan))
    ran_out = rollout.drive(controller, sim, 1001, follow, 5, len(plan), run_out=True)
    assert ended["success"] and ran_out["success"] and ran_out["behaviour_completed"] == "transfer"
    assert ended["ticks"] == ended["completed_tick"] == ran_out["completed_tick"] < ran_out["ticks"] == len(plan)
    assert ended["ticks_after_completion"] == 0
    assert ran_out["ticks_after_completion"] == len(plan) - ran_out["completed_tick"]
    for kind, count in ran_out["interventions_ticks_after_completion"].items():
        assert count <= ran_out["interventions_ticks"][kind]
    # the plan holds still once the cube is handed over: nothing left to cap
    assert ran_out["interventions_ticks_after_completion"]["cap_acceleration"] == 0
    summary = rollout.summarize([ran_out], [])
    assert summary["ticks_after_completion"] == ran_out["ticks_after_completion"]
    assert set(summary["interventions_per_tick_after_completion"]) == set(ran_out["interventions_ticks"])
