"""`vla-ros bench train`: training throughput (samples/s) of `vla-ros train`'s step, printed as JSON.

CPU: the tiny configuration on the aloha_sim profile (one camera). CUDA, when available: the
~1.4B configuration (random weights; 3 cameras at 224x224) with the backbone frozen and fully
trained, bf16 autocast, plus peak GPU memory. Each measurement is Trainer.train_step (forward,
backward, clipping, AdamW, EMA) on batches shaped as vla_ros.policy.batches makes them (uint8
frames already at the model's image size, as they are held in memory), so data loading is not
included: sampling a batch from memory costs about a millisecond.

Small models on a shared CPU are dominated by thread hand-off, so the CPU part runs with
--threads intra-op threads (default 1); the value is recorded in the output.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch

from vla_ros.policy.checkpoint import build_random_policy
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vla-ros bench train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32, help="CPU batch size")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    parser.add_argument("--gpu-batch-size", type=int, default=16)
    parser.add_argument("--no-gpu", action="store_true", help="skip the CUDA measurements")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.steps, args.gpu_batch_size) < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("batch sizes, steps and threads must be >= 1, warmup >= 0")
    torch.set_num_threads(args.threads)
    results = {"cpu_threads": args.threads,
               "cpu": measure("tiny", "aloha_sim", None, args.batch_size, args.steps, args.warmup, "cpu")}
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
