"""`vla-ros eval`: offline action error of a checkpoint on held-out episodes, 1 vs N Euler steps.

    vla-ros eval --dataset DIR --checkpoint CKPT --steps 1,10 [--episodes 3,7] --report R.json

For every frame t of the chosen episodes the policy predicts the action chunk t..t+H-1 from the
recorded images and state; the error against the recorded actions is averaged per joint and per
horizon step (steps past an episode's end are not counted). All step counts decode from the SAME
noise for a frame (seeded), so their difference is the decoding's alone. Errors are in raw units
(radians for arm joints, normalised [0, 1] for grippers); `*_normalized` divides by the
checkpoint's action scale (of the offsets, for a checkpoint trained with delta actions) so that
joints of different ranges weigh alike.

Episodes default to the held-out ones the training run recorded in the checkpoint
(config.extra["training"]["held_out_episodes"]). The report is JSON; a PNG plot (per-joint and
per-horizon-step error, one series per step count) is written next to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from vla_ros.data.lerobot import LeRobotDataset
from vla_ros.policy.batches import DEFAULT_MAX_MEMORY_BYTES, DatasetSamples
from vla_ros.policy.checkpoint import load_checkpoint
from vla_ros.policy.finetune import check_dataset_fits
from vla_ros.policy.model import VLAPolicy


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{what} is empty")
    return values


@torch.inference_mode()
def action_errors(policy: VLAPolicy, samples: DatasetSamples, steps: list[int], batch_size: int = 64,
                  seed: int = 0, stride: int = 1) -> dict:
    """Error statistics per step count over every `stride`-th frame of `samples`."""
    config = policy.config
    horizon, dims = config.horizon, config.real_action_dim
    scale = policy.normalizer.action_scale.detach().cpu().double().numpy()
    totals = {k: {"abs": np.zeros((horizon, dims)), "sq": np.zeros((horizon, dims)),
                  "abs_norm": np.zeros((horizon, dims))} for k in steps}
    counts = np.zeros(horizon)
    generator = torch.Generator().manual_seed(seed)
    device = policy.action_dim_mask.device
    frames = np.arange(0, samples.num_frames, stride)
    for start in range(0, len(frames), batch_size):
        batch = samples.collate(frames[start:start + batch_size])
        text_ids, text_mask = policy.tokenize(batch["instruction"])
        prefix = policy.encode(batch["images"].to(device), text_ids, text_mask)
        raw_state = batch["state"].to(device)
        state = policy.prepare_state(raw_state)
        noise = torch.randn(len(batch["state"]), horizon, config.action_dim, generator=generator).to(device)
        target = batch["actions"].double().numpy()
        valid = ~batch["action_is_pad"].numpy()
        counts += valid.sum(0)
        for k in steps:
            predicted = policy.finish_actions(policy.sample(prefix, state, k, noise), raw_state).double().cpu().numpy()
            error = np.abs(predicted - target) * valid[:, :, None]
            totals[k]["abs"] += error.sum(0)
            totals[k]["sq"] += (error ** 2).sum(0)
            totals[k]["abs_norm"] += (error / scale).sum(0)
    results = {}
    for k in steps:
        abs_sum, sq_sum, norm_sum = totals[k]["abs"], totals[k]["sq"], totals[k]["abs_norm"]
        n = counts.sum()
        results[str(k)] = {
            "mae": float(abs_sum.sum() / (n * dims)),
            "rmse": float(np.sqrt(sq_sum.sum() / (n * dims))),
            "mae_normalized": float(norm_sum.sum() / (n * dims)),
            "mae_per_joint": (abs_sum.sum(0) / n).tolist(),
            "rmse_per_joint": np.sqrt(sq_sum.sum(0) / n).tolist(),
            "mae_per_horizon_step": (abs_sum.sum(1) / (counts * dims)).tolist(),
            "mae_normalized_per_horizon_step": (norm_sum.sum(1) / (counts * dims)).tolist(),
        }
    return {"frames": int(len(frames)), "targets_per_horizon_step": counts.astype(int).tolist(), "steps": results}


def plot_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, steps = report["joint_names"], report["steps"]
    figure, (per_joint, per_step) = plt.subplots(1, 2, figsize=(14, 4.5))
    width = 0.8 / len(steps)
    for i, (k, result) in enumerate(steps.items()):
        per_joint.bar(np.arange(len(names)) + i * width, result["mae_per_joint"], width, label=f"{k} step(s)")
        per_step.plot(np.arange(1, len(result["mae_per_horizon_step"]) + 1), result["mae_per_horizon_step"],
                      marker="o", label=f"{k} step(s)")
    per_joint.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=60, ha="right", fontsize=7)
    per_joint.set_ylabel("mean absolute error (rad / gripper units)")
    per_joint.set_title("per joint")
    per_step.set_xlabel("horizon step")
    per_step.set_title("per horizon step (all joints)")
    for axis in (per_joint, per_step):
        axis.legend()
        axis.grid(alpha=0.3)
    figure.suptitle(f"{Path(*Path(report['checkpoint']).parts[-2:])}: {report['frames']} frames of episodes {report['episodes']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def evaluate(dataset_dir, checkpoint_dir, steps: list[int], episodes: list[int] | None = None,
             batch_size: int = 64, seed: int = 0, stride: int = 1, device: str = "cpu",
             max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES) -> dict:
    """The report as a dict (see the module docstring)."""
    if any(k < 1 for k in steps):
        raise ValueError(f"step counts must be >= 1, got {steps}")
    if stride < 1 or batch_size < 1:
        raise ValueError("stride and batch size must be >= 1")
    policy = load_checkpoint(checkpoint_dir, device=device)
    dataset = LeRobotDataset(dataset_dir)
    check_dataset_fits(dataset, policy.config)
    training = policy.config.extra.get("training", {})
    resolved = str(Path(dataset_dir).resolve())  # a mixed run records each dataset's own split
    training = next((entry for entry in training.get("datasets") or [] if entry.get("path") == resolved), training)
    if episodes is None:
        episodes = list(training.get("held_out_episodes") or [])
        if not episodes:
            raise ValueError(f"{checkpoint_dir}: the checkpoint records no held-out episodes; pass --episodes")
    bad = [e for e in episodes if not 0 <= e < dataset.num_episodes]
    if bad:
        raise ValueError(f"episodes {bad} are not in the dataset (it has {dataset.num_episodes})")
    size = policy.config.image_size
    samples = DatasetSamples(dataset, episodes, policy.config.camera_keys, policy.config.horizon, (size, size),
                             max_memory_bytes, crops=policy.config.camera_crops)
    report = {
        "dataset": str(Path(dataset_dir).resolve()),
        "checkpoint": str(Path(checkpoint_dir).resolve()),
        "episodes": list(episodes),
        "episodes_seen_in_training": sorted(set(episodes) & set(training.get("train_episodes") or [])),
        "joint_names": list(policy.config.action_names),
        "horizon": policy.config.horizon,
        "alpha": policy.config.alpha,
        "seed": seed,
        "stride": stride,
    }
    report.update(action_errors(policy, samples, list(steps), batch_size, seed, stride))
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vla-ros eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--steps", default="1,10", help="Euler step counts to compare, e.g. 1,10")
    parser.add_argument("--episodes", help="episode indices, e.g. 3,7 (default: the checkpoint's held-out ones)")
    parser.add_argument("--report", required=True, help="JSON report path; the plot goes beside it as .png")
    parser.add_argument("--plot", help="plot path (default: the report path with .png)")
    parser.add_argument("--stride", type=int, default=1, help="evaluate every N-th frame")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the decoding noise")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        steps = parse_int_list(args.steps, "--steps")
        episodes = parse_int_list(args.episodes, "--episodes") if args.episodes else None
        report = evaluate(args.dataset, args.checkpoint, steps, episodes, args.batch_size, args.seed,
                          args.stride, args.device)
        report_path = Path(args.report)
        plot_path = Path(args.plot) if args.plot else report_path.with_suffix(".png")
        report["plot"] = str(plot_path)
        report_path.parent.mkdir(parents=True, exist_ok=True)
        plot_report(report, plot_path)
        report_path.write_text(json.dumps(report, indent=1))
    except (ValueError, OSError) as error:
        print(f"vla-ros eval: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"report": str(report_path), "plot": str(plot_path),
                      **{f"mae_{k}_steps": v["mae"] for k, v in report["steps"].items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
