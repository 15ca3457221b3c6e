"""`vla-ros sim-eval` end to end: sim_node and policy_node as processes, a tiny random policy.

A random policy is not expected to succeed; the test checks that the report is complete and
consistent (both step counts, success fields, a valid 95% interval, commands actually reached
the robot, the instruction given against the behaviour completed) and that the first episode's
video is written. Two instructions take turns in one session: policy_node, never restarted, must
report each episode's instruction as the one in use.
"""

from __future__ import annotations

import json
import math
import os

import pytest

from vla_ros.policy.checkpoint import build_random_policy, save_checkpoint
from vla_ros.robot.profile import load_profile
from vla_ros.ros import sim_eval
from vla_ros.ros.episodes import image_size_for

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(300)]

EPISODE_STEPS = 60


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim_eval")
    return str(save_checkpoint(build_random_policy("tiny", load_profile("aloha_sim"), seed=0), root / "tiny"))


INSTRUCTIONS = ["transfer the cube to the left arm", "lift the cube with the right arm and put it back down"]


def test_sim_eval_reports_both_step_counts_and_writes_the_video(checkpoint, tmp_path, ros_domain, capsys):
    report_path, video_dir = tmp_path / "report.json", tmp_path / "videos"
    code = sim_eval.main(["--checkpoint", checkpoint, "--episodes", "1", "--videos", "2", "--steps", "1,2",
                          "--instruction", INSTRUCTIONS[0], "--instruction", INSTRUCTIONS[1],
                          "--episode-steps", str(EPISODE_STEPS), "--image-size", "48x64",
                          "--policy-param", "noise_correlation:=3.0",
                          "--profile", "aloha_sim", "--report", str(report_path), "--video-dir", str(video_dir)])
    assert code == 0, capsys.readouterr().err
    assert os.environ["ROS_DOMAIN_ID"] == str(ros_domain), "the session leaked its ROS domain into this process"
    out = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["image_size"] == [48, 64] and report["instructions"] == INSTRUCTIONS
    assert report["policy_params"] == {"noise_correlation": "3.0"} and report["lockstep"] and report["clock"] == "sim"
    assert set(report["by_steps"]) == {"1", "2"}
    for steps, summary in report["by_steps"].items():
        assert summary["episodes"] == 2
        assert summary["successes"] in (0, 1, 2)
        assert summary["success_rate"] == summary["successes"] / 2
        low, high = summary["success_rate_95ci"]
        assert 0.0 <= low <= summary["success_rate"] <= high <= 1.0
        assert len(summary["commands_published_per_episode"]) == 2
        assert min(summary["commands_published_per_episode"]) > 0, f"steps={steps}: no command reached the robot"
        assert math.isfinite(summary["inference_ms_p50"]) and summary["inference_ms_p50"] > 0
        assert [e["seed"] for e in summary["per_episode"]] == [1001, 1002], "both step counts face the same cubes"
        # the instructions took turns, switched live: the node reported each one in use
        assert [e["instruction"] for e in summary["per_episode"]] == INSTRUCTIONS
        assert [e["policy_instruction"] for e in summary["per_episode"]] == INSTRUCTIONS
        assert list(summary["confusion"]) == INSTRUCTIONS
        for instruction, row in summary["confusion"].items():
            assert row["episodes"] == 1
            assert sum(row[column]["count"] for column in ("transfer", "lift_place", "none")) == 1
        for episode in summary["per_episode"]:
            assert set(episode["completed"]) == {"transfer", "lift_place"}
            assert episode["behaviour"] in ("transfer", "lift_place", "none")
        assert f"steps={steps}: instruction given (rows)" in out
        for episode in summary["per_episode"]:
            assert episode["steps"] >= EPISODE_STEPS
            assert isinstance(episode["success"], bool)
            video = video_dir / f"steps{steps}_episode{episode['episode']}.mp4"
            assert video.is_file() and video.stat().st_size > 0, f"no video of {video.name}"


def test_simulation_renders_at_the_size_the_checkpoint_was_trained_on(tmp_path):
    profile = load_profile("aloha_sim")
    policy = build_random_policy("tiny", profile, seed=0)
    policy.config.extra["training"] = {"camera_image_sizes": {"cam_high": [96, 128]}}
    trained = save_checkpoint(policy, tmp_path / "trained")
    assert image_size_for(trained, profile) == (96, 128)
    policy.config.extra = {}  # not trained by `vla-ros train`
    untrained = save_checkpoint(policy, tmp_path / "untrained")
    assert image_size_for(untrained, profile) == (profile.cameras[0].height, profile.cameras[0].width)
    assert image_size_for(tmp_path / "missing", profile) == (480, 640)


def test_sim_eval_rejects_a_directory_without_a_checkpoint(tmp_path):
    assert sim_eval.main(["--checkpoint", str(tmp_path), "--report", str(tmp_path / "r.json")]) == 2


@pytest.mark.parametrize("size", ["48by64", "47x64", "8x8"])
def test_bad_image_size_is_a_usage_error(tmp_path, capsys, size):
    with pytest.raises(SystemExit) as exit_info:
        sim_eval.main(["--checkpoint", str(tmp_path), "--report", str(tmp_path / "r.json"), "--image-size", size])
    assert exit_info.value.code == 2
    assert "image size" in capsys.readouterr().err


def test_negative_video_count_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sim_eval.main(["--checkpoint", str(tmp_path), "--report", str(tmp_path / "r.json"), "--videos", "-1"])
    assert exit_info.value.code == 2
    assert "--videos" in capsys.readouterr().err


@pytest.mark.parametrize("param, message", [("noise_correlation=3", "NAME:=VALUE"),
                                            ("no_such_parameter:=1", "policy_node has no such parameter"),
                                            ("checkpoint:=/elsewhere", "sim-eval sets it itself")])
def test_bad_policy_param_is_a_usage_error(tmp_path, capsys, param, message):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit):
        sim_eval.main(["--checkpoint", str(tmp_path), "--report", str(tmp_path / "r.json"), "--policy-param", param])
    assert message in capsys.readouterr().err
