"""LeRobotDataset v3.0 writer/reader: round trip frame by frame, v3 layout, append, crash safety,
and clear errors for bad datasets."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vla_ros.data import lerobot
from vla_ros.data.lerobot import DatasetError, LeRobotDataset, LeRobotWriter
from vla_ros.robot.profile import load_profile

FPS = 50
CAMERAS = {"cam_high": (32, 48), "cam_left_wrist": (24, 32)}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def profile():
    return load_profile("aloha_sim")


def image(cam: str, episode: int, frame: int) -> np.ndarray:
    """Smooth image whose brightness encodes (episode, frame): a lossy codec keeps it close, and
    a frame taken from the wrong position is off by >= 6 levels everywhere."""
    h, w = CAMERAS[cam]
    y, x = np.mgrid[0:h, 0:w]
    base = 40 + 2 * x + y + 6 * frame + 50 * episode
    return np.repeat(np.clip(base, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def state(episode: int, frame: int) -> np.ndarray:
    return (np.arange(14) * 0.01 + frame * 0.1 + episode).astype(np.float32)


def write_episode(writer: LeRobotWriter, episode: int, length: int, task: str):
    writer.start_episode(task)
    for i in range(length):
        writer.add_frame(state(episode, i), -state(episode, i), {c: image(c, episode, i) for c in CAMERAS},
                         timestamp=10.0 + i / FPS)
    return writer.save_episode()


def make_writer(root, profile, **kwargs) -> LeRobotWriter:
    return LeRobotWriter(root, FPS, "aloha", profile.vector_names, profile.vector_names, CAMERAS, **kwargs)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory, profile):
    root = tmp_path_factory.mktemp("lerobot") / "ds"
    with make_writer(root, profile) as writer:
        futures = [write_episode(writer, 0, 12, "pick the cube"), write_episode(writer, 1, 9, "hand over")]
        results = [f.result() for f in futures]
    assert [r.episode_index for r in results] == [0, 1]
    return root


def test_round_trip_frame_by_frame(dataset_root, profile):
    ds = LeRobotDataset(dataset_root, profile=profile)
    assert ds.num_episodes == 2 and ds.num_frames == 21
    ds.validate(decode_videos=True)
    for ep_index, length, task in [(0, 12, "pick the cube"), (1, 9, "hand over")]:
        ep = ds.episode(ep_index)
        assert len(ep) == length and ep.task == task
        np.testing.assert_allclose(np.diff(ep.timestamps), 1.0 / FPS, atol=1e-6)
        assert ep.timestamps[0] == 0.0
        frames = list(ds.iter_frames(ep_index))
        assert len(frames) == length
        for i, frame in enumerate(frames):
            np.testing.assert_array_equal(frame.state, state(ep_index, i))
            np.testing.assert_array_equal(frame.action, -state(ep_index, i))
            assert frame.frame_index == i
            for cam in CAMERAS:
                assert frame.images[cam].shape == (*CAMERAS[cam], 3)
                error = np.abs(frame.images[cam].astype(int) - image(cam, ep_index, i)).mean()
                assert error < 2.5, (ep_index, i, cam, error)
        for cam in CAMERAS:
            assert len(ds.video_frames(ep_index, cam)) == length
            assert lerobot.count_video_frames(ds.video_path(ep_index, cam)[0]) == length


def test_random_access_matches_sequential(dataset_root):
    ds = LeRobotDataset(dataset_root)
    frame = ds[12 + 5]  # episode 1, frame 5
    assert (frame.episode_index, frame.frame_index, frame.index) == (1, 5, 17)
    np.testing.assert_array_equal(frame.state, state(1, 5))
    assert np.abs(frame.images["cam_high"].astype(int) - image("cam_high", 1, 5)).mean() < 2.5
    with pytest.raises(IndexError):
        ds[21]


def test_v3_layout_and_metadata(dataset_root):
    info = json.loads((dataset_root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    for key in ("robot_type", "fps", "total_episodes", "total_frames", "total_tasks", "chunks_size",
                "data_files_size_in_mb", "video_files_size_in_mb", "splits", "data_path", "video_path", "features"):
        assert key in info, key
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (2, 21, 2)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    cam = info["features"]["observation.images.cam_high"]
    assert cam["dtype"] == "video" and cam["shape"] == [32, 48, 3] and cam["names"] == ["height", "width", "channels"]
    assert cam["info"]["video.pix_fmt"] == "yuv420p" and cam["info"]["video.fps"] == FPS
    assert info["features"]["observation.state"]["shape"] == [14]
    for name in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert info["features"][name]["shape"] == [1]

    data = pq.read_table(dataset_root / "data/chunk-000/file-001.parquet")
    assert set(data.column_names) == {"timestamp", "frame_index", "episode_index", "index", "task_index",
                                      "observation.state", "action"}
    assert data.column("index").to_pylist() == list(range(12, 21))
    state_type = data.schema.field("observation.state").type
    assert (state_type.list_size, str(state_type.value_type)) == (14, "float")

    episodes = pq.read_table(dataset_root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(e["dataset_from_index"], e["dataset_to_index"], e["length"]) for e in episodes] == [(0, 12, 12), (12, 21, 9)]
    assert episodes[1]["tasks"] == ["hand over"]
    key = "videos/observation.images.cam_high"
    assert (episodes[1][f"{key}/from_timestamp"], episodes[1][f"{key}/to_timestamp"]) == (0.0, 9 / FPS)
    assert episodes[1]["stats/observation.state/count"] == [9]
    assert np.asarray(episodes[1]["stats/observation.images.cam_high/mean"]).shape == (3, 1, 1)

    tasks = pq.read_table(dataset_root / "meta/tasks.parquet")  # as pandas writes an unnamed index
    assert tasks.column("__index_level_0__").to_pylist() == ["pick the cube", "hand over"]
    assert tasks.column("task_index").to_pylist() == [0, 1]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["__index_level_0__"]

    stats = json.loads((dataset_root / "meta/stats.json").read_text())
    for feature in ("observation.state", "action", "observation.images.cam_high", "timestamp"):
        assert list(stats[feature]) == ["min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"]
    all_states = np.concatenate([[state(0, i) for i in range(12)], [state(1, i) for i in range(9)]])
    np.testing.assert_allclose(stats["observation.state"]["mean"], all_states.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["observation.state"]["std"], all_states.std(0), rtol=1e-4)
    assert stats["observation.state"]["count"] == [21]


def test_reopen_appends_after_last_episode(tmp_path, profile):
    root = tmp_path / "ds"
    with make_writer(root, profile) as writer:
        write_episode(writer, 0, 5, "a").result()
    with make_writer(root, profile) as writer:
        assert writer.num_episodes == 1
        result = write_episode(writer, 1, 4, "b").result()
    assert result.episode_index == 1
    ds = LeRobotDataset(root)
    ds.validate()
    assert ds.num_frames == 9 and ds.tasks == ["a", "b"]
    assert list(ds.episode(1).global_index) == [5, 6, 7, 8]


def test_discard_and_empty_episode(tmp_path, profile):
    root = tmp_path / "ds"
    with make_writer(root, profile) as writer:
        writer.start_episode("x")
        with pytest.raises(ValueError, match="empty episode"):
            writer.save_episode()
        writer.add_frame(state(0, 0), state(0, 0), {c: image(c, 0, 0) for c in CAMERAS})
        writer.discard_episode()
        assert not any((root / ".staging").iterdir())
        write_episode(writer, 0, 3, "y").result()
    assert LeRobotDataset(root).num_episodes == 1


def test_bad_frames_rejected(tmp_path, profile):
    with make_writer(tmp_path / "ds", profile) as writer:
        writer.start_episode("x")
        images = {c: image(c, 0, 0) for c in CAMERAS}
        with pytest.raises(ValueError, match="state has 7"):
            writer.add_frame(np.zeros(7), np.zeros(14), images)
        with pytest.raises(ValueError, match="cam_high"):
            writer.add_frame(np.zeros(14), np.zeros(14), {**images, "cam_high": np.zeros((5, 5, 3), np.uint8)})
        with pytest.raises(ValueError, match="cameras"):
            writer.add_frame(np.zeros(14), np.zeros(14), {"cam_high": images["cam_high"]})
        writer.add_frame(np.zeros(14), np.zeros(14), images, timestamp=1.0)
        with pytest.raises(ValueError, match="does not increase"):
            writer.add_frame(np.zeros(14), np.zeros(14), images, timestamp=1.0)


def test_frame_count_mismatch_fails_save_loudly(tmp_path, profile, monkeypatch):
    root = tmp_path / "ds"
    with make_writer(root, profile) as writer:
        write_episode(writer, 0, 4, "ok").result()
        monkeypatch.setattr(lerobot, "count_video_frames", lambda path: 3)
        future = write_episode(writer, 1, 4, "bad")
        with pytest.raises(DatasetError, match="video has 3 frames .* 4 rows"):
            future.result()
        monkeypatch.undo()
        assert write_episode(writer, 1, 2, "ok again").result().episode_index == 1
    ds = LeRobotDataset(root)
    ds.validate()
    assert [len(ds.episode(i)) for i in range(ds.num_episodes)] == [4, 2]


def test_second_writer_and_feature_mismatch_refused(tmp_path, profile):
    root = tmp_path / "ds"
    with make_writer(root, profile) as writer:
        with pytest.raises(DatasetError, match="another writer"):
            make_writer(root, profile)
        write_episode(writer, 0, 2, "a").result()
    with pytest.raises(DatasetError, match="different features"):
        LeRobotWriter(root, FPS, "aloha", profile.vector_names, profile.vector_names, {"cam_high": (32, 48)})
    with pytest.raises(DatasetError, match="fps"):
        LeRobotWriter(root, 30, "aloha", profile.vector_names, profile.vector_names, CAMERAS)


CRASH_CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    sys.path.insert(0, {testdir!r})
    import test_lerobot as t
    from vla_ros.data import lerobot
    from vla_ros.robot.profile import load_profile
    mode = sys.argv[1]
    writer = t.make_writer(sys.argv[2], load_profile("aloha_sim"))
    t.write_episode(writer, 0, 6, "kept").result()
    if mode == "at_commit":
        real = lerobot._atomic_write_table
        def crash(path, table):
            if str(path).endswith("episodes/chunk-000/file-000.parquet"):
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, table)
        lerobot._atomic_write_table = crash
    print("saving", flush=True)
    t.write_episode(writer, 1, 40, "lost").result()
    print("saved", flush=True)
    signal.pause()
""")


