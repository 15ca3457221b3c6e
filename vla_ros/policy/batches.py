"""LeRobot v3 dataset -> training batches for VLAPolicy.compute_loss.

A sample is one (episode, frame t): the state at t, the action chunk t..t+H-1 (past the episode's
end, or past a gap in the timestamps where frames were dropped, the last action before it is
repeated and `action_is_pad` marks those steps, which the loss ignores: a chunk never pairs
frames across a gap),
the camera images at t for the policy's camera keys and the episode's task text.

Why everything is decoded up front: seeking into mp4s for every random sample costs
milliseconds per frame, far more than a tiny model's training step. Each episode's videos are
decoded ONCE and resized to the working size as uint8 frames: frames x cameras x height x width
x 3 bytes, e.g. 50 episodes x 400 frames x 1 camera at 32x32 is 61 MB, at 224x224 it is 3 GB.
Within `max_memory_bytes` they are held in memory; beyond it they go to a frame cache on disk
(vla_ros.policy.frame_cache: built once, reused by later runs on the same data) and every batch
reads its frames from there, so memory stays flat whatever the dataset size. Decoding up front
also means a corrupt video fails before training starts, not halfway through. `batches()`
collates the next batch on a background thread while the caller trains on the current one.

The resize uses the backbone's own kernel (bilinear, antialiased, on uint8), so frames stored
at the model's image size are exactly what the backbone would have made of the full frames.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vla_ros.data.lerobot import DatasetError, LeRobotDataset
from vla_ros.policy.augment import ImageAugment
from vla_ros.policy.crop import check_region, crop_frames
from vla_ros.policy.delta import to_delta
from vla_ros.policy.frame_cache import FrameCache
from vla_ros.policy.normalize import NormStats, mixture_stats

# Frames held in memory up to this; beyond it they stream from disk. 2 GiB of frames plus the
# process itself (~0.7 GB for the tiny model) keeps peak RSS under 4 GB whatever the dataset size.
DEFAULT_MAX_MEMORY_BYTES = 2 << 30
RESIZE_CHUNK = 256  # frames resized per call: bounds the float/int intermediate memory


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, h, w, 3) with the backbone's resize kernel."""
    if frames.shape[1:3] == tuple(size):
        return np.ascontiguousarray(frames)  # a crop is a view: do not keep the whole frames alive
    out = np.empty((len(frames), *size, 3), dtype=np.uint8)
    for start in range(0, len(frames), RESIZE_CHUNK):
        pixels = torch.from_numpy(frames[start:start + RESIZE_CHUNK]).permute(0, 3, 1, 2)
        resized = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
        out[start:start + RESIZE_CHUNK] = resized.permute(0, 2, 3, 1).numpy()
    return out


def split_episodes(num_episodes: int, held_out: int | float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, held_out) episode indices: a seeded random choice of `held_out` episodes (a count,
    or a fraction when < 1), at least one training episode left."""
    if num_episodes < 1:
        raise ValueError("the dataset has no episodes")
    count = int(round(held_out * num_episodes)) if isinstance(held_out, float) and held_out < 1 else int(held_out)
    if count < 0 or count >= num_episodes:
        raise ValueError(f"cannot hold out {count} of {num_episodes} episodes (at least one must train)")
    chosen = np.random.default_rng(seed).permutation(num_episodes)[:count]
    held = sorted(int(i) for i in chosen)
    return [i for i in range(num_episodes) if i not in held], held


def chunk_ends(slots: np.ndarray | None, length: int) -> np.ndarray:
    """Per frame t, the last frame an action chunk starting at t may reach: the frame before the
    first gap in the timestamps after t, else the episode's last frame."""
    if slots is None:
        return np.full(length, length - 1, dtype=np.int64)
    before_gap = np.flatnonzero(np.diff(slots) != 1)  # frame i is followed by a gap
    ends = np.append(before_gap, length - 1)
    return ends[np.searchsorted(before_gap, np.arange(length), side="left")]


