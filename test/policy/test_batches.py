"""Training chunks never pair frames across a gap left by dropped frames (issue 19, item 5)."""

import numpy as np
import pytest
import torch

from vla_ros.data.lerobot import LeRobotDataset, LeRobotWriter
from vla_ros.policy.batches import DatasetSamples

FPS = 50


def test_chunks_stop_at_a_timestamp_gap(tmp_path):
    root = tmp_path / "ds"
    slots = [0, 1, 2, 5, 6, 7, 8]  # frames at slots 3 and 4 were dropped
    with LeRobotWriter(root, FPS, "test", ["a", "b"], ["a", "b"], {"cam": (16, 16)}) as writer:
        writer.start_episode("task")
        for i, slot in enumerate(slots):
            writer.add_frame([i, 0], [10 * i, 0], {"cam": np.full((16, 16, 3), 20 * i, np.uint8)},
                             timestamp=3.0 + slot / FPS)
        writer.save_episode(block=True)
    samples = DatasetSamples(LeRobotDataset(root), [0], ["cam"], horizon=4, image_size=(8, 8))
    actions, is_pad = samples.chunk(0, 1)  # frames 1, 2 | gap | 3, 4
    assert is_pad.tolist() == [False, False, True, True]
    assert actions[:, 0].tolist() == [10, 20, 20, 20]
    actions, is_pad = samples.chunk(0, 3)  # starts after the gap: 3, 4, 5, 6
    assert is_pad.tolist() == [False] * 4 and actions[:, 0].tolist() == [30, 40, 50, 60]
    actions, is_pad = samples.chunk(0, 5)  # the episode's end pads as before
    assert is_pad.tolist() == [False, False, True, True] and actions[:, 0].tolist() == [50, 60, 60, 60]


def write_frames_dataset(root, episodes=(7, 5), task="task"):
    with LeRobotWriter(root, FPS, "test", ["a", "b"], ["a", "b"], {"cam": (24, 32), "wrist": (16, 16)}) as writer:
        for ep, length in enumerate(episodes):
            writer.start_episode(f"{task} {ep}")
            for i in range(length):
                rng = np.random.default_rng([ep, i])
                writer.add_frame([ep, i], [i, ep], {"cam": rng.integers(0, 256, (24, 32, 3), dtype=np.uint8),
                                                    "wrist": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)})
            writer.save_episode(block=True)
    return LeRobotDataset(root)


def test_frames_streamed_from_the_disk_cache_equal_the_in_memory_ones(tmp_path):
    dataset = write_frames_dataset(tmp_path / "ds")
    crops = {"cam": (0.1, 0.0, 0.9, 1.0)}
    in_memory = DatasetSamples(dataset, [1, 0], ["cam", "wrist"], 3, (12, 12), crops=crops)
    assert in_memory.cache is None and in_memory.memory_bytes == 12 * 2 * 12 * 12 * 3
    streamed = DatasetSamples(dataset, [1, 0], ["cam", "wrist"], 3, (12, 12), max_memory_bytes=0, crops=crops,
                              cache_dir=tmp_path / "cache")
    assert streamed.cache is not None and streamed.cache.built and streamed.memory_bytes == 0
    for step in range(4):
        a, b = in_memory.batch_for_step(step, 8, seed=3), streamed.batch_for_step(step, 8, seed=3)
        for key in ("images", "state", "actions", "action_is_pad"):
            assert torch.equal(a[key], b[key]), key
        assert a["instruction"] == b["instruction"]
    prefetched = streamed.batches(8, seed=3, start_step=2)
    assert torch.equal(next(prefetched)["images"], in_memory.batch_for_step(2, 8, seed=3)["images"])
    assert torch.equal(next(prefetched)["images"], in_memory.batch_for_step(3, 8, seed=3)["images"])
    prefetched.close()

    again = DatasetSamples(dataset, [1, 0], ["cam", "wrist"], 3, (12, 12), max_memory_bytes=0, crops=crops,
                           cache_dir=tmp_path / "cache")
    assert not again.cache.built and again.cache.path == streamed.cache.path  # reused, not decoded again
    other_size = DatasetSamples(dataset, [1, 0], ["cam"], 3, (8, 8), max_memory_bytes=0, cache_dir=tmp_path / "cache")
    assert other_size.cache.built and other_size.cache.path != streamed.cache.path

    (streamed.cache.path / "cam.u8").write_bytes(b"truncated")  # a damaged cache is rebuilt
    rebuilt = DatasetSamples(dataset, [1, 0], ["cam", "wrist"], 3, (12, 12), max_memory_bytes=0, crops=crops,
                             cache_dir=tmp_path / "cache")
    assert rebuilt.cache.built
    assert torch.equal(rebuilt.batch_for_step(0, 8, seed=3)["images"], in_memory.batch_for_step(0, 8, seed=3)["images"])
    assert not list((tmp_path / "cache").glob("*.tmp-*"))


