"""LeRobotDataset v3.0 writer and reader (parquet via pyarrow, mp4 via PyAV; no LeRobot import).

Layout (as LeRobot v3.0 lays it out, checked against huggingface/lerobot datasets/utils.py and
lerobot_dataset.py):

    meta/info.json                              codebase_version "v3.0", fps, totals, paths, features
    meta/stats.json                             per feature min/max/mean/std/count/q01..q99 (images: (3,1,1))
    meta/tasks.parquet                          task_index, indexed by the task string (pandas index)
    meta/episodes/chunk-000/file-000.parquet    one row per episode: offsets + per-episode stats
    data/chunk-CCC/file-FFF.parquet             timestamp, frame_index, episode_index, index,
                                                task_index, observation.state, action
    videos/observation.images.<cam>/chunk-CCC/file-FFF.mp4

Deviations from what LeRobot itself writes (readers that follow the episode metadata, LeRobot's
included, are unaffected):
- Every episode gets its own data file and its own mp4 per camera (file index = episode index,
  chunk index = episode index // chunks_size); LeRobot packs several episodes per file up to
  data/video_files_size_in_mb. v3 allows both; our own reader follows the episode offsets.
- Default codec: libx264 (h264, yuv420p, GOP ``gop``) rather than libsvtav1, because three
  480x640 streams at 50 Hz must encode in real time on a 2-core CPU. ``vcodec="libsvtav1"`` works.
- No pandas is installed, so meta/tasks.parquet is written with pyarrow plus pandas metadata that
  makes ``pd.read_parquet`` index it by task string, as LeRobot expects; the data parquet carries
  no embedded Hugging Face ``datasets`` schema (LeRobot loads it with the features from info.json).
- Stats carry LeRobot's keys (min, max, mean, std, count, q01, q10, q50, q90, q99) in the same
  columns and types as LeRobot's, so LeRobot can append to the dataset and reload it. Per-episode
  stats are exact: vectors by numpy, images from 256-bin histograms of every pixel of every frame
  (LeRobot samples ~100 frames and downscales). Dataset-level quantiles are the count-weighted mean
  of the episodes' quantiles, as LeRobot aggregates them.
- Timestamps are the capture times rounded to the 1/fps grid (see LeRobotWriter), so a dropped
  frame shows as a gap; LeRobot's own recorder accepts explicit timestamps the same way.

Crash safety: an episode's files are encoded into ``.staging/`` and moved into place only when
complete; the commit point is the atomic replace of the episodes parquet. ``kill -9`` at any
moment therefore loses at most the episode being saved. Reopening a dataset drops files that no
committed episode references and rewrites info/stats/tasks from the episode metadata, which is the
source of truth (our reader trusts it over info.json totals for the same reason).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 500
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
STAGING_DIR = ".staging"
TASKS_INDEX_COLUMN = "__index_level_0__"  # where pandas keeps an unnamed index
STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."
INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
REQUIRED_EPISODE_COLUMNS = (
    "episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
    "dataset_from_index", "dataset_to_index",
)
VIDEO_EPISODE_FIELDS = ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
# A frame's time is matched to its timestamp within this fraction of a frame period.
TIME_TOLERANCE_FRAMES = 0.25
# LeRobot's per-feature stat keys (compute_stats.py, 0.4.x): quantile q is stored as "q%02d" % (100 q).
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
STAT_KEYS = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)


class DatasetError(ValueError):
    """A dataset on disk is missing, malformed or inconsistent; the message names the file."""


def camera_key(camera: str) -> str:
    return IMAGE_PREFIX + camera


def pick_video_codec() -> str:
    """The fastest codec this PyAV build can encode that LeRobot's decoders read."""
    for name in ("libx264", "libsvtav1", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises several types for an absent encoder
            continue
    raise RuntimeError("this PyAV build has no usable video encoder (tried libx264, libsvtav1, h264, mpeg4)")


# --------------------------------------------------------------------------------------------
# Small file helpers


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write beside the target, fsync, then rename: readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj) -> None:
    _atomic_write_bytes(path, json.dumps(obj, indent=4).encode())