@dataclass
class EpisodeArrays:
    index: int
    task: str
    state: np.ndarray                # (T, state_dim) float32
    action: np.ndarray               # (T, action_dim) float32
    images: dict[str, np.ndarray]    # camera -> (T, h, w, 3) uint8 at the working size (empty: cached on disk)
    slots: np.ndarray | None = None  # (T,) frame periods since the first frame; None = consecutive
    frame_tasks: list[str] | None = None  # per frame, when the task changes within the episode


class _Batches:
    """The endless, prefetched batch stream of anything with batch_for_step(step, size, seed, rank)."""

    def batches(self, batch_size: int, seed: int, rank: int = 0, start_step: int = 0) -> Iterator[dict]:
        """batch_for_step(start_step), (start_step + 1), ...; each next batch is collated on a
        background thread while the caller uses the current one (reads and copies release the GIL)."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="collate") as pool:
            pending = pool.submit(self.batch_for_step, start_step, batch_size, seed, rank)
            step = start_step
            while True:
                batch = pending.result()
                step += 1
                pending = pool.submit(self.batch_for_step, step, batch_size, seed, rank)
                yield batch


class DatasetSamples(_Batches):
    """Episodes of a LeRobotDataset (frames in memory, or in a frame cache on disk), sampled into
    training batches."""

    def __init__(self, dataset: LeRobotDataset, episodes: Sequence[int], cameras: Sequence[str],
                 horizon: int, image_size: tuple[int, int],
                 max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES, state_noise_std: float = 0.0,
                 crops: Mapping[str, Sequence[float]] | None = None, cache_dir=None,
                 augment: ImageAugment | None = None):
        """crops: camera -> region of interest (vla_ros.policy.crop), cut before the resize.

        augment: random image augmentation of every training batch (vla_ros.policy.augment).

        max_memory_bytes: frames beyond this budget are streamed from a frame cache on disk
        (in ``cache_dir``, default vla_ros.policy.frame_cache.default_cache_root()).

        state_noise_std: Gaussian noise (raw state units) added to the state of every training
        sample. Demonstrations let a policy read where the arm is heading from tiny offsets of the
        state alone; in closed loop those offsets come from the policy itself, and a policy that
        relied on them never learns to look. Noise larger than those offsets removes the shortcut."""
        if not episodes:
            raise ValueError("no episodes to sample from")
        if not (np.isfinite(state_noise_std) and state_noise_std >= 0.0):
            raise ValueError(f"state_noise_std must be a finite number >= 0, got {state_noise_std!r}")
        self.state_noise_std = float(state_noise_std)
        self.augment = augment
        missing = [c for c in cameras if c not in dataset.cameras]
        if missing:
            raise DatasetError(f"{dataset.root}: cameras {missing} are not in the dataset (it has {dataset.cameras})")
        self.cameras = tuple(cameras)
        self.crops = {camera: check_region(region) for camera, region in (crops or {}).items()}
        self.horizon = int(horizon)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        frames = sum(dataset.episode_meta(i)["length"] for i in episodes)
        self.memory_bytes = frames * len(self.cameras) * self.image_size[0] * self.image_size[1] * 3
        self.cache: FrameCache | None = None
        if self.memory_bytes > max_memory_bytes:
            self.cache = FrameCache(dataset, episodes, self.cameras, self.image_size, self._prepare,
                                    self.crops, cache_dir)
            self.memory_bytes = 0
        self.episodes = [self._load(dataset, i) for i in episodes]
        self._ends = [chunk_ends(e.slots, len(e.action)) for e in self.episodes]
        lengths = np.array([len(e.state) for e in self.episodes])
        self._starts = np.concatenate([[0], np.cumsum(lengths)])
        self.num_frames = int(self._starts[-1])

    def _load(self, dataset: LeRobotDataset, index: int) -> EpisodeArrays:
        episode = dataset.episode(index)
        if len(episode) == 0:
            raise DatasetError(f"{dataset.root}: episode {index} is empty")
        images = {} if self.cache else {cam: self._prepare(dataset.video_frames(index, cam), cam)
                                        for cam in self.cameras}
        slots = np.round(episode.timestamps.astype(np.float64) * dataset.fps).astype(np.int64)
        return EpisodeArrays(index, episode.task, episode.state, episode.action, images, slots, episode.frame_tasks)

    def _prepare(self, frames: np.ndarray, camera: str) -> np.ndarray:
        """Decoded frames -> the working size (crop, then the backbone's resize)."""
        return resize_frames(crop_frames(frames, self.crops.get(camera)), self.image_size)

    def locate(self, sample: int) -> tuple[int, int]:
        """Position in self.episodes and frame within it of the sample-th frame overall."""
        position = int(np.searchsorted(self._starts, sample, side="right") - 1)
        return position, int(sample - self._starts[position])

    def chunk(self, position: int, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Actions frame..frame+H-1 and their padding mask: steps past the episode's end or past a
        dropped frame (a timestamp gap) are padding and repeat the last action before them."""
        last = int(self._ends[position][frame])
        steps = np.arange(frame, frame + self.horizon)
        is_pad = steps > last
        return self.episodes[position].action[np.minimum(steps, last)], is_pad

    def target_frames(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """(t, u) for every action target the loss sees in this episode: frame u of the chunk
        predicted at frame t (u = t..t+H-1, padding excluded)."""
        length = len(self.episodes[position].action)
        start = np.repeat(np.arange(length), self.horizon)
        target = start + np.tile(np.arange(self.horizon), length)
        keep = target <= self._ends[position][start]
        return start[keep], target[keep]

    def delta_targets(self, source: Sequence[int], mask: Sequence[float]) -> np.ndarray:
        """Every non-padded action target as the model learns it with delta actions (see
        vla_ros.policy.delta): (targets, action dims) float32, as the loss computes them."""
        source, mask = np.asarray(source), np.asarray(mask, dtype=np.float32)
        counts = [int((np.minimum(ends - np.arange(len(ends)), self.horizon - 1) + 1).sum()) for ends in self._ends]
        rows = np.empty((sum(counts), len(mask)), dtype=np.float32)  # filled in place: one copy of the table
        offset = 0
        for position, (episode, count) in enumerate(zip(self.episodes, counts)):
            start, target = self.target_frames(position)
            rows[offset:offset + count] = to_delta(episode.action[target][:, None, :], episode.state[start],
                                                   source, mask)[:, 0]
            offset += count
        return rows

    def collate(self, samples: Sequence[int]) -> dict:
        """The batch for these frame numbers (0..num_frames-1), in compute_loss's format."""
        states, chunks, pads, tasks = [], [], [], []
        images = np.empty((len(samples), len(self.cameras), *self.image_size, 3), dtype=np.uint8)
        for row, sample in enumerate(samples):
            position, frame = self.locate(sample)
            episode = self.episodes[position]
            actions, is_pad = self.chunk(position, frame)
            states.append(episode.state[frame])
            chunks.append(actions)
            pads.append(is_pad)
            tasks.append(episode.frame_tasks[frame] if episode.frame_tasks else episode.task)
            for column, cam in enumerate(self.cameras):
                if self.cache is not None:
                    self.cache.read_into(cam, int(sample), images[row, column])
                else:
                    images[row, column] = episode.images[cam][frame]
        return {
            "images": torch.from_numpy(images),
            "state": torch.from_numpy(np.stack(states)),
            "actions": torch.from_numpy(np.stack(chunks)),
            "action_is_pad": torch.from_numpy(np.stack(pads)),
            "instruction": tasks,
        }

    def batch_for_step(self, step: int, batch_size: int, seed: int, rank: int = 0) -> dict:
        """A uniformly random batch that depends only on (seed, rank, step): a resumed run draws
        exactly the batches the uninterrupted one would have, and DDP ranks draw different ones."""
        rng = np.random.default_rng([seed, rank, step])
        return self.perturb(self.collate(rng.integers(0, self.num_frames, size=batch_size)), rng)

    def perturb(self, batch: dict, rng: np.random.Generator) -> dict:
        """State noise and image augmentation, as configured, drawn from ``rng``. The recorded
        state stays in ``reference_state``: delta actions are offsets from it, not from the noise."""
        batch["reference_state"] = batch["state"]
        if self.state_noise_std > 0.0:
            noise = rng.normal(0.0, self.state_noise_std, size=batch["state"].shape)
            batch["state"] = batch["state"] + torch.from_numpy(noise.astype(np.float32))
        if self.augment is not None:
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            batch["images"] = self.augment.apply(batch["images"], self.cameras, generator)
        return batch


class MixedSamples(_Batches):
    """Several datasets in one run: each sample comes from dataset i with probability weights[i]
    (normalised), whatever the datasets' sizes, then from a uniformly random frame of it. Each
    part keeps its own state noise and augmentation settings."""

    def __init__(self, parts: Sequence[DatasetSamples], weights: Sequence[float] | None = None):
        if not parts:
            raise ValueError("no datasets to mix")
        weights = np.ones(len(parts)) if weights is None else np.asarray(weights, dtype=np.float64)
        if weights.shape != (len(parts),) or not np.all(np.isfinite(weights)) or np.any(weights < 0) \
                or weights.sum() <= 0:
            raise ValueError(f"need one finite weight >= 0 per dataset ({len(parts)}), not all zero; got {weights.tolist()}")
        first = parts[0]
        for index, part in enumerate(parts[1:], start=1):
            for what, value, expected in (
                    ("cameras", part.cameras, first.cameras), ("image size", part.image_size, first.image_size),
                    ("horizon", part.horizon, first.horizon),
                    ("state dims", part.episodes[0].state.shape[1], first.episodes[0].state.shape[1]),
                    ("action dims", part.episodes[0].action.shape[1], first.episodes[0].action.shape[1])):
                if value != expected:
                    raise ValueError(f"mixed datasets must share cameras, image size, horizon and state/action "
                                     f"dims: dataset {index} has {what} {value}, dataset 0 has {expected}")
        self.parts = list(parts)
        self.weights = weights / weights.sum()
        self.cameras, self.image_size, self.horizon = first.cameras, first.image_size, first.horizon
        self.episodes = [e for part in self.parts for e in part.episodes]
        self.num_frames = sum(part.num_frames for part in self.parts)
        self.memory_bytes = sum(part.memory_bytes for part in self.parts)

    def batch_for_step(self, step: int, batch_size: int, seed: int, rank: int = 0) -> dict:
        """Like DatasetSamples.batch_for_step: depends only on (seed, rank, step)."""
        rng = np.random.default_rng([seed, rank, step])
        sources = rng.choice(len(self.parts), size=batch_size, p=self.weights)
        frames = np.array([rng.integers(0, self.parts[i].num_frames) for i in sources], dtype=np.int64)
        batch: dict = {"instruction": [""] * batch_size}
        for i, part in enumerate(self.parts):
            rows = np.flatnonzero(sources == i)
            if not len(rows):
                continue
            sub = part.perturb(part.collate(frames[rows]), rng)
            for key in ("images", "state", "reference_state", "actions", "action_is_pad"):
                if key not in batch:
                    batch[key] = torch.empty((batch_size, *sub[key].shape[1:]), dtype=sub[key].dtype)
                batch[key][torch.from_numpy(rows)] = sub[key]
            for row, text in zip(rows, sub["instruction"]):
                batch["instruction"][row] = text
        return batch


def training_stats(samples: DatasetSamples | MixedSamples, delta_source: Sequence[int] | None = None,
                   delta_mask: Sequence[float] | None = None) -> NormStats:
    """Normalisation statistics of what the model trains on (mode: mean_std; every mode's keys).

    State: every frame. Actions: every frame's action, or with delta actions (delta_source and
    delta_mask, vla_ros.policy.delta) every non-padded target of every chunk as an offset from
    its chunk's state. Mixed datasets weigh by their mixing weights (normalize.mixture_stats)."""
    parts = samples.parts if isinstance(samples, MixedSamples) else [samples]
    weights = samples.weights if isinstance(samples, MixedSamples) else [1.0]
    states = [np.concatenate([e.state for e in part.episodes]) for part in parts]
    if delta_source is None:
        actions = [np.concatenate([e.action for e in part.episodes]) for part in parts]
        if len(parts) == 1:  # as before delta actions and mixtures existed
            return NormStats.from_arrays(states[0], actions[0])
    else:
        actions = [part.delta_targets(delta_source, delta_mask) for part in parts]
    return NormStats(mixture_stats(states, weights, "states"), mixture_stats(actions, weights, "actions"))
