"""Datasets written by LeRobot itself (its v3.0 on-disk layout, built by lerobot_layout without
importing lerobot) read frame by frame; vla_ros's own datasets carry LeRobot's metadata schema."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from lerobot_layout import Layout, episodes_schema, packed, write_dataset
from vla_ros.data.lerobot import DatasetError, LeRobotDataset
from vla_ros.robot.profile import load_profile

FPS = 50
CAMERAS = {"cam_high": (64, 96), "cam_left_wrist": (64, 64)}
TASKS = ["transfer the cube", "insert the peg"]
EPISODE_TASKS = [0, 1, 0, 1]
LENGTHS = [9, 12, 7, 10]


def state(episode: int, frame: int) -> np.ndarray:
    return (np.arange(14) * 0.01 + frame * 0.1 + episode).astype(np.float32)


def image(cam: str, episode: int, frame: int) -> np.ndarray:
    """Smooth frames whose brightness encodes (episode, frame): 5 levels a frame, 40 an episode."""
    h, w = CAMERAS[cam]
    y, x = np.mgrid[0:h, 0:w]
    base = 30 + x + y // 2 + 5 * frame + 40 * episode
    return np.repeat(np.clip(base, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


# Episodes 0-1 share data file chunk-000/file-000, episode 2 has file-001, episode 3 moves to
# chunk-001 (chunks_size 2). Videos: episodes 0-2 in one file, episode 3 in the next. Metadata:
# two recording sessions, two episode files.
LAYOUT = Layout(data_files=packed([2, 1, 1], 2), video_files=packed([3, 1], 2), meta_files=packed([2, 2], 2))


@pytest.fixture(scope="module")
def av1_dataset(tmp_path_factory, profile):
    root = tmp_path_factory.mktemp("lerobot_written") / "ds"
    write_dataset(root, fps=FPS, tasks=TASKS, episode_tasks=EPISODE_TASKS, lengths=LENGTHS, state=state,
                  image=image, cameras=CAMERAS, names=list(profile.vector_names), layout=LAYOUT, chunks_size=2,
                  vcodec="libsvtav1", dict_names=True)
    return root


@pytest.fixture(scope="module")
def profile():
    return load_profile("aloha_sim")


def decode_whole_files(root, cam: str) -> list[list[np.ndarray]]:
    """Per episode, its frames cut out of a plain front-to-back decode of each packed file (what
    any decoder, LeRobot's included, yields): the reference for the reader's seeks and offsets."""
    import av
    episodes, position = [], {}
    for ep, where in enumerate(LAYOUT.video_files):
        path = root / f"videos/observation.images.{cam}/chunk-{where[0]:03d}/file-{where[1]:03d}.mp4"
        with av.open(str(path)) as video:
            frames = [f.to_ndarray(format="rgb24") for f in video.decode(video.streams.video[0])]
        start = position.get(where, 0)
        episodes.append(frames[start:start + LENGTHS[ep]])
        position[where] = start + LENGTHS[ep]
    return episodes


def test_fixture_has_lerobot_layout(av1_dataset):
    """The fixture is what the tests claim: packed, chunked, AV1, pandas-indexed tasks."""
    files = sorted(str(p.relative_to(av1_dataset)) for p in av1_dataset.rglob("*.*"))
    assert "data/chunk-001/file-000.parquet" in files and "data/chunk-000/file-001.parquet" in files
    assert "videos/observation.images.cam_high/chunk-000/file-001.mp4" in files
    assert "meta/episodes/chunk-000/file-001.parquet" in files
    tasks = pq.read_table(av1_dataset / "meta/tasks.parquet")
    assert tasks.column_names == ["task_index", "__index_level_0__"]
    assert pq.read_table(av1_dataset / "data/chunk-000/file-000.parquet").num_rows == 9 + 12
    import av
    with av.open(str(av1_dataset / "videos/observation.images.cam_high/chunk-000/file-000.mp4")) as video:
        assert video.streams.video[0].codec_context.name in ("libdav1d", "av1")
        assert sum(1 for p in video.demux(video.streams.video[0]) if p.size) == 9 + 12 + 7


def test_reads_every_frame_of_a_lerobot_written_dataset(av1_dataset, profile):
    ds = LeRobotDataset(av1_dataset, profile=profile)  # dict-form names pass the joint-order check
    assert ds.num_episodes == 4 and ds.num_frames == sum(LENGTHS)
    assert ds.tasks == TASKS
    assert ds.features["observation.state"]["names"] == list(profile.vector_names)
    reference = {cam: decode_whole_files(av1_dataset, cam) for cam in CAMERAS}
    ds.validate(decode_videos=True)
    for ep_index, length in enumerate(LENGTHS):
        ep = ds.episode(ep_index)
        assert len(ep) == length and ep.task == TASKS[EPISODE_TASKS[ep_index]]
        for i, frame in enumerate(ds.iter_frames(ep_index)):
            np.testing.assert_array_equal(frame.state, state(ep_index, i))
            np.testing.assert_array_equal(frame.action, -state(ep_index, i))
            for cam in CAMERAS:
                np.testing.assert_array_equal(frame.images[cam], reference[cam][ep_index][i])
                # AV1 at CRF 30 on tiny frames smears inter frames by ~5 levels; another
                # episode's frames are 40 levels away.
                error = np.abs(frame.images[cam].astype(int) - image(cam, ep_index, i)).mean()
                assert error < 8, (ep_index, i, cam, error)
    # random access seeks into the middle of a packed AV1 file (episode 2 starts at 21 frames in)
    frame = ds[9 + 12 + 4]
    assert (frame.episode_index, frame.frame_index) == (2, 4)
    np.testing.assert_array_equal(frame.images["cam_high"], reference["cam_high"][2][4])


def test_reads_cameras_stored_as_images_in_the_data_files(tmp_path, profile):
    """LeRobot's use_videos=False: PNG frames inside the parquet rows, beside a video camera."""
    def frame(cam, episode, i):
        return np.random.default_rng([episode, i, len(cam)]).integers(0, 256, (24, 32, 3), dtype=np.uint8) \
            if cam == "cam_right_wrist" else image(cam, episode, i)

    root = tmp_path / "ds"
    write_dataset(root, fps=FPS, tasks=TASKS, episode_tasks=[0, 1], lengths=[5, 4], state=state, image=frame,
                  cameras={"cam_high": (64, 96)}, image_cameras={"cam_right_wrist": (24, 32)},
                  names=list(profile.vector_names), layout=Layout(packed([2], 1000), packed([2], 1000),
                                                                  packed([2], 1000)),
                  chunks_size=1000, vcodec="libx264")
    ds = LeRobotDataset(root)
    assert ds.cameras == ["cam_high", "cam_right_wrist"]
    ds.validate()
    for ep in range(2):
        for i, f in enumerate(ds.iter_frames(ep)):
            np.testing.assert_array_equal(f.images["cam_right_wrist"], frame("cam_right_wrist", ep, i))  # lossless
        np.testing.assert_array_equal(ds.video_frames(ep, "cam_right_wrist")[2], frame("cam_right_wrist", ep, 2))
    np.testing.assert_array_equal(ds[5 + 3].images["cam_right_wrist"], frame("cam_right_wrist", 1, 3))
    assert ds.frame_source(1, "cam_right_wrist").name == "file-000.parquet"
    with pytest.raises(DatasetError, match="stored as images"):
        ds.video_path(0, "cam_right_wrist")

    import torch
    from vla_ros.policy.batches import DatasetSamples
    in_memory = DatasetSamples(ds, [0, 1], ["cam_right_wrist", "cam_high"], 2, (24, 32))
    streamed = DatasetSamples(ds, [0, 1], ["cam_right_wrist", "cam_high"], 2, (24, 32), max_memory_bytes=0,
                              cache_dir=tmp_path / "cache")
    batch = streamed.batch_for_step(0, 6, seed=0)
    assert torch.equal(batch["images"], in_memory.batch_for_step(0, 6, seed=0)["images"])


def test_tasks_by_index_and_tasks_that_change_within_an_episode(av1_dataset, tmp_path):
    """task_index values need not be 0..n-1, and an episode may switch task (LeRobot stores a
    task per frame): each frame gets its own instruction."""
    import shutil

    import pyarrow as pa
    from lerobot_layout import tasks_table

    root = tmp_path / "ds"
    shutil.copytree(av1_dataset, root)
    table = tasks_table(TASKS)
    pq.write_table(table.set_column(0, "task_index", pa.array([0, 5])), root / "meta/tasks.parquet")
    path = root / "data/chunk-000/file-000.parquet"
    data = pq.read_table(path)  # episodes 0 (9 rows, task 0) and 1 (12 rows, task 1 -> now 5, then 0)
    switched = [0] * 9 + [5] * 6 + [0] * 6
    pq.write_table(data.set_column(data.column_names.index("task_index"), "task_index", pa.array(switched)), path)
    ds = LeRobotDataset(root)
    assert ds.tasks == TASKS
    episode = ds.episode(1)
    assert episode.task == TASKS[1] and episode.frame_tasks == [TASKS[1]] * 6 + [TASKS[0]] * 6
    assert [f.task for f in ds.iter_frames(1)] == episode.frame_tasks and ds[9 + 7].task == TASKS[0]
    assert ds.episode(0).frame_tasks is None and ds.episode(0).task == TASKS[0]

    from vla_ros.policy.batches import DatasetSamples
    samples = DatasetSamples(ds, [1], ["cam_high"], 2, (16, 16))
    assert samples.collate([0, 5, 6, 11])["instruction"] == [TASKS[1], TASKS[1], TASKS[0], TASKS[0]]


def test_a_camera_under_another_key_reads(av1_dataset, tmp_path):
    """LeRobot's single-camera datasets name the camera "observation.image"."""
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(av1_dataset, root)
    old, new = "observation.images.cam_left_wrist", "observation.image"
    info = json.loads((root / "meta/info.json").read_text())
    info["features"] = {(new if k == old else k): v for k, v in info["features"].items()}
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "videos" / old).rename(root / "videos" / new)
    for path in (root / "meta/episodes").glob("*/*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.rename_columns([c.replace(old, new) for c in table.column_names]), path)
    ds = LeRobotDataset(root)
    assert ds.cameras == ["cam_high", new] and ds.feature_key(new) == new
    ds.validate(decode_videos=True)
    assert len(ds.video_frames(2, new)) == LENGTHS[2]


def test_names_that_differ_are_still_refused(tmp_path, profile):
    root = tmp_path / "ds"
    swapped = list(profile.vector_names)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    write_dataset(root, fps=FPS, tasks=TASKS[:1], episode_tasks=[0], lengths=[3], state=state, image=image,
                  cameras={"cam_high": (64, 96)}, names=swapped, layout=Layout([(0, 0)], [(0, 0)], [(0, 0)]),
                  chunks_size=1000, vcodec="libx264", dict_names=True)
    with pytest.raises(DatasetError, match="joint order mismatch"):
        LeRobotDataset(root, profile=profile)


@pytest.mark.parametrize("names, problem", [({"motors": [1, 2]}, "list of strings"), ("abc", "list of strings")])
def test_malformed_names_are_a_clear_error(av1_dataset, tmp_path, names, problem):
    import shutil
    root = tmp_path / "ds"
    shutil.copytree(av1_dataset, root)
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["action"]["names"] = names
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=problem):
        LeRobotDataset(root)