def _atomic_write_table(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    _atomic_write_bytes(path, sink.getvalue().to_pybytes())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_table(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file is missing") from None
    except (pa.ArrowException, OSError) as err:
        raise DatasetError(f"{path}: not a readable parquet file ({err})") from None


def _tasks_table(tasks: Sequence[str]) -> pa.Table:
    """tasks.parquet as LeRobot writes it: a pandas frame {task_index} indexed by the task string,
    the index unnamed, so pandas stores it in ``__index_level_0__``."""
    pandas_meta = {
        "index_columns": [TASKS_INDEX_COLUMN],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                            "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": None, "field_name": TASKS_INDEX_COLUMN, "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    schema = pa.schema([("task_index", pa.int64()), (TASKS_INDEX_COLUMN, pa.string())],
                       metadata={b"pandas": json.dumps(pandas_meta).encode()})
    return pa.table({"task_index": list(range(len(tasks))), TASKS_INDEX_COLUMN: list(tasks)}, schema=schema)


# --------------------------------------------------------------------------------------------
# Statistics


def _vector_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Exact per-column stats with LeRobot's keys. min/max keep the column's dtype (LeRobot's
    integer columns have integer min/max); quantiles interpolate linearly (numpy's default)."""
    values = np.asarray(values)
    if values.ndim == 1:
        values = values[:, None]
    wide = values.astype(np.float64)
    stats = {"min": values.min(0), "max": values.max(0), "mean": wide.mean(0), "std": wide.std(0),
             "count": np.array([len(values)])}
    for key, q in zip(QUANTILE_KEYS, QUANTILES):
        stats[key] = np.quantile(wide, q, axis=0)
    return stats


def _add_pixel_histograms(histograms: np.ndarray, image: np.ndarray) -> None:
    """Count an RGB uint8 image's pixels into (3, 256) per-channel histograms (~1.7 ms at 640x480)."""
    for channel in range(3):
        histograms[channel] += cv2.calcHist([image], [channel], None, [256], [0, 256]).ravel().astype(np.int64)


def _histogram_quantile(histogram: np.ndarray, q: float) -> float:
    """np.quantile(pixels, q) (linear interpolation) of the pixels a 256-bin histogram counts."""
    cumulative = np.cumsum(histogram)
    position = q * (cumulative[-1] - 1)
    below, above = int(np.floor(position)), int(np.ceil(position))
    low = int(np.searchsorted(cumulative, below, side="right"))   # value of the below-th pixel
    high = int(np.searchsorted(cumulative, above, side="right"))
    return low + (position - below) * (high - low)


def _image_stats(histograms: np.ndarray, frames: int) -> dict[str, np.ndarray]:
    """Exact per-channel stats in [0, 1], shaped (3, 1, 1) like LeRobot's, from (3, 256) pixel
    histograms of every pixel of every frame; count = frames, as LeRobot counts images."""
    levels = np.arange(256, dtype=np.float64)
    totals = histograms.sum(1).astype(np.float64)
    mean = histograms @ levels / totals
    variance = np.maximum(histograms @ levels ** 2 / totals - mean ** 2, 0.0)
    stats = {
        "min": np.array([np.flatnonzero(h)[0] for h in histograms], dtype=np.float64),
        "max": np.array([np.flatnonzero(h)[-1] for h in histograms], dtype=np.float64),
        "mean": mean, "std": np.sqrt(variance),
    }
    for key, q in zip(QUANTILE_KEYS, QUANTILES):
        stats[key] = np.array([_histogram_quantile(h, q) for h in histograms])
    result = {key: (value / 255.0).reshape(3, 1, 1) for key, value in stats.items()}
    result["count"] = np.array([frames])
    return {key: result[key] for key in STAT_KEYS}


def aggregate_stats(per_episode: Sequence[dict[str, dict[str, np.ndarray]]]) -> dict:
    """Dataset stats from per-episode stats, as LeRobot aggregates them: exact min/max, count-
    weighted mean, pooled variance; each quantile the count-weighted mean of the episodes'
    quantiles (an approximation, exact when the episodes share one distribution)."""
    result: dict[str, dict[str, np.ndarray]] = {}
    for key in per_episode[0] if per_episode else ():
        parts = [ep[key] for ep in per_episode if key in ep]
        counts = np.array([float(p["count"][0]) for p in parts])
        weights = counts / counts.sum()
        means = np.stack([p["mean"] for p in parts])
        shape = (-1,) + (1,) * (means.ndim - 1)
        mean = (means * weights.reshape(shape)).sum(0)
        second = ((np.stack([p["std"] for p in parts]) ** 2 + means ** 2) * weights.reshape(shape)).sum(0)
        result[key] = {
            "min": np.min(np.stack([p["min"] for p in parts]), 0),
            "max": np.max(np.stack([p["max"] for p in parts]), 0),
            "mean": mean,
            "std": np.sqrt(np.maximum(second - mean ** 2, 0.0)),
            "count": np.array([int(counts.sum())]),
        }
        for q in QUANTILE_KEYS:
            if all(q in p for p in parts):
                result[key][q] = (np.stack([p[q] for p in parts]) * weights.reshape(shape)).sum(0)
    return result


def _stats_to_json(stats: dict) -> dict:
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def _episode_stats_from_row(row: dict) -> dict[str, dict[str, np.ndarray]]:
    stats: dict[str, dict[str, np.ndarray]] = {}
    for column, value in row.items():
        if column.startswith("stats/") and value is not None:
            feature, stat = column[len("stats/"):].rsplit("/", 1)
            stats.setdefault(feature, {})[stat] = np.asarray(value, dtype=np.float64)
    return stats


# --------------------------------------------------------------------------------------------
# Video


class _StreamEncoder:
    """Encodes one camera's frames on its own thread while the episode is recorded, so that the
    sampling loop only enqueues and a save only has to flush the tail."""

    def __init__(self, path: Path, width: int, height: int, fps: int, codec: str, options: dict):
        self.path, self.width, self.height = path, width, height
        self.frames_encoded = 0
        self.histograms = np.zeros((3, 256), dtype=np.int64)  # every pixel of every frame, per channel
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._next_pts = 0
        self._abort = False
        self._container = av.open(str(path), "w", format="mp4")
        stream = self._container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = options
        self._stream = stream
        self._thread = threading.Thread(target=self._run, name=f"encode-{path.name}", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def put(self, image: np.ndarray, pts: int | None = None) -> None:
        """Queue a frame shown at ``pts`` frame periods (default: right after the previous one)."""
        if pts is None:
            pts = self._next_pts
        self._next_pts = pts + 1
        self._queue.put((image, pts))

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None or self._abort:
                    break
                image, pts = item
                _add_pixel_histograms(self.histograms, image)
                yuv = cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420)
                frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
                frame.pts = pts
                for packet in self._stream.encode(frame):
                    self._container.mux(packet)
                self.frames_encoded += 1
            if not self._abort:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
        except BaseException as err:  # noqa: BLE001 - reported by finish()
            self.error = err
        finally:
            try:
                self._container.close()
            except Exception as err:  # noqa: BLE001
                self.error = self.error or err

    def finish(self) -> int:
        """Flush and close; the number of frames encoded."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise DatasetError(f"{self.path}: video encoding failed: {self.error!r}")
        return self.frames_encoded

    def abort(self) -> None:
        """Stop without flushing; safe to call after finish()."""
        if not self._thread.is_alive():
            return
        self._abort = True
        self._queue.put(None)
        self._thread.join()


def count_video_frames(path: Path) -> int:
    """Frames in an mp4 by demuxing (no decoding): what a reader will find there."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path}: no video stream")
            stream = container.streams.video[0]
            return sum(1 for packet in container.demux(stream) if packet.size)
    except DatasetError:
        raise
    except (av.FFmpegError, OSError, ValueError) as err:
        raise DatasetError(f"{path}: corrupt or unreadable video ({err})") from None


def decode_video(path: Path, from_timestamp: float, to_timestamp: float, fps: float) -> Iterator[np.ndarray]:
    """RGB frames whose time lies in [from_timestamp, to_timestamp), in order."""
    tolerance = TIME_TOLERANCE_FRAMES / fps
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise DatasetError(f"{path}: corrupt or unreadable video ({err})") from None
    with container:
        if not container.streams.video:
            raise DatasetError(f"{path}: no video stream")
        stream = container.streams.video[0]
        try:
            if from_timestamp > tolerance:
                container.seek(int(from_timestamp / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                t = float(frame.pts * stream.time_base)
                if t < from_timestamp - tolerance:
                    continue
                if t >= to_timestamp - tolerance:
                    break
                yield frame.to_ndarray(format="rgb24")
        except (av.FFmpegError, ValueError) as err:
            raise DatasetError(f"{path}: corrupt video, decoding failed ({err})") from None


# --------------------------------------------------------------------------------------------
# Writer


@dataclass
class SaveResult:
    episode_index: int
    length: int
    task: str
    seconds: float  # from save_episode() to commit
    data_path: Path
    video_paths: dict[str, Path]
    missing_frames: int = 0     # frame periods with no frame between the first and the last
    grippers_clipped: int = 0   # gripper entries moved into [0, 1]


@dataclass
class _EpisodeBuffer:
    task: str
    staging: Path
    encoders: dict[str, _StreamEncoder]
    states: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    slots: list = field(default_factory=list)  # frame periods since the first frame
    first_timestamp: float | None = None
    last_timestamp: float | None = None
    grippers_clipped: int = 0


GRIPPER_POLICIES = ("clip", "refuse")


def _short(values: np.ndarray) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


class LeRobotWriter:
    """Appends episodes to a LeRobotDataset v3.0 directory.

    add_frame only validates, copies and enqueues (per-camera encoder threads do the work while
    recording); save_episode hands the episode to one worker thread that flushes, checks that every
    video has exactly as many frames as the table has rows, and commits. Saves commit in call order.

    Time is kept honest: a frame's ``timestamp`` is its capture time rounded to the frame grid
    (k / fps, k counted from the episode's first frame), in the table and in the video alike. A
    dropped frame therefore leaves a visible gap (a timestamp step of 2 / fps or more) instead of
    being hidden by evenly spaced stamps; frame_index still counts rows, as LeRobot's does, and
    training never pairs frames across such a gap (see vla_ros.policy.batches).

    ``gripper_indices`` (entries of state and action normalised to [0, 1]): a value outside that
    range is clipped and counted with a warning (``gripper_out_of_range="clip"``), or the frame is
    refused with a ValueError (``"refuse"``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        fps: int,
        robot_type: str,
        state_names: Sequence[str],
        action_names: Sequence[str],
        cameras: Mapping[str, tuple[int, int]],
        *,
        vcodec: str | None = None,
        gop: int = 10,
        crf: int = 23,
        gripper_indices: Sequence[int] = (),
        gripper_out_of_range: str = "clip",
    ):
        if gripper_out_of_range not in GRIPPER_POLICIES:
            raise ValueError(f"gripper_out_of_range must be one of {GRIPPER_POLICIES}, got {gripper_out_of_range!r}")
        if any(not 0 <= i < min(len(state_names), len(action_names)) for i in gripper_indices):
            raise ValueError(f"gripper_indices {list(gripper_indices)} out of range for {len(state_names)} entries")
        self.gripper_indices = np.array(sorted(gripper_indices), dtype=np.int64)
        self.gripper_out_of_range = gripper_out_of_range
        if int(fps) != fps or fps <= 0:
            raise ValueError(f"fps must be a positive integer, got {fps}")
        if not state_names or not action_names:
            raise ValueError("state_names and action_names must be non-empty")
        for cam, (h, w) in cameras.items():
            if h <= 0 or w <= 0 or h % 2 or w % 2:
                raise ValueError(f"camera {cam!r}: height and width must be positive and even (yuv420p), got {h}x{w}")
        self.root = Path(root)
        self.fps = int(fps)
        self.robot_type = robot_type
        self.state_names = tuple(state_names)
        self.action_names = tuple(action_names)
        self.cameras = {name: (int(h), int(w)) for name, (h, w) in cameras.items()}
        self.vcodec = vcodec or pick_video_codec()
        self._video_options = self._codec_options(self.vcodec, gop, crf)
        self.features = self._features()
        self._commit_lock = threading.Lock()
        self._episode: _EpisodeBuffer | None = None
        self._pending: list[Future] = []
        self._closed = False
        self._episodes: list[dict] = []
        self._tasks: list[str] = []
        self.root.mkdir(parents=True, exist_ok=True)
        # Two writers appending to one dataset would both claim the next episode index.
        self._lock_file = open(self.root / ".writer.lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._recover()
        except BlockingIOError:
            self._lock_file.close()
            raise DatasetError(f"{self.root}: another writer has this dataset open") from None
        except BaseException:
            self._lock_file.close()
            raise
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lerobot-save")

    @classmethod
    def for_profile(cls, root, profile, fps: int | None = None, **kwargs) -> "LeRobotWriter":
        """State/action names, cameras and gripper entries from a RobotProfile; fps defaults to its
        control rate."""
        kwargs.setdefault("gripper_indices", profile.gripper_indices)
        return cls(root, fps or int(round(profile.control_rate_hz)), profile.name,
                   profile.vector_names, profile.vector_names,
                   {c.name: (c.height, c.width) for c in profile.cameras}, **kwargs)

    # -- public API --------------------------------------------------------------------------

    @property
    def num_episodes(self) -> int:
        """Committed episodes."""
        return len(self._episodes)

    @property
    def recording(self) -> bool:
        return self._episode is not None

    @property
    def encoder_backlog(self) -> int:
        """Frames queued but not yet encoded in the current episode (all cameras)."""
        return sum(e.backlog for e in self._episode.encoders.values()) if self._episode else 0

    def start_episode(self, task: str) -> None:
        self._check_open()
        if self._episode is not None:
            raise RuntimeError("an episode is already being recorded; save or discard it first")
        if not isinstance(task, str) or not task.strip():
            raise ValueError("task must be a non-empty string")
        staging = self.root / STAGING_DIR / uuid.uuid4().hex
        staging.mkdir(parents=True)
        encoders = {}
        try:
            for cam, (h, w) in self.cameras.items():
                encoders[cam] = _StreamEncoder(staging / f"{cam}.mp4", w, h, self.fps, self.vcodec, self._video_options)
        except Exception:
            for enc in encoders.values():
                enc.abort()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._episode = _EpisodeBuffer(task, staging, encoders)

    def add_frame(self, state, action, images: Mapping[str, np.ndarray], timestamp: float | None = None) -> None:
        """Append one frame captured at ``timestamp`` (s, any origin; it must increase by at least
        half a frame period). Without timestamps frames are taken as consecutive, one per period.
        The stored time is the number of whole frame periods since the episode's first frame."""
        ep = self._episode
        if ep is None:
            raise RuntimeError("add_frame called with no episode started")
        state = np.asarray(state, dtype=np.float32).reshape(-1)
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if state.shape[0] != len(self.state_names):
            raise ValueError(f"state has {state.shape[0]} entries, expected {len(self.state_names)}")
        if action.shape[0] != len(self.action_names):
            raise ValueError(f"action has {action.shape[0]} entries, expected {len(self.action_names)}")
        if set(images) != set(self.cameras):
            raise ValueError(f"images for cameras {sorted(images)}, expected {sorted(self.cameras)}")
        for cam, image in images.items():
            h, w = self.cameras[cam]
            if image.shape != (h, w, 3) or image.dtype != np.uint8:
                raise ValueError(f"camera {cam!r}: expected uint8 image of shape {(h, w, 3)}, got {image.dtype} {image.shape}")
        if self.gripper_indices.size:
            state, action = self._check_grippers(ep, state), self._check_grippers(ep, action)
        if timestamp is None:
            slot = ep.slots[-1] + 1 if ep.slots else 0
        else:
            timestamp = float(timestamp)
            if not np.isfinite(timestamp):
                raise ValueError(f"timestamp {timestamp} is not finite")
            if ep.last_timestamp is not None and timestamp <= ep.last_timestamp:
                raise ValueError(f"timestamp {timestamp} does not increase (previous {ep.last_timestamp})")
            if ep.first_timestamp is None:
                ep.first_timestamp = timestamp
            slot = int(round((timestamp - ep.first_timestamp) * self.fps))
            if ep.slots and slot <= ep.slots[-1]:
                raise ValueError(f"timestamp {timestamp} falls in the frame period of the previous frame "
                                 f"({ep.last_timestamp}); frames must be about 1/{self.fps} s apart")
            ep.last_timestamp = timestamp
        for cam, image in images.items():
            ep.encoders[cam].put(np.array(image, copy=True), slot)
        ep.states.append(state)
        ep.actions.append(action)
        ep.slots.append(slot)

    def _check_grippers(self, ep: _EpisodeBuffer, vector: np.ndarray) -> np.ndarray:
        values = vector[self.gripper_indices]
        outside = ~((values >= 0.0) & (values <= 1.0))
        if not outside.any():
            return vector
        if self.gripper_out_of_range == "refuse" or not np.all(np.isfinite(values)):
            raise ValueError(f"normalised gripper value(s) [{_short(values[outside])}] outside [0, 1] (entries "
                             f"{self.gripper_indices[outside].tolist()}): check the profile's gripper maps")
        if ep.grippers_clipped == 0:
            log.warning("normalised gripper value(s) [%s] outside [0, 1] clipped (entries %s); check the "
                        "profile's gripper maps", _short(values[outside]), self.gripper_indices[outside].tolist())
        ep.grippers_clipped += int(outside.sum())
        vector = vector.copy()
        vector[self.gripper_indices] = np.clip(values, 0.0, 1.0)
        return vector

    def save_episode(self, block: bool = False) -> Future:
        """Hand the current episode to the save worker; returns a Future of SaveResult (already
        resolved when block=True). Raises ValueError for an episode with no frames."""
        ep = self._episode
        if ep is None:
            raise RuntimeError("save_episode called with no episode started")
        if not ep.states:
            raise ValueError("cannot save an empty episode (no frames added); discard it instead")
        self._episode = None
        started = time.monotonic()
        future = self._executor.submit(self._save, ep, started)
        self._pending = [f for f in self._pending if not f.done()] + [future]
        if block:
            future.result()
        return future

    def discard_episode(self) -> None:
        ep = self._episode
        if ep is None:
            return
        self._episode = None
        for enc in ep.encoders.values():
            enc.abort()
        shutil.rmtree(ep.staging, ignore_errors=True)

    def wait(self) -> None:
        """Block until every save handed over so far has committed or failed (errors re-raised)."""
        for future in list(self._pending):
            future.result()

    def close(self) -> None:
        """Finish pending saves; an episode still being recorded is discarded."""
        if self._closed:
            return
        if self._episode is not None:
            log.warning("closing with an unsaved episode (%d frames): discarded", len(self._episode.states))
            self.discard_episode()
        self._executor.shutdown(wait=True)
        self._closed = True
        shutil.rmtree(self.root / STAGING_DIR, ignore_errors=True)
        self._lock_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("writer is closed")

    @staticmethod
    def _codec_options(codec: str, gop: int, crf: int) -> dict:
        options = {"g": str(gop), "crf": str(crf)}
        if codec == "libx264":
            options.update(preset="ultrafast", tune="zerolatency")
        elif codec == "libsvtav1":
            options.update(preset="12")
        return options

    def _features(self) -> dict:
        codec_name = av.codec.Codec(self.vcodec, "w").canonical_name  # "h264", "av1": what ffprobe reports
        features = {
            STATE_KEY: {"dtype": "float32", "shape": [len(self.state_names)], "names": list(self.state_names)},
            ACTION_KEY: {"dtype": "float32", "shape": [len(self.action_names)], "names": list(self.action_names)},
        }
        for cam, (h, w) in self.cameras.items():
            features[camera_key(cam)] = {
                "dtype": "video",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": h, "video.width": w, "video.codec": codec_name,
                    "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                    "video.fps": self.fps, "video.channels": 3, "has_audio": False,
                },
            }
        features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
        for name in INDEX_COLUMNS[1:]:
            features[name] = {"dtype": "int64", "shape": [1], "names": None}
        return features

    def _info(self) -> dict:
        total_frames = int(self._episodes[-1]["dataset_to_index"]) if self._episodes else 0
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._episodes),
            "total_frames": total_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
            "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.cameras else None,
            "features": self.features,
        }

    def _recover(self) -> None:
        """Load committed episodes, drop leftovers of an interrupted save, rewrite derived meta."""
        info_path = self.root / INFO_PATH
        if info_path.exists():
            info = _load_info(info_path)
            if info.get("fps") != self.fps:
                raise DatasetError(f"{info_path}: dataset fps {info.get('fps')} != writer fps {self.fps}")
            ours = {k: (v["dtype"], list(v["shape"]), v.get("names")) for k, v in self.features.items()}
            theirs = {k: (v.get("dtype"), list(v.get("shape", [])), v.get("names")) for k, v in info.get("features", {}).items()}
            if ours != theirs:
                diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
                raise DatasetError(f"{info_path}: existing dataset has different features ({', '.join(diff)}) than this writer")
        episodes_path = self.root / EPISODES_PATH
        other_meta = set((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet")) - {episodes_path}
        if other_meta:
            raise DatasetError(f"{sorted(other_meta)[0]}: episode metadata split over several files "
                               "(written by another tool); appending to it is not supported")
        if episodes_path.exists():
            self._episodes = _read_table(episodes_path).to_pylist()
        for row in self._episodes:
            own = divmod(row["episode_index"], CHUNKS_SIZE)
            files = [(row["data/chunk_index"], row["data/file_index"])] + [
                (row[f"videos/{camera_key(c)}/chunk_index"], row[f"videos/{camera_key(c)}/file_index"]) for c in self.cameras]
            if any(f != own for f in files):
                raise DatasetError(f"{episodes_path}: episode {row['episode_index']} is not stored one file per "
                                   "episode (written by another tool); appending would overwrite its files")
        for row in self._episodes:
            for task in row["tasks"]:
                if task not in self._tasks:
                    self._tasks.append(task)
        shutil.rmtree(self.root / STAGING_DIR, ignore_errors=True)
        referenced = {self.root / self._data_path(r) for r in self._episodes}
        referenced |= {self.root / self._video_path(r, cam) for r in self._episodes for cam in self.cameras}
        for pattern in ("data/*/*.parquet", "videos/*/*/*.mp4"):
            for path in self.root.glob(pattern):
                if path not in referenced:
                    log.warning("removing %s: left over from an interrupted save", path)
                    path.unlink()
        for path in self.root.glob("**/.*.tmp"):
            path.unlink()
        self._complete_stats(episodes_path)
        self._write_derived_meta()

    def _with_stats(self, row: dict, table: pa.Table, histograms: Mapping[str, np.ndarray]) -> dict:
        """The episode row with its stats columns, in LeRobot's column order: the episode's
        columns, stats by feature (info.json order), then where its metadata row lives."""
        stats = {name: _vector_stats(table.column(name).to_numpy()) for name in INDEX_COLUMNS}
        for name in (STATE_KEY, ACTION_KEY):
            values = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            stats[name] = _vector_stats(values.reshape(table.num_rows, -1))
        for cam, counts in histograms.items():
            stats[camera_key(cam)] = _image_stats(counts, table.num_rows)
        result = {k: v for k, v in row.items() if not k.startswith(("stats/", "meta/episodes/"))}
        for feature in self.features:
            for stat in STAT_KEYS:
                result[f"stats/{feature}/{stat}"] = np.asarray(stats[feature][stat]).tolist()
        result["meta/episodes/chunk_index"] = 0
        result["meta/episodes/file_index"] = 0
        return result

    def _complete_stats(self, episodes_path: Path) -> None:
        """Give episodes written before vla_ros stored quantiles the stats LeRobot writes (decoding
        their videos once): LeRobot cannot reload a dataset whose episode files differ in columns."""
        outdated = [i for i, r in enumerate(self._episodes) if any(
            f"stats/{feature}/{stat}" not in r for feature in self.features for stat in STAT_KEYS)]
        if not outdated:
            return
        log.warning("%s: computing LeRobot's full stats (quantiles) for %d episode(s) written without them",
                    self.root, len(outdated))
        reader = LeRobotDataset(self.root)
        for i in outdated:
            row = self._episodes[i]
            table = reader._data_table(row)[1]
            start = int(np.searchsorted(table.column("index").to_numpy(), row["dataset_from_index"]))
            histograms = {}
            for cam in self.cameras:
                histograms[cam] = np.zeros((3, 256), dtype=np.int64)
                for image in reader.video_frames(i, cam):
                    _add_pixel_histograms(histograms[cam], image)
            self._episodes[i] = self._with_stats(row, table.slice(start, row["length"]), histograms)
        _atomic_write_table(episodes_path, pa.Table.from_pylist(self._episodes))

    def _write_derived_meta(self) -> None:
        _atomic_write_table(self.root / TASKS_PATH, _tasks_table(self._tasks))
        stats = aggregate_stats([_episode_stats_from_row(r) for r in self._episodes])
        _atomic_write_json(self.root / STATS_PATH, _stats_to_json(stats))
        _atomic_write_json(self.root / INFO_PATH, self._info())

    @staticmethod
    def _data_path(row: dict) -> str:
        return DATA_PATH.format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])

    @staticmethod
    def _video_path(row: dict, cam: str) -> str:
        key = camera_key(cam)
        return VIDEO_PATH.format(video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                                 file_index=row[f"videos/{key}/file_index"])

    def _save(self, ep: _EpisodeBuffer, started: float) -> SaveResult:
        try:
            return self._finish_and_commit(ep, started)
        except BaseException:
            for enc in ep.encoders.values():
                enc.abort()
            shutil.rmtree(ep.staging, ignore_errors=True)
            log.exception("saving an episode of %d frames failed; it was not committed", len(ep.states))
            raise

    def _finish_and_commit(self, ep: _EpisodeBuffer, started: float) -> SaveResult:
        length = len(ep.states)
        for cam, enc in ep.encoders.items():
            encoded = enc.finish()
            in_file = count_video_frames(enc.path)
            if not encoded == in_file == length:
                raise DatasetError(
                    f"camera {cam!r}: video has {in_file} frames ({encoded} encoded) but the episode has "
                    f"{length} rows; episode not saved")
        states, actions = np.stack(ep.states), np.stack(ep.actions)
        frame_index = np.arange(length, dtype=np.int64)
        slots = np.asarray(ep.slots, dtype=np.int64)
        timestamps = (slots / self.fps).astype(np.float32)
        duration = (int(slots[-1]) + 1) / self.fps
        with self._commit_lock:
            episode_index = len(self._episodes)
            first = int(self._episodes[-1]["dataset_to_index"]) if self._episodes else 0
            if ep.task not in self._tasks:
                self._tasks.append(ep.task)
            task_index = self._tasks.index(ep.task)
            n = len(self.state_names)
            table = pa.table({
                STATE_KEY: pa.FixedSizeListArray.from_arrays(pa.array(states.reshape(-1)), n),
                ACTION_KEY: pa.FixedSizeListArray.from_arrays(pa.array(actions.reshape(-1)), len(self.action_names)),
                "timestamp": pa.array(timestamps),
                "frame_index": pa.array(frame_index),
                "episode_index": pa.array(np.full(length, episode_index, dtype=np.int64)),
                "index": pa.array(first + frame_index),
                "task_index": pa.array(np.full(length, task_index, dtype=np.int64)),
            })
            chunk, file = divmod(episode_index, CHUNKS_SIZE)
            row = {
                "episode_index": episode_index,
                "tasks": [ep.task],
                "length": length,
                "data/chunk_index": chunk,
                "data/file_index": file,
                "dataset_from_index": first,
                "dataset_to_index": first + length,
            }
            for cam in self.cameras:
                key = camera_key(cam)
                row.update({f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                            f"videos/{key}/from_timestamp": 0.0, f"videos/{key}/to_timestamp": duration})
            row = self._with_stats(row, table, {cam: enc.histograms for cam, enc in ep.encoders.items()})

            data_path = self.root / self._data_path(row)
            staged_data = ep.staging / "data.parquet"
            pq.write_table(table, staged_data)
            video_paths = {cam: self.root / self._video_path(row, cam) for cam in self.cameras}
            moves = [(staged_data, data_path)] + [(ep.encoders[c].path, p) for c, p in video_paths.items()]
            for src, dst in moves:
                with open(src, "rb") as f:
                    os.fsync(f.fileno())
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
                _fsync_dir(dst.parent)
            # Tasks first (an unused extra task is harmless), then the commit point, then the rest.
            _atomic_write_table(self.root / TASKS_PATH, _tasks_table(self._tasks))
            _atomic_write_table(self.root / EPISODES_PATH, pa.Table.from_pylist(self._episodes + [row]))
            self._episodes.append(row)
            _atomic_write_json(self.root / STATS_PATH, _stats_to_json(
                aggregate_stats([_episode_stats_from_row(r) for r in self._episodes])))
            _atomic_write_json(self.root / INFO_PATH, self._info())
        shutil.rmtree(ep.staging, ignore_errors=True)
        if ep.grippers_clipped:
            log.warning("episode %d: %d gripper value(s) outside [0, 1] were clipped", episode_index, ep.grippers_clipped)
        return SaveResult(episode_index, length, ep.task, time.monotonic() - started, data_path, video_paths,
                          missing_frames=int(slots[-1]) + 1 - length, grippers_clipped=ep.grippers_clipped)


# --------------------------------------------------------------------------------------------
# Reader


def _load_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing; not a LeRobot dataset") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(info, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise DatasetError(f"{path}: codebase_version {version!r}, only {CODEBASE_VERSION!r} is supported")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise DatasetError(f"{path}: missing key {key!r}")
    return info


def flat_names(names, source: Path, key: str) -> list[str] | None:
    """A feature's entry names as one list. LeRobot also writes them as a dict of lists (older
    ALOHA datasets: ``{"motors": [...]}``); the lists, in order, are the names."""
    if names is None:
        return None
    if isinstance(names, dict):
        names = [name for group in names.values() for name in (group if isinstance(group, list) else [group])]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{source}: feature {key!r} names must be a list of strings or a dict of such lists, "
                           f"got {names!r}")
    return names


