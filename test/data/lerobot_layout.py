"""Datasets laid out on disk exactly as LeRobot 0.4.x writes them, built without importing lerobot.

The layout follows LeRobot's documented v3.0 schema (src/lerobot/datasets in huggingface/lerobot,
tag v0.4.4: utils.py, lerobot_dataset.py, compute_stats.py, video_utils.py):

- meta/tasks.parquet: a pandas frame {"task_index"} indexed by the task strings. The index has no
  name, so the strings sit in the column ``__index_level_0__`` named by the pandas metadata.
- several episodes per data file and per video file; the videos of one file are per-episode
  encodings concatenated by stream copy, so episode k starts at ``from_timestamp`` = the summed
  durations of the episodes before it in that file.
- AV1 (libsvtav1, GOP 2, CRF 30), yuv420p.
- chunked paths: the file index runs to chunks_size - 1, then the chunk index steps.
- meta/episodes: one row per episode, columns in LeRobot's order, stats flattened as
  ``stats/<feature>/<min|max|mean|std|count|q01|q10|q50|q90|q99>``; one metadata file per
  recording session.
- state/action names optionally in the dict form older ALOHA datasets use: {"motors": [...]}.
- optionally cameras stored as "image" features (LeRobot's use_videos=False): PNG bytes in the
  data parquet as {bytes, path} structs, no video.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

STAT_KEYS = ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")
INDEX_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64",
                  "index": "int64", "task_index": "int64"}
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"


def next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


def feature_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Stats of (N, D) values with LeRobot's keys; min/max keep the dtype as LeRobot's do."""
    stats = {"min": values.min(0), "max": values.max(0), "mean": values.astype(np.float64).mean(0),
             "std": values.astype(np.float64).std(0), "count": np.array([len(values)])}
    for key, q in zip(STAT_KEYS[5:], (0.01, 0.10, 0.50, 0.90, 0.99)):
        stats[key] = np.quantile(values.astype(np.float64), q, axis=0)
    return stats


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """(N, H, W, 3) uint8 -> per-channel stats in [0, 1] shaped (3, 1, 1), count = frames."""
    stats = feature_stats(frames.reshape(-1, 3))
    return {k: v if k == "count" else (v.astype(np.float64) / 255.0).reshape(3, 1, 1) for k, v in
            {**stats, "count": np.array([len(frames)])}.items()}


def episodes_schema(features: dict) -> pa.Schema:
    """Names and types of meta/episodes as LeRobot writes them (pa.Table.from_pydict of its row
    dicts: Python ints -> int64, floats -> double, nested lists of them)."""
    video_keys = [k for k, f in features.items() if f["dtype"] == "video"]
    fields = [("episode_index", pa.int64()), ("tasks", pa.list_(pa.string())), ("length", pa.int64()),
              ("data/chunk_index", pa.int64()), ("data/file_index", pa.int64()),
              ("dataset_from_index", pa.int64()), ("dataset_to_index", pa.int64())]
    for key in video_keys:
        fields += [(f"videos/{key}/chunk_index", pa.int64()), (f"videos/{key}/file_index", pa.int64()),
                   (f"videos/{key}/from_timestamp", pa.float64()), (f"videos/{key}/to_timestamp", pa.float64())]
    for key, feature in features.items():
        for stat in STAT_KEYS:
            if feature["dtype"] in ("video", "image"):
                value = pa.int64() if stat == "count" else pa.list_(pa.list_(pa.float64()))
            elif stat == "count" or (stat in ("min", "max") and feature["dtype"] == "int64"):
                value = pa.int64()
            else:
                value = pa.float64()
            fields.append((f"stats/{key}/{stat}", pa.list_(value)))
    fields += [("meta/episodes/chunk_index", pa.int64()), ("meta/episodes/file_index", pa.int64())]
    return pa.schema(fields)


def tasks_table(tasks: list[str]) -> pa.Table:
    """What ``pd.DataFrame({"task_index": ...}, index=tasks).to_parquet()`` writes."""
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.3.3",
    }
    schema = pa.schema([("task_index", pa.int64()), ("__index_level_0__", pa.string())],
                       metadata={b"pandas": json.dumps(pandas_meta).encode()})
    return pa.table({"task_index": list(range(len(tasks))), "__index_level_0__": tasks}, schema=schema)