def test_tasks_without_task_strings_are_a_clear_error(av1_dataset, tmp_path):
    import shutil
    import pyarrow as pa
    root = tmp_path / "ds"
    shutil.copytree(av1_dataset, root)
    pq.write_table(pa.table({"task_index": [0, 1]}), root / "meta/tasks.parquet")
    with pytest.raises(DatasetError, match="tasks.parquet: expected a task_index column"):
        LeRobotDataset(root)
    pq.write_table(pa.table({"task_index": [0, 0], "task": ["a", "b"]}), root / "meta/tasks.parquet")
    with pytest.raises(DatasetError, match="task_index values \\[0, 0\\] are not unique"):
        LeRobotDataset(root)


def test_episodes_schema_helper_matches_the_fixture(av1_dataset):
    info = json.loads((av1_dataset / "meta/info.json").read_text())
    table = pq.read_table(av1_dataset / "meta/episodes/chunk-000/file-000.parquet")
    assert table.schema.remove_metadata() == episodes_schema(info["features"])


# ---------------------------------------------------------------------------------------------
# vla_ros's own datasets: LeRobot's metadata schema, exact stats, honest time, gripper range

from vla_ros.data.lerobot import QUANTILES, STAT_KEYS, LeRobotWriter  # noqa: E402


def noisy_image(cam: str, episode: int, frame: int) -> np.ndarray:
    h, w = CAMERAS[cam]
    return np.random.default_rng([episode, frame, h]).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_own(root, profile, lengths=(6, 4), **kwargs):
    with LeRobotWriter(root, FPS, "aloha", profile.vector_names, profile.vector_names, CAMERAS, **kwargs) as writer:
        results = []
        for ep, length in enumerate(lengths):
            writer.start_episode(TASKS[ep % 2])
            for i in range(length):
                writer.add_frame(state(ep, i), -state(ep, i), {c: noisy_image(c, ep, i) for c in CAMERAS})
            results.append(writer.save_episode(block=True).result())
    return results


