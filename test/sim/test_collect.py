"""`vla-ros collect-sim`: scripted demonstrations rendered by AlohaSim into a LeRobot v3 dataset,
then the acceptance chain collect -> train -> checkpoint -> PolicyRuntime."""

import json

import numpy as np
import pytest

from vla_ros.data.lerobot import LeRobotDataset
from vla_ros.policy import finetune
from vla_ros.policy.runtime import PolicyRuntime
from vla_ros.robot.profile import load_profile
from vla_ros.sim import collect
from vla_ros.sim.aloha_sim import AlohaSim
from vla_ros.sim.behaviours import INSTRUCTIONS
from vla_ros.sim.scripted import EPISODE_LEN, scripted_transfer_cube

HEIGHT, WIDTH = 48, 64
PROFILE = load_profile("aloha_sim")


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """Two successful episodes at 48x64 and the command's exit code."""
    root = tmp_path_factory.mktemp("collect") / "ds"
    code = collect.main(["--episodes", "2", "--output", str(root), "--image-size", f"{HEIGHT}x{WIDTH}"])
    return root, code


@pytest.mark.slow
def test_collects_successful_episodes_in_the_recorder_format(collected):
    root, code = collected
    assert code == 0
    dataset = LeRobotDataset(root, profile=PROFILE)
    dataset.validate(decode_videos=True)
    assert dataset.num_episodes == 2 and dataset.cameras == ["cam_high"]
    assert dataset.fps == PROFILE.control_rate_hz
    first = dataset.episode(0)
    assert len(first) == EPISODE_LEN and first.task == collect.TASK_TEXT["transfer_cube"]
    frames = dataset.video_frames(0, "cam_high")
    assert frames.shape == (EPISODE_LEN, HEIGHT, WIDTH, 3)

    # episode 0 is the first kept seed: its actions are the scripted commands and its states and
    # frames are what AlohaSim shows for that seed before each command
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["robot_type"] == PROFILE.name
    seed = 0
    scripted = scripted_transfer_cube(seed)
    np.testing.assert_allclose(first.action, scripted.joint_actions, atol=1e-6)
    sim = AlohaSim("transfer_cube", cameras=("top",), image_width=WIDTH, image_height=HEIGHT)
    observation = sim.reset(seed)
    np.testing.assert_allclose(first.state[0], observation["qpos"], atol=1e-6)
    for action in scripted.joint_actions[:5]:
        observation, _, _ = sim.step(action)
    np.testing.assert_allclose(first.state[5], observation["qpos"], atol=1e-6)
    # lossy video: the decoded frame is close to, not equal to, the rendered one
    difference = np.abs(frames[5].astype(int) - observation["images"]["top"].astype(int)).mean()
    assert difference < 6


@pytest.mark.slow
def test_collected_data_trains_a_policy_the_runtime_loads(collected, tmp_path):
    root, code = collected
    assert code == 0
    out = tmp_path / "run"
    assert finetune.main(["--dataset", str(root), "--output", str(out), "--steps", "2", "--batch-size", "4",
                          "--threads", "1", "--quiet"]) == 0
    runtime = PolicyRuntime(out / "policy", profile=PROFILE)
    # the frame size it learned from, for a simulator to render at (vla_ros.ros.episodes.image_size_for)
    assert runtime.policy.config.extra["training"]["camera_image_sizes"] == {"cam_high": [HEIGHT, WIDTH]}
    runtime.set_instruction(collect.TASK_TEXT["transfer_cube"])
    sim = AlohaSim("transfer_cube", cameras=("top",), image_width=WIDTH, image_height=HEIGHT)
    observation = sim.reset(3)
    chunk = runtime.predict({"cam_high": observation["images"]["top"]}, observation["qpos"])
    assert chunk.shape == (10, 14) and np.isfinite(chunk).all()


def fake_episode(seed, length, behaviour="transfer"):
    return type("Episode", (), {"seed": seed, "joint_actions": [None], "behaviour": behaviour})()


def test_behaviours_take_turns_and_label_their_episodes_with_their_instruction(tmp_path, capsys, monkeypatch):
    attempts = []

    def fails_seed_2(sim, episode, writer, cameras):
        attempts.append((episode.seed, episode.behaviour))
        writer.add_frame(np.zeros(14), np.zeros(14), {"cam_high": np.zeros((16, 16, 3), np.uint8)})
        return episode.seed != 2

    monkeypatch.setattr(collect, "record_in_sim", fails_seed_2)
    monkeypatch.setattr(collect, "scripted_transfer_cube", fake_episode)
    code = collect.main(["--episodes", "2", "--behaviours", "transfer,lift_place", "--output", str(tmp_path / "ds"),
                         "--image-size", "16x16"])
    result = json.loads(capsys.readouterr().out)
    # lift_place is full after seed 3, so seed 4 (transfer's turn anyway) and no more are tried
    assert code == 0 and attempts == [(0, "transfer"), (1, "lift_place"), (2, "transfer"), (3, "lift_place"),
                                      (4, "transfer")]
    assert result["kept_seeds_by_behaviour"] == {"transfer": [0, 4], "lift_place": [1, 3]}
    assert result["instructions"] == {name: INSTRUCTIONS[name] for name in ("transfer", "lift_place")}
    dataset = LeRobotDataset(tmp_path / "ds")
    assert [dataset.episode(i).task for i in range(4)] == [INSTRUCTIONS[name] for name in
                                                          ("transfer", "lift_place", "lift_place", "transfer")]


@pytest.mark.parametrize("text", ["transfer,transfer", "juggle", ","])
def test_unknown_or_repeated_behaviours_are_refused(tmp_path, capsys, text):
    assert collect.main(["--episodes", "1", "--behaviours", text, "--output", str(tmp_path / "ds")]) == 1
    assert "behaviours must be distinct names" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()


def test_reports_kept_of_tried_and_fails_when_too_few_succeed(tmp_path, capsys, monkeypatch):
    attempts = []

    def fails_odd_seeds(sim, episode, writer, cameras):
        attempts.append(episode.seed)
        writer.add_frame(np.zeros(14), np.zeros(14), {"cam_high": np.zeros((16, 16, 3), np.uint8)})
        return episode.seed % 2 == 0

    monkeypatch.setattr(collect, "record_in_sim", fails_odd_seeds)
    monkeypatch.setattr(collect, "scripted_transfer_cube", fake_episode)
    code = collect.main(["--episodes", "2", "--output", str(tmp_path / "ds"), "--image-size", "16x16",
                         "--start-seed", "3", "--max-tries", "3"])
    result = json.loads(capsys.readouterr().out)
    assert code == 1 and attempts == [3, 4, 5]
    assert (result["tried"], result["kept"], result["kept_seeds"], result["failed_seeds"]) == (3, 1, [4], [3, 5])
    assert LeRobotDataset(tmp_path / "ds").num_episodes == 1

    assert collect.main(["--episodes", "1", "--output", str(tmp_path / "ds")]) == 1  # not empty
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["48", "47x64", "axb", "8x8"])
def test_bad_image_sizes_are_refused(tmp_path, capsys, size):
    assert collect.main(["--episodes", "1", "--output", str(tmp_path / "ds"), "--image-size", size]) == 1
    assert "image size" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()