def encode(path: Path, frames: np.ndarray, fps: int, vcodec: str) -> float:
    """One episode's video as LeRobot encodes it; returns its duration (s)."""
    options = {"g": "2", "crf": "30"} | ({"preset": "12"} if vcodec == "libsvtav1" else {})
    with av.open(str(path), "w") as container:
        stream = container.add_stream(vcodec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = options
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return float(stream.duration * stream.time_base)


def concatenate(parts: list[Path], output: Path) -> None:
    """Stream-copy several mp4s into one through ffmpeg's concat demuxer (no re-encoding)."""
    with tempfile.NamedTemporaryFile("w", suffix=".ffconcat", delete=False) as listing:
        listing.write("ffconcat version 1.0\n" + "".join(f"file '{p.resolve()}'\n" for p in parts))
    with av.open(listing.name, format="concat", options={"safe": "0"}) as source, \
            av.open(str(output), "w", options={"movflags": "faststart"}) as sink:
        src = source.streams.video[0]
        out = sink.add_stream_from_template(template=src, opaque=True)
        out.time_base = src.time_base
        for packet in source.demux(src):
            if packet.dts is None:
                continue
            packet.stream = out
            sink.mux(packet)
    Path(listing.name).unlink()


@dataclass
class Layout:
    """Which data/video file each episode goes to, and which metadata file lists it."""

    data_files: list[tuple[int, int]]   # per episode
    video_files: list[tuple[int, int]]
    meta_files: list[tuple[int, int]]


def packed(groups: list[int], chunks_size: int) -> list[tuple[int, int]]:
    """(chunk, file) per episode for consecutive groups of ``groups[i]`` episodes per file."""
    result, where = [], (0, 0)
    for i, size in enumerate(groups):
        result += [where] * size
        where = next_file(*where, chunks_size)
    return result


def write_dataset(root: Path, *, fps: int, tasks: list[str], episode_tasks: list[int], lengths: list[int],
                  state: callable, image: callable, cameras: dict[str, tuple[int, int]], names: list[str],
                  layout: Layout, chunks_size: int, vcodec: str = "libsvtav1", dict_names: bool = False,
                  image_cameras: dict[str, tuple[int, int]] | None = None) -> None:
    """Write a LeRobot-layout dataset; ``state(ep, i)`` gives the state (the action is its negative),
    ``image(cam, ep, i)`` the frame."""
    root.mkdir(parents=True)
    dim = len(names)
    feature_names = {"motors": list(names)} if dict_names else list(names)
    features = {
        "action": {"dtype": "float32", "shape": [dim], "names": feature_names},
        "observation.state": {"dtype": "float32", "shape": [dim], "names": feature_names},
    }
    for cam, (h, w) in cameras.items():
        features[f"observation.images.{cam}"] = {
            "dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
            "info": {"video.height": h, "video.width": w, "video.codec": "av1" if vcodec == "libsvtav1" else "h264",
                     "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                     "video.channels": 3, "has_audio": False}}
    for cam, (h, w) in (image_cameras or {}).items():
        features[f"observation.images.{cam}"] = {"dtype": "image", "shape": [h, w, 3],
                                                 "names": ["height", "width", "channels"]}
    for key, dtype in INDEX_FEATURES.items():
        features[key] = {"dtype": dtype, "shape": [1], "names": None}

    rows, data_tables, video_parts, first = [], {}, {}, 0
    for ep, length in enumerate(lengths):
        frame_index = np.arange(length)
        states = np.stack([state(ep, i) for i in frame_index]).astype(np.float32)
        columns = {
            "action": -states, "observation.state": states,
            "timestamp": (frame_index / fps).astype(np.float32), "frame_index": frame_index,
            "episode_index": np.full(length, ep), "index": first + frame_index,
            "task_index": np.full(length, episode_tasks[ep]),
        }
        ep_stats = {}
        table = {k: pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), dim) if v.ndim == 2 else pa.array(v)
                 for k, v in columns.items()}
        for cam in image_cameras or {}:
            frames = np.stack([image(cam, ep, i) for i in frame_index])
            ep_stats[f"observation.images.{cam}"] = image_stats(frames)
            table[f"observation.images.{cam}"] = pa.array(
                [{"bytes": cv2.imencode(".png", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes(),
                  "path": f"frame_{i:06d}.png"} for i, f in enumerate(frames)],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        data_tables.setdefault(layout.data_files[ep], []).append(pa.table(table))
        video_meta = {}
        for cam in cameras:
            key = f"observation.images.{cam}"
            frames = np.stack([image(cam, ep, i) for i in frame_index])
            ep_stats[key] = image_stats(frames)
            part = root / f"part-{cam}-{ep}.mp4"
            duration = encode(part, frames, fps, vcodec)
            parts = video_parts.setdefault((key, layout.video_files[ep]), [])
            start = sum(d for _, d in parts)
            parts.append((part, duration))
            chunk, file = layout.video_files[ep]
            video_meta |= {f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                           f"videos/{key}/from_timestamp": start, f"videos/{key}/to_timestamp": start + duration}
        for key in ("action", "observation.state", *INDEX_FEATURES):
            values = columns[key]
            ep_stats[key] = feature_stats(values if values.ndim == 2 else values[:, None])
        chunk, file = layout.data_files[ep]
        row = {"episode_index": ep, "tasks": [tasks[episode_tasks[ep]]], "length": length,
               "data/chunk_index": chunk, "data/file_index": file,
               "dataset_from_index": first, "dataset_to_index": first + length, **video_meta}
        for key in features:
            for stat in STAT_KEYS:
                row[f"stats/{key}/{stat}"] = ep_stats[key][stat].tolist()
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = layout.meta_files[ep]
        rows.append(row)
        first += length

    for (chunk, file), tables in data_tables.items():
        path = root / "data" / f"{CHUNK_FILE.format(chunk_index=chunk, file_index=file)}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(tables), path)
    for (key, (chunk, file)), parts in video_parts.items():
        path = root / "videos" / key / f"{CHUNK_FILE.format(chunk_index=chunk, file_index=file)}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        concatenate([p for p, _ in parts], path)
        for p, _ in parts:
            p.unlink()
    schema = episodes_schema(features)
    for meta_file in sorted(set(layout.meta_files)):
        path = root / "meta" / "episodes" / f"{CHUNK_FILE.format(chunk_index=meta_file[0], file_index=meta_file[1])}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([r for r in rows if (r["meta/episodes/chunk_index"],
                                                                 r["meta/episodes/file_index"]) == meta_file],
                                            schema=schema), path)
    pq.write_table(tasks_table(tasks), root / "meta" / "tasks.parquet")
    info = {
        "codebase_version": "v3.0", "robot_type": "aloha", "total_episodes": len(lengths),
        "total_frames": first, "total_tasks": len(tasks), "chunks_size": chunks_size,
        "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": fps,
        "splits": {"train": f"0:{len(lengths)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": features,
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    stats = {}
    for key in features:
        parts = [{stat: np.asarray(r[f"stats/{key}/{stat}"]) for stat in STAT_KEYS} for r in rows]
        counts = np.array([p["count"][0] for p in parts], dtype=np.float64)
        w = (counts / counts.sum()).reshape((-1,) + (1,) * parts[0]["mean"].ndim)
        mean = (np.stack([p["mean"] for p in parts]) * w).sum(0)
        second = (np.stack([p["std"] ** 2 + p["mean"] ** 2 for p in parts]) * w).sum(0)
        stats[key] = {"min": np.min([p["min"] for p in parts], 0), "max": np.max([p["max"] for p in parts], 0),
                      "mean": mean, "std": np.sqrt(second - mean ** 2), "count": np.array([int(counts.sum())])}
        stats[key] |= {q: (np.stack([p[q] for p in parts]) * w).sum(0) for q in STAT_KEYS[5:]}
    (root / "meta" / "stats.json").write_text(json.dumps(
        {k: {s: v.tolist() for s, v in d.items()} for k, d in stats.items()}, indent=4))
