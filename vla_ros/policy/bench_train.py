"""`vla-ros bench train`: training throughput (samples/s) of `vla-ros train`'s step, printed as JSON.

CPU: the tiny configuration on the aloha_sim profile (one camera). CUDA, when available: the
~1.4B configuration (random weights; 3 cameras at 224x224) with the backbone frozen and fully
trained, bf16 autocast, plus peak GPU memory. Each measurement is Trainer.train_step (forward,
backward, clipping, AdamW, EMA) on batches shaped as vla_ros.policy.batches makes them (uint8
frames already at the model's image size, as they are held in memory), so data loading is not
included: sampling a batch from memory costs about a millisecond.

Small models on a shared CPU are dominated by thread hand-off, so the CPU part runs with
--threads intra-op threads (default 1); the value is recorded in the output.

Data path (``data``): the tiny (or, --data-config, the small) configuration trained from a recorded dataset, its frames held in
memory and streamed from the frame cache on disk (samples/s of batches + train_step, each), and a
dataset whose frames at the working size exceed the old 4 GiB in-memory cap (default 10,000
frames x 3 cameras at 224x224 = 4.2 GiB) streamed batch by batch: samples/s and the process's
peak resident memory (VmHWM, reset after setup) while streaming. The synthetic datasets and the
frame caches are built once under --data-dir and reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vla_ros.data.bench_record import PATTERN_FRAMES, synthetic_frames
from vla_ros.data.lerobot import DatasetError, LeRobotDataset, LeRobotWriter
from vla_ros.policy.batches import DEFAULT_MAX_MEMORY_BYTES, DatasetSamples
from vla_ros.policy.checkpoint import build_random_policy
from vla_ros.policy.frame_cache import default_cache_root
from vla_ros.policy.train import Trainer, TrainConfig
from vla_ros.robot.profile import load_profile

INSTRUCTION = "transfer the cube to the left arm"


def synthetic_batch(config, batch_size: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    size = config.image_size
    return {
        "images": torch.randint(0, 256, (batch_size, len(config.camera_keys), size, size, 3), dtype=torch.uint8,
                                generator=generator),
        "state": torch.randn(batch_size, config.real_state_dim, generator=generator),
        "actions": torch.randn(batch_size, config.horizon, config.real_action_dim, generator=generator),
        "action_is_pad": torch.zeros(batch_size, config.horizon, dtype=torch.bool),
        "instruction": [INSTRUCTION] * batch_size,
    }


def measure(config_name: str, profile_name: str, cameras, batch_size: int, steps: int, warmup: int,
            device: str, freeze_backbone: bool = False) -> dict:
    """samples/s of train_step for one configuration."""
    profile = load_profile(profile_name)
    with torch.device(device):  # initialise the weights where they will train (1.4B on CPU is slow)
        policy = build_random_policy(config_name, profile, cameras)
    train_config = TrainConfig(batch_size=batch_size, warmup_steps=1, total_steps=warmup + steps,
                               freeze_backbone=freeze_backbone, checkpoint_interval=0, device=device)
    batch = synthetic_batch(policy.config, batch_size)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(policy, train_config, scratch)
        cuda = trainer.device.type == "cuda"
        for _ in range(warmup):
            trainer.train_step(batch)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(steps):
            loss = trainer.train_step(batch)["loss"]
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    result = {
        "config": config_name, "profile": profile.name, "cameras": list(policy.config.camera_keys),
        "image_size": policy.config.image_size, "batch_size": batch_size, "steps": steps,
        "freeze_backbone": freeze_backbone, "device": str(trainer.device),
        "parameters": sum(p.numel() for p in policy.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainer.trainable),
        "samples_per_s": round(batch_size * steps / elapsed, 2), "step_ms": round(1000 * elapsed / steps, 2),
        "final_loss": round(loss, 4),
    }
    if cuda:
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["gpu"] = torch.cuda.get_device_name()
        result["bf16"] = train_config.bf16
    del trainer, policy
    return result


def synthetic_dataset(root: Path, profile, frames: int, cameras: list[str], size: int,
                      episode_length: int = 500) -> LeRobotDataset:
    """A recorded-looking dataset (moving patterns, slow joint motion), reused when ``root``
    already holds one of this shape."""
    try:
        dataset = LeRobotDataset(root)
        shape = dataset.features[f"observation.images.{cameras[0]}"]["shape"][:2]
        if dataset.num_frames == frames and dataset.cameras == cameras and shape == [size, size]:
            return dataset
    except (DatasetError, KeyError):
        pass
    shutil.rmtree(root, ignore_errors=True)
    patterns = {cam: synthetic_frames(size, size, PATTERN_FRAMES, seed) for seed, cam in enumerate(cameras)}
    dim = len(profile.vector_names)
    with LeRobotWriter(root, 50, profile.name, profile.vector_names, profile.vector_names,
                       {cam: (size, size) for cam in cameras}) as writer:
        for start in range(0, frames, episode_length):
            writer.start_episode(INSTRUCTION)
            for i in range(start, min(start + episode_length, frames)):
                pose = profile.start_pose + 0.1 * np.sin(0.02 * i + np.arange(dim))
                writer.add_frame(pose, pose, {cam: patterns[cam][i % PATTERN_FRAMES] for cam in cameras})
            writer.save_episode()
    return LeRobotDataset(root)


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS count (VmHWM) for this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_gb() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return round(int(line.split()[1]) / 2**20, 3)


def timed_batches(samples: DatasetSamples, batch_size: int, steps: int, step=None) -> float:
    """samples/s of drawing ``steps`` batches (and running ``step`` on each, when given)."""
    batches = samples.batches(batch_size, seed=0)
    next(batches)  # the first batch waits for no overlap
    started = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        if step is not None:
            step(batch)
    elapsed = time.perf_counter() - started
    batches.close()
    return round(batch_size * steps / elapsed, 2)


def measure_data(data_dir: Path, batch_size: int, steps: int, large_frames: int, large_size: int,
                 large_batches: int, large_budget: int = DEFAULT_MAX_MEMORY_BYTES, config: str = "tiny") -> dict:
    """The training data path: in memory vs streamed (a 2,000-frame dataset, trained with the
    ``config`` configuration), and a dataset over the old in-memory cap streamed with bounded memory."""
    profile = load_profile("aloha_sim")
    cache = data_dir / "frame-cache"
    policy = build_random_policy(config, profile, None)
    cameras = list(policy.config.camera_keys)
    size = policy.config.image_size
    small = synthetic_dataset(data_dir / "small", profile, 2000, cameras, 64)
    result = {"small": {"config": config, "frames": small.num_frames, "cameras": cameras, "image_size": size,
                        "batch_size": batch_size, "steps": steps}}
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(policy, TrainConfig(batch_size=batch_size, warmup_steps=1, total_steps=10 * steps + 10,
                                              checkpoint_interval=0, device="cpu"), scratch)
        for name, budget in (("in_memory", DEFAULT_MAX_MEMORY_BYTES), ("streamed", 0)):
            samples = DatasetSamples(small, range(small.num_episodes), cameras, policy.config.horizon, (size, size),
                                     budget, cache_dir=cache)
            timed_batches(samples, batch_size, 2, trainer.train_step)  # warm up
            result["small"][f"{name}_samples_per_s"] = timed_batches(samples, batch_size, steps, trainer.train_step)
            result["small"][f"{name}_data_only_samples_per_s"] = timed_batches(samples, batch_size, steps)
    del trainer, policy

    large_cameras = list(load_profile("aloha_stationary").camera_names[:3])
    started = time.perf_counter()
    large = synthetic_dataset(data_dir / "large", profile, large_frames, large_cameras, large_size)
    dataset_s = time.perf_counter() - started
    started = time.perf_counter()
    samples = DatasetSamples(large, range(large.num_episodes), large_cameras, 10, (large_size, large_size),
                             large_budget, cache_dir=cache)
    setup_s = time.perf_counter() - started
    frame_gib = large.num_frames * len(large_cameras) * large_size * large_size * 3 / 2**30
    setup_peak = peak_rss_gb()  # everything so far: the model runs above, building the datasets and caches
    reset = reset_peak_rss()
    rate = timed_batches(samples, batch_size, large_batches)
    result["large"] = {
        "frames": large.num_frames, "cameras": large_cameras, "image_size": large_size,
        "decoded_frames_gib": round(frame_gib, 2), "in_memory_budget_gib": round(large_budget / 2**30, 2),
        "streamed": samples.cache is not None, "cache_built_now": bool(samples.cache and samples.cache.built),
        "dataset_s": round(dataset_s, 1), "setup_s": round(setup_s, 1), "batch_size": batch_size,
        "batches": large_batches, "data_samples_per_s": rate,
        "peak_rss_gb": peak_rss_gb(), "peak_rss_measured": "while streaming" if reset else "whole process",
        "process_peak_rss_gb_before": setup_peak,
    }
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vla-ros bench train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32, help="CPU batch size")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    parser.add_argument("--gpu-batch-size", type=int, default=16)
    parser.add_argument("--no-gpu", action="store_true", help="skip the CUDA measurements")
    parser.add_argument("--data", action="store_true", help="also measure the training data path (in memory, "
                        "streamed, and a dataset over the old 4 GiB cap; builds its datasets once, minutes)")
    parser.add_argument("--data-dir", type=Path, default=default_cache_root().parent / "bench-train",
                        help="where the data benchmark keeps its datasets and frame caches (reused)")
    parser.add_argument("--data-config", default="tiny", choices=("tiny", "small"),
                        help="the configuration trained in the in-memory vs streamed comparison")
    parser.add_argument("--large-frames", type=int, default=10_000, help="frames of the large dataset")
    parser.add_argument("--large-image-size", type=int, default=224, help="its frames' side (3 cameras)")
    parser.add_argument("--large-batches", type=int, default=200, help="batches streamed from it")
    parser.add_argument("--large-max-memory-gb", type=float, default=DEFAULT_MAX_MEMORY_BYTES / 2**30,
                        help="in-memory frame budget of the large run (beyond it frames stream from disk)")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.steps, args.gpu_batch_size) < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("batch sizes, steps and threads must be >= 1, warmup >= 0")
    torch.set_num_threads(args.threads)
    results = {"cpu_threads": args.threads,
               "cpu": measure("tiny", "aloha_sim", None, args.batch_size, args.steps, args.warmup, "cpu")}
    if args.data:
        results["data"] = measure_data(args.data_dir, args.batch_size, args.steps, args.large_frames,
                                       args.large_image_size, args.large_batches,
                                       int(args.large_max_memory_gb * 2**30), args.data_config)
    if torch.cuda.is_available() and not args.no_gpu:
        cameras = load_profile("aloha_stationary").camera_names[:3]
        results["cuda"] = []
        for frozen in (True, False):
            try:
                results["cuda"].append(measure("1.4b", "aloha_stationary", cameras, args.gpu_batch_size,
                                               args.steps, args.warmup, "cuda", freeze_backbone=frozen))
            except torch.OutOfMemoryError as error:
                results["cuda"].append({"config": "1.4b", "freeze_backbone": frozen, "error": f"out of memory: {error}"})
            torch.cuda.empty_cache()
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