@pytest.fixture(scope="module")
def own_dataset(tmp_path_factory, profile):
    root = tmp_path_factory.mktemp("own") / "ds"
    write_own(root, profile)
    return root


def test_episode_metadata_has_lerobots_columns_and_types(own_dataset, av1_dataset):
    """LeRobot reloads all episode files as one table: names and types must equal its own."""
    info = json.loads((own_dataset / "meta/info.json").read_text())
    ours = pq.read_table(own_dataset / "meta/episodes/chunk-000/file-000.parquet")
    assert ours.schema.remove_metadata() == episodes_schema(info["features"])
    # a LeRobot-written file with the same features (its feature order differs) stacks onto ours
    theirs = pq.read_table(av1_dataset / "meta/episodes/chunk-000/file-001.parquet")
    assert sorted(theirs.column_names) == sorted(ours.column_names)
    import pyarrow as pa
    stacked = pa.concat_tables([ours, theirs.select(ours.column_names)])
    assert stacked.num_rows == 4
    stats = json.loads((own_dataset / "meta/stats.json").read_text())
    for feature in info["features"]:
        assert list(stats[feature]) == list(STAT_KEYS), feature
    assert stats["observation.images.cam_high"]["q50"][0] == [[pytest.approx(stats["observation.images.cam_high"]["q50"][0][0][0])]]
    assert isinstance(stats["frame_index"]["count"][0], int)