def read_tasks(path: Path) -> dict[int, str]:
    """task_index -> task string from meta/tasks.parquet. LeRobot writes a pandas frame indexed
    by the task string: the strings are then in the index column (``__index_level_0__`` when
    unnamed, named in the file's pandas metadata), not in a "task" column."""
    table = _read_table(path)
    column = "task" if "task" in table.column_names else None
    if column is None and table.schema.metadata and b"pandas" in table.schema.metadata:
        try:
            index_columns = json.loads(table.schema.metadata[b"pandas"]).get("index_columns", [])
        except (json.JSONDecodeError, AttributeError):
            index_columns = []
        column = next((c for c in index_columns if isinstance(c, str) and c in table.column_names), None)
    if column is None or "task_index" not in table.column_names:
        raise DatasetError(f"{path}: expected a task_index column and the task strings (a 'task' column or "
                           f"the pandas index); found columns {table.column_names}")
    indices = table.column("task_index").to_pylist()
    if len(set(indices)) != len(indices) or None in indices:
        raise DatasetError(f"{path}: task_index values {indices} are not unique")
    return dict(sorted(zip(indices, table.column(column).to_pylist())))


@dataclass
class Episode:
    index: int
    task: str
    state: np.ndarray       # (N, state_dim) float32
    action: np.ndarray      # (N, action_dim) float32
    timestamps: np.ndarray  # (N,) float32, seconds from the episode start
    frame_index: np.ndarray
    global_index: np.ndarray
    frame_tasks: list[str] | None = None  # per frame, when the task changes within the episode

    def __len__(self) -> int:
        return len(self.timestamps)

    def task_at(self, i: int) -> str:
        return self.frame_tasks[i] if self.frame_tasks else self.task