@pytest.mark.parametrize("mode", ["at_commit", "while_saving"])
def test_kill_during_save_keeps_earlier_episodes(tmp_path, mode):
    root = tmp_path / "ds"
    script = tmp_path / "child.py"
    script.write_text(CRASH_CHILD.format(repo=str(REPO), testdir=str(Path(__file__).parent)))
    child = subprocess.Popen([sys.executable, str(script), mode, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "saving"
        if mode == "while_saving":
            os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    ds = LeRobotDataset(root)  # readable as left by the crash, before any repair
    assert ds.num_episodes >= 1
    ds.validate(decode_videos=True)
    assert len(ds.episode(0)) == 6 and ds.episode(0).task == "kept"
    if mode == "at_commit":
        assert ds.num_episodes == 1
        assert (root / "data/chunk-000/file-001.parquet").exists()  # an orphan of the interrupted save

    profile = load_profile("aloha_sim")
    with make_writer(root, profile) as writer:
        kept = writer.num_episodes
        assert not (root / "data/chunk-000/file-001.parquet").exists() or kept == 2
        write_episode(writer, 5, 3, "after crash").result()
    ds = LeRobotDataset(root)
    ds.validate(decode_videos=True)
    assert ds.num_episodes == kept + 1
    assert json.loads((root / "meta/info.json").read_text())["total_episodes"] == kept + 1
    assert ds.episode(kept).task == "after crash"


# -- bad datasets -------------------------------------------------------------------------------


@pytest.fixture
def copy_of(dataset_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(dataset_root, root)
    return root


def test_missing_dataset_or_info(tmp_path, copy_of):
    with pytest.raises(DatasetError, match="does not exist"):
        LeRobotDataset(tmp_path / "nowhere")
    (copy_of / "meta/info.json").unlink()
    with pytest.raises(DatasetError, match="info.json: missing"):
        LeRobotDataset(copy_of)


def test_missing_columns(copy_of):
    path = copy_of / "data/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).drop(["action"]), path)
    ds = LeRobotDataset(copy_of)
    with pytest.raises(DatasetError, match=r"file-000.parquet: missing columns \['action'\]"):
        ds.episode(0)
    episodes = copy_of / "meta/episodes/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(episodes).drop(["dataset_from_index"]), episodes)
    with pytest.raises(DatasetError, match="missing episode columns.*dataset_from_index"):
        LeRobotDataset(copy_of)


def test_profile_mismatch(tmp_path, profile):
    root = tmp_path / "ds"
    names = [f"j{i}" for i in range(7)]
    with LeRobotWriter(root, FPS, "one_arm", names, names, {"cam_high": (16, 16)}) as writer:
        writer.start_episode("x")
        writer.add_frame(np.zeros(7), np.zeros(7), {"cam_high": np.zeros((16, 16, 3), np.uint8)})
        writer.save_episode(block=True)
    with pytest.raises(DatasetError, match=r"shape \[7\] but profile 'aloha_sim' has a 14-dim"):
        LeRobotDataset(root, profile=profile)

    reordered = tmp_path / "reordered"
    names = list(profile.vector_names)
    names[0], names[1] = names[1], names[0]
    with LeRobotWriter(reordered, FPS, "aloha", names, names, CAMERAS) as writer:
        write_episode(writer, 0, 2, "x").result()
    with pytest.raises(DatasetError, match="joint order mismatch"):
        LeRobotDataset(reordered, profile=profile)


def test_empty_episode_in_metadata(copy_of):
    path = copy_of / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    lengths = table.column("length").to_pylist()
    lengths[1] = 0
    pq.write_table(table.set_column(table.column_names.index("length"), "length", pa.array(lengths)), path)
    with pytest.raises(DatasetError, match="episode 1 is empty"):
        LeRobotDataset(copy_of)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_mp4_named(copy_of, damage):
    video = copy_of / "videos/observation.images.cam_high/chunk-000/file-001.mp4"
    data = video.read_bytes()
    if damage == "truncate":
        video.write_bytes(data[: len(data) // 2])
    else:
        video.write_bytes(b"\x00garbage" * 100)
    ds = LeRobotDataset(copy_of)
    list(ds.iter_frames(0))  # undamaged episode still reads
    with pytest.raises(DatasetError, match=r"file-001\.mp4: corrupt"):
        list(ds.iter_frames(1))
    with pytest.raises(DatasetError, match=r"file-001\.mp4"):
        ds.validate()


def test_video_shorter_than_table(copy_of):
    videos = copy_of / "videos/observation.images.cam_left_wrist/chunk-000"
    (videos / "file-000.mp4").write_bytes((videos / "file-001.mp4").read_bytes())  # 9 frames for 12 rows
    ds = LeRobotDataset(copy_of)
    with pytest.raises(DatasetError, match="9 frames but its episodes have 12 rows"):
        ds.validate()
    with pytest.raises(DatasetError, match="video ends after 9 frames but episode 0 has 12 rows"):
        list(ds.iter_frames(0))


def test_state_rows_of_wrong_length(copy_of):
    path = copy_of / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    short = pa.array([row[:13] for row in table.column("observation.state").to_pylist()], pa.list_(pa.float32()))
    pq.write_table(table.set_column(table.column_names.index("observation.state"), "observation.state", short), path)
    with pytest.raises(DatasetError, match="'observation.state' row 0 of episode 0 has 13 values, info.json says 14"):
        LeRobotDataset(copy_of).episode(0)


def test_for_profile_matches_profile(tmp_path, profile):
    root = tmp_path / "ds"
    with LeRobotWriter.for_profile(root, profile) as writer:
        assert writer.fps == int(profile.control_rate_hz)
        writer.start_episode("x")
        for _ in range(2):
            writer.add_frame(profile.start_pose, profile.start_pose,
                             {c.name: np.zeros((c.height, c.width, 3), np.uint8) for c in profile.cameras})
        writer.save_episode(block=True)
    ds = LeRobotDataset(root, profile=profile)
    assert ds.info["robot_type"] == profile.name and ds.cameras == list(profile.camera_names)


def test_refuses_to_append_to_multi_episode_files(copy_of, profile):
    path = copy_of / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    column = table.column_names.index("data/file_index")
    pq.write_table(table.set_column(column, "data/file_index", pa.array([0, 0])), path)
    with pytest.raises(DatasetError, match="not stored one file per episode"):
        make_writer(copy_of, profile)


def test_reads_several_episodes_per_file_by_metadata_offsets(copy_of):
    """LeRobot itself packs episodes into shared files; readers must follow the offsets."""
    data_dir = copy_of / "data/chunk-000"
    merged = pa.concat_tables([pq.read_table(data_dir / "file-000.parquet"), pq.read_table(data_dir / "file-001.parquet")])
    pq.write_table(merged, data_dir / "file-000.parquet")
    (data_dir / "file-001.parquet").unlink()
    ds = LeRobotDataset(copy_of)
    for cam, (h, w) in CAMERAS.items():
        frames = np.concatenate([ds.video_frames(0, cam), ds.video_frames(1, cam)])
        video_dir = copy_of / f"videos/observation.images.{cam}/chunk-000"
        encoder = lerobot._StreamEncoder(video_dir / "merged.mp4", w, h, FPS, lerobot.pick_video_codec(), {"g": "5"})
        for frame in frames:
            encoder.put(frame)
        assert encoder.finish() == 21
        (video_dir / "merged.mp4").replace(video_dir / "file-000.mp4")
        (video_dir / "file-001.mp4").unlink()
    path = copy_of / "meta/episodes/chunk-000/file-000.parquet"
    rows = pq.read_table(path).to_pylist()
    rows[1]["data/file_index"] = 0
    for cam in CAMERAS:
        key = f"videos/observation.images.{cam}"
        rows[1][f"{key}/file_index"] = 0
        rows[1][f"{key}/from_timestamp"] = 12 / FPS
        rows[1][f"{key}/to_timestamp"] = 21 / FPS
    pq.write_table(pa.Table.from_pylist(rows), path)

    ds = LeRobotDataset(copy_of)
    ds.validate()
    ds.validate(decode_videos=True)
    for i, frame in enumerate(ds.iter_frames(1)):
        np.testing.assert_array_equal(frame.state, state(1, i))
        assert np.abs(frame.images["cam_high"].astype(int) - image("cam_high", 1, i)).mean() < 4.0
    assert np.abs(ds[17].images["cam_left_wrist"].astype(int) - image("cam_left_wrist", 1, 5)).mean() < 4.0
