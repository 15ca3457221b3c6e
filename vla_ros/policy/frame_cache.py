"""Decoded training frames on disk: datasets larger than memory, decoded once, reused by every run.

Each camera's frames, cropped and resized to the working size exactly as the in-memory path makes
them, go into one raw uint8 file, in sample order. Samples read their frames with os.preadv
straight into the batch tensor: the bytes pass through the page cache, which the kernel sizes and
evicts itself, and never count toward the process's resident memory, so peak RSS does not grow
with the dataset (a memory map would count every touched page as resident).

The cache directory is named by a hash of what determines its bytes (dataset path, episodes and
their video files' sizes and mtimes, cameras, size, crops, format version): re-recording or
re-converting a dataset, or choosing another size, makes a new cache; an unchanged dataset reuses
the old one. Building happens under a file lock (DDP ranks on one host build it once) into a
temporary directory that is renamed into place when complete, so an interrupted build is never
mistaken for a cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from vla_ros.data.lerobot import DatasetError, LeRobotDataset

log = logging.getLogger(__name__)

CACHE_VERSION = 1
BUILD_CHUNK = 256  # frames decoded and resized at a time while building
META_FILE = "cache.json"


def default_cache_root() -> Path:
    """$VLA_ROS_CACHE, else $XDG_CACHE_HOME/vla_ros/frames, else ~/.cache/vla_ros/frames."""
    if os.environ.get("VLA_ROS_CACHE"):
        return Path(os.environ["VLA_ROS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vla_ros" / "frames"


def _fingerprint(dataset: LeRobotDataset, episodes: Sequence[int], cameras: Sequence[str],
                 image_size: tuple[int, int], crops: Mapping) -> str:
    parts = {"version": CACHE_VERSION, "root": str(dataset.root.resolve()), "cameras": list(cameras),
             "size": list(image_size), "crops": {k: list(map(float, v)) for k, v in crops.items()}, "episodes": []}
    for index in episodes:
        row = dataset.episode_meta(index)
        videos = []
        for cam in cameras:
            path = dataset.frame_source(index, cam)
            stat = path.stat()
            where = {k: v for k, v in row.items() if k.startswith(f"videos/{dataset.feature_key(cam)}/")}
            videos.append([str(path), stat.st_size, stat.st_mtime_ns, where])
        parts["episodes"].append([index, row["length"], row["dataset_from_index"], videos])
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


class FrameCache:
    """Frames of ``episodes`` (in that order) for ``cameras`` at ``image_size``, read by sample number."""

    def __init__(self, dataset: LeRobotDataset, episodes: Sequence[int], cameras: Sequence[str],
                 image_size: tuple[int, int], prepare: Callable[[np.ndarray, str], np.ndarray],
                 crops: Mapping | None = None, root: str | os.PathLike | None = None):
        """prepare(frames, camera): full-size (N, H, W, 3) -> (N, h, w, 3) at the working size."""
        self.cameras = tuple(cameras)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.frame_bytes = self.image_size[0] * self.image_size[1] * 3
        self.num_frames = sum(dataset.episode_meta(i)["length"] for i in episodes)
        base = Path(root) if root is not None else default_cache_root()
        base.mkdir(parents=True, exist_ok=True)
        key = _fingerprint(dataset, episodes, self.cameras, self.image_size, dict(crops or {}))
        self.path = base / key
        self.built = False
        with open(base / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self._valid():
                shutil.rmtree(self.path, ignore_errors=True)
                self._build(dataset, episodes, prepare)
                self.built = True
        self._files = {cam: os.open(self.path / f"{cam}.u8", os.O_RDONLY) for cam in self.cameras}

    def _valid(self) -> bool:
        try:
            meta = json.loads((self.path / META_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return False
        files = [self.path / f"{cam}.u8" for cam in self.cameras]
        return meta.get("frames") == self.num_frames and all(
            f.is_file() and f.stat().st_size == self.num_frames * self.frame_bytes for f in files)

    def _build(self, dataset: LeRobotDataset, episodes: Sequence[int], prepare) -> None:
        staging = self.path.with_name(f"{self.path.name}.tmp-{uuid.uuid4().hex}")
        staging.mkdir()
        try:
            log.info("decoding %d frames x %d camera(s) into the frame cache %s", self.num_frames,
                     len(self.cameras), self.path)
            for cam in self.cameras:
                with open(staging / f"{cam}.u8", "wb") as out:
                    for index in episodes:
                        self._write_episode(out, dataset, index, cam, prepare)
                    out.flush()
                    os.fsync(out.fileno())
            (staging / META_FILE).write_text(json.dumps({
                "frames": self.num_frames, "cameras": list(self.cameras), "image_size": list(self.image_size),
                "dataset": str(dataset.root.resolve()), "episodes": [int(i) for i in episodes]}))
            os.replace(staging, self.path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _write_episode(self, out, dataset: LeRobotDataset, index: int, camera: str, prepare) -> None:
        """Decode, prepare and write one episode's frames BUILD_CHUNK at a time (memory stays at a
        few hundred full-size frames however long the episode)."""
        path, frames = dataset.camera_frames(index, camera)
        expected, written, chunk = dataset.episode_meta(index)["length"], 0, []
        for frame in [*frames, None]:
            if frame is not None:
                chunk.append(frame)
            if chunk and (frame is None or len(chunk) == BUILD_CHUNK):
                prepared = prepare(np.stack(chunk), camera)
                if prepared.shape[1:] != (*self.image_size, 3) or prepared.dtype != np.uint8:
                    raise DatasetError(f"frame cache: camera {camera!r} frames came out {prepared.dtype} "
                                       f"{prepared.shape[1:]}, expected uint8 {(*self.image_size, 3)}")
                out.write(np.ascontiguousarray(prepared).tobytes())
                written += len(chunk)
                chunk = []
        if written != expected:
            raise DatasetError(f"{path}: {written} frames of camera {camera!r} for episode {index}, "
                               f"but the table has {expected} rows")

    def read_into(self, camera: str, sample: int, out: np.ndarray) -> None:
        """Copy frame ``sample`` of ``camera`` into ``out`` (a C-contiguous (h, w, 3) uint8 array)."""
        got = os.preadv(self._files[camera], [memoryview(out).cast("B")], sample * self.frame_bytes)
        if got != self.frame_bytes:
            raise DatasetError(f"{self.path / (camera + '.u8')}: short read at frame {sample} (cache truncated?)")

    @property
    def size_bytes(self) -> int:
        return self.num_frames * self.frame_bytes * len(self.cameras)

    def close(self) -> None:
        for fd in getattr(self, "_files", {}).values():
            os.close(fd)
        self._files = {}

    def __del__(self):
        self.close()