@dataclass
class Frame:
    episode_index: int
    frame_index: int
    index: int
    timestamp: float
    task: str
    state: np.ndarray
    action: np.ndarray
    images: dict[str, np.ndarray]  # camera name -> (H, W, 3) uint8 RGB


class LeRobotDataset:
    """Reads a LeRobotDataset v3.0 directory, following the episode metadata offsets.

    ``profile`` (a RobotProfile), when given, is checked against the dataset: state/action
    dimensions and names and the presence of every camera.
    """

    def __init__(self, root: str | os.PathLike, profile=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset directory does not exist")
        self.info = _load_info(self.root / INFO_PATH)
        self.fps = float(self.info["fps"])
        self.features: dict = self.info["features"]
        for key in (STATE_KEY, ACTION_KEY):
            if key not in self.features:
                raise DatasetError(f"{self.root / INFO_PATH}: feature {key!r} missing")
        for key in (STATE_KEY, ACTION_KEY):
            self.features[key] = {**self.features[key],
                                  "names": flat_names(self.features[key].get("names"), self.root / INFO_PATH, key)}
        self.camera_keys = [k for k, v in self.features.items() if v.get("dtype") in ("video", "image")]
        self.cameras = [k[len(IMAGE_PREFIX):] if k.startswith(IMAGE_PREFIX) else k for k in self.camera_keys]
        self._feature_keys = dict(zip(self.cameras, self.camera_keys))
        # LeRobot's "image" features (use_videos=False): PNG bytes in the data parquet, no video
        self._image_keys = {k for k in self.camera_keys if self.features[k]["dtype"] == "image"}
        self._episodes = self._load_episodes()
        self._task_by_index = read_tasks(self.root / TASKS_PATH) if (self.root / TASKS_PATH).exists() else {}
        self.tasks = list(self._task_by_index.values())  # in task_index order
        self._data_cache: tuple[Path, pa.Table] | None = None
        if profile is not None:
            self.check_profile(profile)

    def _load_episodes(self) -> list[dict]:
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetError(f"{self.root / 'meta/episodes'}: no episode metadata parquet files")
        rows: list[dict] = []
        required = list(REQUIRED_EPISODE_COLUMNS) + [
            f"videos/{k}/{f}" for k in self.camera_keys if k not in self._image_keys for f in VIDEO_EPISODE_FIELDS]
        for path in files:
            table = _read_table(path)
            missing = [c for c in required if c not in table.column_names]
            if missing:
                raise DatasetError(f"{path}: missing episode columns {missing}")
            rows.extend(table.select(required).to_pylist())
        rows.sort(key=lambda r: r["episode_index"])
        if [r["episode_index"] for r in rows] != list(range(len(rows))):
            raise DatasetError(f"{files[0].parent.parent}: episode indices are not 0..{len(rows) - 1}")
        for row in rows:
            if row["length"] <= 0 or row["dataset_to_index"] - row["dataset_from_index"] != row["length"]:
                raise DatasetError(f"episode {row['episode_index']} is empty or its index range "
                                   f"[{row['dataset_from_index']}, {row['dataset_to_index']}) disagrees with length {row['length']}")
        return rows

    # -- metadata ----------------------------------------------------------------------------

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def num_frames(self) -> int:
        return sum(r["length"] for r in self._episodes)

    def episode_meta(self, index: int) -> dict:
        if not 0 <= index < len(self._episodes):
            raise IndexError(f"episode {index} out of range (dataset has {len(self._episodes)})")
        return self._episodes[index]

    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        path = self.root / STATS_PATH
        try:
            raw = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError) as err:
            raise DatasetError(f"{path}: missing or invalid ({err})") from None
        return {k: {s: np.asarray(v) for s, v in d.items()} for k, d in raw.items()}

    def check_profile(self, profile) -> None:
        for key in (STATE_KEY, ACTION_KEY):
            feature = self.features[key]
            shape = list(feature.get("shape", []))
            if shape != [profile.action_dim]:
                raise DatasetError(f"{self.root}: {key} has shape {shape} but profile {profile.name!r} "
                                   f"has a {profile.action_dim}-dim vector")
            names = feature.get("names")
            if names is not None and list(names) != list(profile.vector_names):
                raise DatasetError(f"{self.root}: {key} names {names} differ from profile {profile.name!r} "
                                   f"vector names {list(profile.vector_names)} (joint order mismatch)")
        missing = [c for c in profile.camera_names if c not in self.cameras]
        if missing:
            raise DatasetError(f"{self.root}: cameras {missing} of profile {profile.name!r} are not in the "
                               f"dataset (it has {self.cameras})")

    # -- data --------------------------------------------------------------------------------

    def _data_table(self, row: dict) -> tuple[Path, pa.Table]:
        path = self.root / self.info["data_path"].format(
            chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
        if self._data_cache is None or self._data_cache[0] != path:
            table = _read_table(path)
            required = [STATE_KEY, ACTION_KEY, *INDEX_COLUMNS, *sorted(self._image_keys)]
            missing = [c for c in required if c not in table.column_names]
            if missing:
                raise DatasetError(f"{path}: missing columns {missing}")
            self._data_cache = (path, table)
        return self._data_cache

    def _episode_rows(self, index: int) -> tuple[Path, pa.Table]:
        """The data file and the table rows of one episode."""
        row = self.episode_meta(index)
        path, table = self._data_table(row)
        global_index = table.column("index").to_numpy()
        start = int(np.searchsorted(global_index, row["dataset_from_index"]))
        part = table.slice(start, row["length"])
        if part.num_rows != row["length"] or not np.array_equal(
                part.column("index").to_numpy(), np.arange(row["dataset_from_index"], row["dataset_to_index"])):
            raise DatasetError(f"{path}: rows for episode {index} (index {row['dataset_from_index']}.."
                               f"{row['dataset_to_index'] - 1}) are missing or out of order")
        return path, part

    def _decode_images(self, path: Path, column: pa.ChunkedArray, camera: str) -> Iterator[np.ndarray]:
        """RGB frames from a LeRobot image column ({bytes, path} structs; PNG bytes, or a file)."""
        for i, cell in enumerate(column.to_pylist()):
            data = (cell or {}).get("bytes")
            if data is None and (cell or {}).get("path"):
                try:
                    data = (self.root / cell["path"]).read_bytes()
                except OSError as err:
                    raise DatasetError(f"{path}: camera {camera!r} row {i}: image file unreadable ({err})") from None
            image = None if data is None else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise DatasetError(f"{path}: camera {camera!r} row {i}: missing or undecodable image")
            yield cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def feature_key(self, camera: str) -> str:
        """The feature key of a camera: observation.images.<camera>, or the whole key of a camera
        stored under another name (e.g. LeRobot's single-camera "observation.image")."""
        return self._feature_keys.get(camera, camera_key(camera))

    def frame_source(self, index: int, camera: str) -> Path:
        """The file that holds one episode's frames of ``camera``: its mp4, or for image features
        the data parquet."""
        if self.feature_key(camera) in self._image_keys:
            return self._episode_rows(index)[0]
        return self.video_path(index, camera)[0]

    def camera_frames(self, index: int, camera: str) -> tuple[Path, Iterator[np.ndarray]]:
        """(source file, iterator over one episode's RGB frames of ``camera``), decoded as they go."""
        if self.feature_key(camera) in self._image_keys:
            path, part = self._episode_rows(index)
            return path, self._decode_images(path, part.column(self.feature_key(camera)), camera)
        path, start, end = self.video_path(index, camera)
        return path, decode_video(path, start, end, self.fps)

    def episode(self, index: int) -> Episode:
        row = self.episode_meta(index)
        path, part = self._episode_rows(index)
        arrays = {}
        for key in (STATE_KEY, ACTION_KEY):
            (dim,) = self.features[key]["shape"]
            column = part.column(key).combine_chunks()
            if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)
                    or pa.types.is_large_list(column.type)):
                raise DatasetError(f"{path}: column {key!r} has type {column.type}, expected a list of {dim} floats")
            lengths = column.value_lengths().to_numpy(zero_copy_only=False)
            if np.any(lengths != dim):
                bad = int(np.flatnonzero(lengths != dim)[0])
                raise DatasetError(f"{path}: column {key!r} row {bad} of episode {index} has {lengths[bad]} "
                                   f"values, info.json says {dim}")
            arrays[key] = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
        timestamps = part.column("timestamp").to_numpy().astype(np.float32)
        task_indices = part.column("task_index").to_numpy()
        unknown = sorted(set(task_indices.tolist()) - set(self._task_by_index))
        if unknown and len(row["tasks"]) != 1:
            raise DatasetError(f"{path}: episode {index} uses task_index {unknown}, not in {self.root / TASKS_PATH}")
        frame_tasks = [self._task_by_index.get(int(i), row["tasks"][0]) for i in task_indices]
        return Episode(index, frame_tasks[0], arrays[STATE_KEY], arrays[ACTION_KEY], timestamps,
                       part.column("frame_index").to_numpy(), part.column("index").to_numpy(),
                       frame_tasks if len(set(frame_tasks)) > 1 else None)

    def video_path(self, index: int, camera: str) -> tuple[Path, float, float]:
        """(mp4 path, from_timestamp, to_timestamp) of one episode's camera stream."""
        row = self.episode_meta(index)
        key = self.feature_key(camera)
        if key not in self.camera_keys:
            raise KeyError(f"no camera {camera!r} (dataset has {self.cameras})")
        if key in self._image_keys:
            raise DatasetError(f"{self.root}: camera {camera!r} is stored as images in the data files, not as video")
        path = self.root / self.info["video_path"].format(
            video_key=key, chunk_index=row[f"videos/{key}/chunk_index"], file_index=row[f"videos/{key}/file_index"])
        if not path.is_file():
            raise DatasetError(f"{path}: video file missing for episode {index}")
        return path, float(row[f"videos/{key}/from_timestamp"]), float(row[f"videos/{key}/to_timestamp"])

    def video_frames(self, index: int, camera: str) -> np.ndarray:
        """All frames of one episode's camera, (N, H, W, 3) uint8; N checked against the table."""
        path, source = self.camera_frames(index, camera)
        frames = list(source)
        expected = self.episode_meta(index)["length"]
        if len(frames) != expected:
            row = self.episode_meta(index)
            key = f"videos/{self.feature_key(camera)}"
            raise DatasetError(f"{path}: {len(frames)} frames in [{row[key + '/from_timestamp']:.3f}, "
                               f"{row[key + '/to_timestamp']:.3f}) s for episode {index}, "
                               f"but the table has {expected} rows")
        return np.stack(frames)

    def iter_frames(self, index: int) -> Iterator[Frame]:
        """The episode frame by frame, decoding every camera in step with the table."""
        ep = self.episode(index)
        streams = {cam: self.camera_frames(index, cam) for cam in self.cameras}
        for i in range(len(ep)):
            images = {}
            for cam, (path, frames) in streams.items():
                image = next(frames, None)
                if image is None:
                    raise DatasetError(f"{path}: video ends after {i} frames but episode {index} has {len(ep)} rows")
                images[cam] = image
            yield Frame(index, int(ep.frame_index[i]), int(ep.global_index[i]), float(ep.timestamps[i]),
                        ep.task_at(i), ep.state[i], ep.action[i], images)
        for cam, (path, frames) in streams.items():
            if next(frames, None) is not None:
                raise DatasetError(f"{path}: video has more frames than episode {index}'s {len(ep)} rows")

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, index: int) -> Frame:
        """Random access by global frame index (seeks in each video)."""
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame {index} out of range (dataset has {self.num_frames})")
        starts = [r["dataset_from_index"] for r in self._episodes]
        ep_index = int(np.searchsorted(starts, index, side="right") - 1)
        ep = self.episode(ep_index)
        i = index - self._episodes[ep_index]["dataset_from_index"]
        images = {}
        for cam in self.cameras:
            if self.feature_key(cam) in self._image_keys:
                path, part = self._episode_rows(ep_index)
                images[cam] = next(self._decode_images(path, part.column(self.feature_key(cam)).slice(i, 1), cam))
                continue
            path, start, _ = self.video_path(ep_index, cam)
            t = start + float(ep.timestamps[i])
            image = next(decode_video(path, t, t + 1.0 / self.fps, self.fps), None)
            if image is None:
                raise DatasetError(f"{path}: no frame at t={t:.3f} s (episode {ep_index}, frame {i})")
            images[cam] = image
        return Frame(ep_index, int(ep.frame_index[i]), index, float(ep.timestamps[i]), ep.task_at(i),
                     ep.state[i], ep.action[i], images)

    def validate(self, decode_videos: bool = False) -> None:
        """Check every episode: table rows, timestamps on the 1/fps grid from 0 and increasing (a
        step over one period is a dropped frame, allowed), and video frame counts (by demuxing, or
        by decoding every frame with decode_videos=True). Raises DatasetError on the first problem."""
        period = 1.0 / self.fps
        for index in range(self.num_episodes):
            ep = self.episode(index)
            slots = ep.timestamps / period
            if (abs(slots[0]) > TIME_TOLERANCE_FRAMES or np.any(np.abs(slots - np.round(slots)) > TIME_TOLERANCE_FRAMES)
                    or np.any(np.diff(np.round(slots)) < 1)):
                raise DatasetError(f"episode {index}: timestamps are not increasing multiples of 1/fps from 0")
            for cam in self.cameras:
                if decode_videos or self.feature_key(cam) in self._image_keys:
                    self.video_frames(index, cam)
                    continue
                path, start, end = self.video_path(index, cam)
                if start == 0.0:
                    count = count_video_frames(path)
                    file_rows = sum(r["length"] for r in self._episodes
                                    if self.video_path(r["episode_index"], cam)[0] == path)
                    if count != file_rows:
                        raise DatasetError(f"{path}: {count} frames but its episodes have {file_rows} rows")