def test_stats_are_exact(own_dataset):
    """Per-episode stats over every frame and every pixel (item 6), quantiles as numpy's."""
    rows = pq.read_table(own_dataset / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    for ep, row in enumerate(rows):
        for cam in CAMERAS:
            pixels = np.stack([noisy_image(cam, ep, i) for i in range(row["length"])]).reshape(-1, 3) / 255.0
            expected = {"min": pixels.min(0), "max": pixels.max(0), "mean": pixels.mean(0), "std": pixels.std(0)}
            expected |= {f"q{round(q * 100):02d}": np.quantile(pixels, q, axis=0) for q in QUANTILES}
            for stat, value in expected.items():
                np.testing.assert_allclose(np.asarray(row[f"stats/observation.images.{cam}/{stat}"]).reshape(3),
                                           value, rtol=0, atol=1e-12, err_msg=f"{cam} {stat}")
            assert row[f"stats/observation.images.{cam}/count"] == [row["length"]]
        states = np.stack([state(ep, i) for i in range(row["length"])]).astype(np.float64)
        for q in QUANTILES:
            np.testing.assert_allclose(row[f"stats/observation.state/q{round(q * 100):02d}"],
                                       np.quantile(states, q, axis=0), rtol=1e-6)
    dataset = json.loads((own_dataset / "meta/stats.json").read_text())
    all_pixels = np.concatenate([np.stack([noisy_image("cam_high", ep, i) for i in range(r["length"])]).reshape(-1, 3)
                                 for ep, r in enumerate(rows)]) / 255.0
    np.testing.assert_allclose(np.ravel(dataset["observation.images.cam_high"]["mean"]), all_pixels.mean(0), atol=1e-12)
    np.testing.assert_allclose(np.ravel(dataset["observation.images.cam_high"]["std"]), all_pixels.std(0), atol=1e-12)


def test_episodes_written_without_quantiles_get_them_when_reopened(own_dataset, tmp_path, profile):
    import shutil
    root = tmp_path / "ds"
    shutil.copytree(own_dataset, root)
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    full = pq.read_table(path)
    old = full.select([c for c in full.column_names if not c.split("/")[-1].startswith("q")])
    pq.write_table(old, path)
    with LeRobotWriter(root, FPS, "aloha", profile.vector_names, profile.vector_names, CAMERAS):
        pass
    upgraded = pq.read_table(path)
    assert upgraded.schema == full.schema
    ds = LeRobotDataset(root)
    for column in (c for c in full.column_names if c.startswith("stats/")):
        expected = np.asarray(full.column(column).to_pylist(), dtype=float)
        if "images" in column and not column.endswith("count"):
            # counted again from the decoded video (the source frames are gone): exact for those
            cam, stat = column.split("/")[1].split(".")[-1], column.split("/")[-1]
            pixels = [ds.video_frames(ep, cam).reshape(-1, 3) / 255.0 for ep in range(ds.num_episodes)]
            reduce = {"min": np.min, "max": np.max, "mean": np.mean, "std": np.std}.get(stat)
            expected = np.stack([(reduce(p, axis=0) if reduce else np.quantile(p, int(stat[1:]) / 100, axis=0))
                                 for p in pixels]).reshape(-1, 3, 1, 1)
        np.testing.assert_allclose(np.asarray(upgraded.column(column).to_pylist(), dtype=float), expected,
                                   atol=1e-12, err_msg=column)


def test_dropped_frames_leave_a_gap_in_time_and_video(tmp_path, profile):
    """Honest time (item 5): the stored time of a frame is its capture time on the frame grid."""
    root = tmp_path / "ds"
    captured = [100.0, 100.021, 100.059, 100.080, 100.140]   # slots 0, 1, 3, 4, 7
    with LeRobotWriter(root, FPS, "aloha", profile.vector_names, profile.vector_names, CAMERAS) as writer:
        writer.start_episode("gappy")
        for i, t in enumerate(captured):
            writer.add_frame(state(0, i), state(0, i), {c: image(c, 0, i) for c in CAMERAS}, timestamp=t)
        with pytest.raises(ValueError, match="frame period of the previous frame"):
            writer.add_frame(state(0, 9), state(0, 9), {c: image(c, 0, 9) for c in CAMERAS}, timestamp=100.149)
        result = writer.save_episode(block=True).result()
    assert result.missing_frames == 3 and result.length == 5
    ds = LeRobotDataset(root)
    ds.validate(decode_videos=True)
    ep = ds.episode(0)
    np.testing.assert_allclose(ep.timestamps, np.array([0, 1, 3, 4, 7]) / FPS, atol=1e-7)
    assert ep.frame_index.tolist() == [0, 1, 2, 3, 4]
    assert ds.episode_meta(0)["videos/observation.images.cam_high/to_timestamp"] == pytest.approx(8 / FPS)
    for i, frame in enumerate(ds.iter_frames(0)):
        assert np.abs(frame.images["cam_high"].astype(int) - image("cam_high", 0, i)).mean() < 2.5
    assert np.abs(ds[3].images["cam_left_wrist"].astype(int) - image("cam_left_wrist", 0, 3)).mean() < 2.5


def test_gripper_outside_unit_range_is_clipped_and_counted_or_refused(tmp_path, profile):
    grippers = list(profile.gripper_indices)
    bad = profile.start_pose.copy()
    bad[grippers[0]] = -0.288
    bad[grippers[1]] = 1.2
    images = {c: image(c, 0, 0) for c in CAMERAS}
    with LeRobotWriter(tmp_path / "clip", FPS, "aloha", profile.vector_names, profile.vector_names, CAMERAS,
                       gripper_indices=grippers) as writer:
        writer.start_episode("t")
        writer.add_frame(bad, profile.start_pose, images)
        writer.add_frame(profile.start_pose, bad, images)
        result = writer.save_episode(block=True).result()
    assert result.grippers_clipped == 4
    ep = LeRobotDataset(tmp_path / "clip").episode(0)
    assert ep.state[0][grippers].tolist() == [0.0, 1.0] and ep.action[1][grippers].tolist() == [0.0, 1.0]
    assert ep.state[0][0] == bad[0]
    with LeRobotWriter(tmp_path / "refuse", FPS, "aloha", profile.vector_names, profile.vector_names, CAMERAS,
                       gripper_indices=grippers, gripper_out_of_range="refuse") as writer:
        writer.start_episode("t")
        with pytest.raises(ValueError, match=r"gripper value\(s\) \[-0.288"):
            writer.add_frame(bad, profile.start_pose, images)
        writer.add_frame(profile.start_pose, profile.start_pose, images)  # the refused frame left no trace
        assert writer.save_episode(block=True).result().length == 1
    with pytest.raises(ValueError, match="gripper_out_of_range must be one of"):
        LeRobotWriter(tmp_path / "x", FPS, "aloha", ["a"], ["a"], {}, gripper_indices=[0], gripper_out_of_range="wrap")


def test_episodes_appended_the_way_lerobot_resumes_read_back(own_dataset, tmp_path, profile):
    """LeRobot's recorder, resuming a dataset, writes its episodes to the next data/video file and a
    new meta/episodes file. Emulated here with the LeRobot-layout helper; the grafted dataset reads
    back, and every episodes file has the same columns and types (LeRobot's reload condition)."""
    import shutil

    import pyarrow as pa

    root = tmp_path / "ds"
    shutil.copytree(own_dataset, root)
    theirs = tmp_path / "theirs"
    write_dataset(theirs, fps=FPS, tasks=TASKS, episode_tasks=[1], lengths=[6], state=state, image=image,
                  cameras=CAMERAS, names=list(profile.vector_names), layout=Layout([(0, 0)], [(0, 0)], [(0, 0)]),
                  chunks_size=1000, vcodec="libx264")
    ours = LeRobotDataset(root)
    first, episode = ours.num_frames, ours.num_episodes
    data = pq.read_table(theirs / "data/chunk-000/file-000.parquet")
    data = data.set_column(data.column_names.index("index"), "index", pa.array(first + np.arange(6)))
    data = data.set_column(data.column_names.index("episode_index"), "episode_index", pa.array([episode] * 6))
    pq.write_table(data, root / f"data/chunk-000/file-{episode:03d}.parquet")
    for cam in CAMERAS:
        shutil.copy(theirs / f"videos/observation.images.{cam}/chunk-000/file-000.mp4",
                    root / f"videos/observation.images.{cam}/chunk-000/file-{episode:03d}.mp4")
    (row,) = pq.read_table(theirs / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    row |= {"episode_index": episode, "dataset_from_index": first, "dataset_to_index": first + 6,
            "data/file_index": episode, "meta/episodes/file_index": 1}
    row |= {f"videos/observation.images.{cam}/file_index": episode for cam in CAMERAS}
    info = json.loads((theirs / "meta/info.json").read_text())
    pq.write_table(pa.Table.from_pylist([row], schema=episodes_schema(info["features"])),
                   root / "meta/episodes/chunk-000/file-001.parquet")

    grafted = LeRobotDataset(root)
    grafted.validate(decode_videos=True)
    assert grafted.num_episodes == episode + 1 and grafted.episode(episode).task == TASKS[1]
    np.testing.assert_array_equal(grafted.episode(episode).state[5], state(0, 5))
    schemas = [dict(zip(t.column_names, t.schema.types)) for t in
               (pq.read_table(p) for p in sorted((root / "meta/episodes").glob("*/*.parquet")))]
    assert schemas[0] == schemas[1]


def test_vla_ros_train_runs_on_a_lerobot_written_dataset(av1_dataset, tmp_path):
    """The issue's first failure: `vla-ros train` on what LeRobot wrote (here: AV1, packed, chunked,
    dict-form names, pandas-indexed tasks) trains and saves a policy."""
    from vla_ros.policy import finetune

    code = finetune.main(["--dataset", str(av1_dataset), "--output", str(tmp_path / "run"), "--steps", "1",
                          "--batch-size", "2", "--threads", "1", "--quiet"])
    assert code == 0
    assert (tmp_path / "run" / "policy" / "model.safetensors").is_file()