@pytest.mark.slow
def test_training_benchmark_reports_streaming_throughput_and_peak_memory(tmp_path, capsys):
    import json

    from vla_ros.policy import bench_train

    argv = ["--no-gpu", "--steps", "2", "--warmup", "1", "--batch-size", "4", "--data", "--data-dir", str(tmp_path),
            "--large-frames", "120", "--large-image-size", "32", "--large-batches", "5", "--large-max-memory-gb", "0"]
    assert bench_train.main(argv) == 0
    data = json.loads(capsys.readouterr().out)["data"]
    assert data["small"]["in_memory_samples_per_s"] > 0 and data["small"]["streamed_samples_per_s"] > 0
    large = data["large"]
    assert large["frames"] == 120 and large["streamed"] and large["cache_built_now"]
    assert large["data_samples_per_s"] > 0 and 0 < large["peak_rss_gb"] < 4
    assert bench_train.main(argv) == 0  # a second run reuses the datasets and the caches
    assert not json.loads(capsys.readouterr().out)["data"]["large"]["cache_built_now"]


def test_augmented_batches_are_reproducible_and_leave_the_rest_alone(tmp_path):
    from vla_ros.policy.augment import ImageAugment

    dataset = write_frames_dataset(tmp_path / "ds")
    plain = DatasetSamples(dataset, [0, 1], ["cam", "wrist"], 3, (12, 12))
    augmented = DatasetSamples(dataset, [0, 1], ["cam", "wrist"], 3, (12, 12), augment=ImageAugment())
    a, b = plain.batch_for_step(4, 6, seed=2), augmented.batch_for_step(4, 6, seed=2)
    assert not torch.equal(a["images"], b["images"])
    assert torch.equal(a["state"], b["state"]) and torch.equal(a["actions"], b["actions"])
    assert torch.equal(b["images"], augmented.batch_for_step(4, 6, seed=2)["images"])


def test_mixed_datasets_are_drawn_by_weight(tmp_path):
    from vla_ros.policy.batches import MixedSamples

    big = DatasetSamples(write_frames_dataset(tmp_path / "big", (30, 30, 30), "big"), [0, 1, 2], ["cam"], 3, (8, 8))
    small = DatasetSamples(write_frames_dataset(tmp_path / "small", (4,), "small"), [0], ["cam"], 3, (8, 8))
    mixed = MixedSamples([big, small], [1, 3])
    assert mixed.num_frames == 94 and len(mixed.episodes) == 4
    tasks = [t for step in range(40) for t in mixed.batch_for_step(step, 16, seed=0)["instruction"]]
    # small gives 3/4 of the samples although it holds 4 of the 94 frames
    assert 0.68 < tasks.count("small 0") / len(tasks) < 0.82
    batch = mixed.batch_for_step(0, 16, seed=0)
    assert batch["images"].shape == (16, 1, 8, 8, 3) and batch["actions"].shape == (16, 3, 2)
    again = mixed.batch_for_step(0, 16, seed=0)
    assert torch.equal(batch["images"], again["images"]) and batch["instruction"] == again["instruction"]
    for row, task in enumerate(batch["instruction"]):  # each row holds its own dataset's sample
        source = small if task == "small 0" else big
        frame = int(batch["state"][row, 1])  # the writer stored [episode, frame] as the state
        episode = int(task.split()[1])
        offset = sum(len(e.state) for e in source.episodes[:episode])
        assert torch.equal(batch["images"][row], source.collate([offset + frame])["images"][0])
    with pytest.raises(ValueError, match="one finite weight"):
        MixedSamples([big, small], [1, -1])
    other = DatasetSamples(write_frames_dataset(tmp_path / "other", (4,)), [0], ["cam"], 3, (12, 12))
    with pytest.raises(ValueError, match="share cameras, image size"):
        MixedSamples([big, other])


def test_a_short_video_fails_the_cache_build_cleanly(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vla_ros.data.lerobot import DatasetError

    dataset = write_frames_dataset(tmp_path / "ds")
    path = tmp_path / "ds/meta/episodes/chunk-000/file-000.parquet"
    rows = pq.read_table(path).to_pylist()
    rows[1]["videos/observation.images.cam/to_timestamp"] = 3 / FPS  # 3 of its 5 frames
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DatasetError, match="3 frames of camera 'cam' for episode 1, but the table has 5 rows"):
        DatasetSamples(LeRobotDataset(dataset.root), [0, 1], ["cam"], 3, (8, 8), max_memory_bytes=0,
                       cache_dir=tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def _build_in_child(root, cache, queue):
    samples = DatasetSamples(LeRobotDataset(root), [0, 1], ["cam", "wrist"], 3, (12, 12), max_memory_bytes=0,
                             cache_dir=cache)
    queue.put((samples.cache.built, samples.batch_for_step(0, 4, seed=1)["images"].numpy().tobytes()))


@pytest.mark.slow
def test_concurrent_runs_build_the_cache_once(tmp_path):
    """DDP ranks on one host start together: one builds the cache, the others wait and reuse it."""
    import multiprocessing

    write_frames_dataset(tmp_path / "ds")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    children = [context.Process(target=_build_in_child, args=(tmp_path / "ds", tmp_path / "cache", queue))
                for _ in range(3)]
    for child in children:
        child.start()
    results = [queue.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert sorted(built for built, _ in results) == [False, False, True]
    assert len({images for _, images in results}) == 1
