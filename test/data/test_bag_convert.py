"""`vla-ros convert`: synthetic ALOHA bags -> LeRobotDataset v3 -> read back. Joint names in any
order land in profile order, grippers go through the right maps, episodes split on a marker topic
or on time gaps, stale inputs skip frames (counted), and bad input fails with a clear message."""

import json

import numpy as np
import pytest
from bagfactory import (EPISODE_TOPIC, BagSpec, build_aloha_bag, camera_image, follower_vector, leader_vector,
                        write_test_profile)

from vla_ros.data.convert import main
from vla_ros.data.lerobot import LeRobotDataset
from vla_ros.robot.profile import load_profile


@pytest.fixture
def profile_path(tmp_path):
    return write_test_profile(tmp_path)


def run_convert(capsys, bag, dataset, profile_path, *extra):
    code = main([str(bag), "--output", str(dataset), "--profile", str(profile_path), *extra])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


@pytest.mark.parametrize("storage,jpeg,distro", [("sqlite3", False, "humble"), ("mcap", True, "jazzy")])
def test_round_trip_whole_bag(tmp_path, capsys, profile_path, storage, jpeg, distro):
    profile = load_profile(profile_path)
    spec = BagSpec(storage=storage, jpeg=jpeg, seconds=1.0, distro=distro)
    facts = build_aloha_bag(tmp_path / "bag", profile, spec)
    code, report, err = run_convert(capsys, facts.path, tmp_path / "ds", profile_path, "--task", "fold the towel")
    assert code == 0, err
    assert report["episodes"] == 1 and report["frames_skipped"] == 0 and report["input_errors"] == {}
    dataset = LeRobotDataset(tmp_path / "ds", profile=profile)
    dataset.validate(decode_videos=True)
    assert dataset.num_frames == report["frames_written"] == 50
    episode = dataset.episode(0)
    assert episode.task == "fold the towel"
    # frame i is sampled at the bag's start + i / fps and holds the newest message received by then
    times = np.arange(len(episode)) / 50.0
    expected_state = np.stack([follower_vector(profile, t) for t in times])
    expected_action = np.stack([leader_vector(profile, t) for t in times])
    np.testing.assert_allclose(episode.state, expected_state, atol=1e-5)
    np.testing.assert_allclose(episode.action, expected_action, atol=1e-5)
    frames = dataset.video_frames(0, "cam_left_wrist")
    for i in (0, 1, 25):
        newest_camera_time = np.floor(times[i] * 25.0) / 25.0  # cameras run at 25 Hz
        expected = camera_image(1, 64, 48, newest_camera_time).astype(int)
        assert np.abs(frames[i].astype(int) - expected).mean() < 6.0  # h264 (and jpeg) are lossy


@pytest.mark.parametrize("marker", ["bool", "string"])
def test_episodes_from_marker_topic(tmp_path, capsys, profile_path, marker):
    spec = BagSpec(storage="mcap", episodes=[(0.0, 0.6), (1.0, 1.4)], episode_marker=marker)
    facts = build_aloha_bag(tmp_path / "bag", profile_path, spec)
    code, report, err = run_convert(capsys, facts.path, tmp_path / "ds", profile_path,
                                    "--episode-topic", EPISODE_TOPIC, "--task", "default task")
    assert code == 0, err
    assert report["episodes"] == 2 and report["frames_skipped"] == 0
    assert report["frames_per_episode"] == [30, 20]
    dataset = LeRobotDataset(tmp_path / "ds")
    tasks = [dataset.episode(i).task for i in range(2)]
    assert tasks == (["default task"] * 2 if marker == "bool" else ["task 0", "task 1"])
    profile = load_profile(profile_path)
    np.testing.assert_allclose(dataset.episode(1).state[0], follower_vector(profile, 1.0), atol=1e-5)


def test_episodes_from_time_gaps_and_stale_camera_skips(tmp_path, capsys, profile_path):
    spec = BagSpec(episodes=[(0.0, 0.8), (2.0, 2.6)], camera_gap=("cam_high", 0.4, 0.6))
    facts = build_aloha_bag(tmp_path / "bag", profile_path, spec)
    code, report, err = run_convert(capsys, facts.path, tmp_path / "ds", profile_path, "--gap", "0.5")
    assert code == 0, err
    assert report["episodes"] == 2
    # the last cam_high frame before the gap is stamped 0.36 s: ticks 0.48 .. 0.60 s are older
    # than the 0.1 s tolerance (0.60 s too: that frame is received 2 ms after its stamp)
    assert report["skipped_by_input"] == {"camera:cam_high": 7}
    assert report["frames_per_episode"] == [40 - 7, 30]
    dataset = LeRobotDataset(tmp_path / "ds")
    assert dataset.num_episodes == 2
    # the skipped ticks stay visible: frames keep their tick's time, leaving a 7-frame gap
    dataset.validate(decode_videos=True)
    slots = np.round(dataset.episode(0).timestamps * 50).astype(int)
    assert np.diff(slots).tolist().count(8) == 1 and set(np.diff(slots).tolist()) == {1, 8}
    assert report["missing_frames"] == 7


