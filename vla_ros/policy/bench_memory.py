"""`vla-ros bench memory`: parameters and training-state bytes of a named configuration, per way
of training it, measured on meta tensors (no memory is allocated, so the 1.4B preset runs on any
CPU in seconds).

For each setting the policy is built on the meta device, the setting applied (freeze preset,
embedding table, LoRA), and a real torch AdamW takes one step on meta gradients; its state tensors
are then summed. Gradients and the trainer's EMA (a float32 copy of every trainable tensor,
vla_ros.policy.train.Trainer) are counted from the trainable parameters. Weights are float32.

    vla-ros bench memory [--config 1.4b] [--output benchmarks/memory_1p4b_meta.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vla_ros.policy.checkpoint import build_random_policy
from vla_ros.robot.profile import load_profile

GIB = 2**30
# name -> (freeze preset, train the embedding table, LoRA rank or None)
SETTINGS = {
    "full, embeddings trained (before)": ("none", True, None),
    "full, embeddings frozen (default)": ("none", False, None),
    "vision frozen, embeddings frozen": ("vision", False, None),
    "LoRA r=16 on the language model, vision frozen": ("vision", False, 16),
    "head only (freeze both)": ("both", False, None),
}


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(config: str, profile_name: str, freeze: str, train_embeddings: bool, lora_rank: int | None) -> dict:
    """Counts for one setting, from a policy built on the meta device."""
    with torch.device("meta"):
        policy = build_random_policy(config, load_profile(profile_name))
        if lora_rank:
            policy.backbone.add_lora(lora_rank, 2.0 * lora_rank)
    policy.backbone.freeze(freeze, train_embeddings)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    embedding = policy.backbone.vlm.get_input_embeddings().weight
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, foreach=False)
    for parameter in trainable:
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer_bytes = _nbytes(value for state in optimizer.state.values() for value in state.values()
                              if isinstance(value, torch.Tensor))
    trainable_count = sum(p.numel() for p in trainable)
    head_count = sum(p.numel() for p in policy.head.parameters())
    weights_bytes = _nbytes(policy.parameters())
    grad_bytes = _nbytes(trainable)
    ema_bytes = trainable_count * 4
    return {
        "parameters": sum(p.numel() for p in policy.parameters()),
        "trainable_parameters": trainable_count,
        "trainable_backbone_parameters": trainable_count - head_count,
        "head_parameters": head_count,
        "embedding_rows": embedding.shape[0], "embedding_parameters": embedding.numel(),
        "embedding_trainable": embedding.requires_grad,
        "optimizer_state_bytes": optimizer_bytes,
        "ema_bytes": ema_bytes,
        "gradient_bytes": grad_bytes,
        "weights_bytes": weights_bytes,
        "training_state_gib": round((weights_bytes + grad_bytes + optimizer_bytes + ema_bytes) / GIB, 2),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vla-ros bench memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="1.4b", help="named configuration (default: 1.4b)")
    parser.add_argument("--profile", default="aloha_sim", help="robot profile (cameras, dims)")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    try:
        results = {name: measure(args.config, args.profile, *setting) for name, setting in SETTINGS.items()}
    except (ValueError, OSError) as error:
        print(f"vla-ros bench memory: {error}", file=sys.stderr)
        return 1
    report = {"config": args.config, "profile": args.profile, "device": "meta", "dtype": "float32",
              "optimizer": "torch.optim.AdamW (exp_avg + exp_avg_sq + step per tensor)",
              "command": f"vla-ros bench memory --config {args.config} --profile {args.profile}",
              "settings": results}
    text = json.dumps(report, indent=1)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0