def test_without_gap_option_a_gap_stays_one_episode(tmp_path, capsys, profile_path):
    facts = build_aloha_bag(tmp_path / "bag", profile_path, BagSpec(episodes=[(0.0, 0.4), (1.0, 1.4)]))
    code, report, err = run_convert(capsys, facts.path, tmp_path / "ds", profile_path)
    assert code == 0, err
    assert report["episodes"] == 1 and report["frames_skipped"] > 0


def test_missing_leader_topics_is_a_clear_error(tmp_path, capsys, profile_path):
    facts = build_aloha_bag(tmp_path / "bag", profile_path, BagSpec(seconds=0.2, leaders=False))
    code, _, err = run_convert(capsys, facts.path, tmp_path / "ds", profile_path)
    assert code == 1
    assert "leader joint states of arm 'left' (/leader_left/joint_states)" in err
    assert "Traceback" not in err


def test_missing_camera_and_bad_episode_topic(tmp_path, capsys, profile_path):
    facts = build_aloha_bag(tmp_path / "bag", "aloha_sim", BagSpec(seconds=0.2))  # only cam_high
    code, _, err = run_convert(capsys, facts.path, tmp_path / "ds", profile_path)
    assert code == 1 and "camera 'cam_left_wrist'" in err
    facts = build_aloha_bag(tmp_path / "bag2", profile_path, BagSpec(seconds=0.2))
    code, _, err = run_convert(capsys, facts.path, tmp_path / "ds2", profile_path,
                               "--episode-topic", "/follower_left/joint_states")
    assert code == 1 and "expected one of" in err
    code, _, err = run_convert(capsys, facts.path, tmp_path / "ds3", profile_path, "--episode-topic", "/nope")
    assert code == 1 and "['/nope'] not in bag" in err


def test_wrong_image_size_and_truncated_bag(tmp_path, capsys, profile_path):
    (tmp_path / "small").mkdir()
    small = write_test_profile(tmp_path / "small", width=32, height=24)
    facts = build_aloha_bag(tmp_path / "bag", small, BagSpec(seconds=0.2))
    code, _, err = run_convert(capsys, facts.path, tmp_path / "ds", profile_path)
    assert code == 1 and "no frames written" in err and "expected 48x64 RGB" in err
    (db,) = facts.path.glob("*.db3")
    db.write_bytes(db.read_bytes()[:3000])
    code, _, err = run_convert(capsys, facts.path, tmp_path / "ds2", profile_path)
    assert code == 1 and "truncated" in err


def test_gap_and_episode_topic_are_exclusive(tmp_path, profile_path):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--output", str(tmp_path / "ds"), "--profile", str(profile_path),
              "--gap", "1", "--episode-topic", "/e"])
    assert exit_info.value.code == 2


def test_gripper_outside_unit_range_is_clipped_and_counted_or_refused(tmp_path, capsys, profile_path):
    """Converting with gripper maps that do not fit the recording puts grippers below 0."""
    facts = build_aloha_bag(tmp_path / "bag", profile_path, BagSpec(seconds=0.3))
    tight = tmp_path / "tight.yaml"
    tight.write_text(f"extends: {profile_path}\nname: aloha_tight\ngrippers:\n"
                     "  follower_finger: {open: 0.05800, close: 0.04500}\n"
                     "  follower_joint: {open: 1.4910, close: -0.6213}\n"
                     "  leader_finger: {open: 0.02417, close: 0.01244}\n"
                     "  leader_joint: {open: 0.3083, close: -0.6842}\n")
    code, report, err = run_convert(capsys, facts.path, tmp_path / "ds", tight)
    assert code == 0, err
    states = LeRobotDataset(tmp_path / "ds").episode(0).state[:, list(load_profile(tight).gripper_indices)]
    assert states.min() == 0.0 and states.max() <= 1.0
    assert report["grippers_clipped"] == int(np.sum(states == 0.0)) > 0
    code, _, err = run_convert(capsys, facts.path, tmp_path / "ds2", tight, "--gripper-out-of-range", "refuse")
    assert code == 1 and "outside [0, 1]" in err and "Traceback" not in err
