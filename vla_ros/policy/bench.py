"""`vla-ros bench policy`: predict latency of the inference runtime, printed as JSON.

CPU: the tiny configuration, for 1, 2 and 3 cameras, 1 vs 10 Euler steps, plus the prefix alone
(preprocessing + VLM). Camera frames are 480x640 like the ALOHA cameras, so resizing is included.
CUDA (when available): the ~1.4B configuration with random weights (SigLIP-So400m-sized vision
+ 4 Gemma-2B-sized layers + the 30M head), 3 cameras at 224x224, bf16 + CUDA graphs, plus peak
GPU memory. Targets (issue 3): p50 <= 10 ms, p99 <= 15 ms, < 6 GB, one step within 10% of the
prefix alone. Latencies are wall-clock per predict call in milliseconds, after warm-up.

Small models on a shared CPU are dominated by thread hand-off, so the CPU part runs with
--threads intra-op threads (default 1); the value is recorded in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vla_ros.policy.checkpoint import build_random_policy  # noqa: E402
from vla_ros.policy.runtime import PolicyRuntime  # noqa: E402
from vla_ros.robot.profile import load_profile  # noqa: E402

PROFILE = "aloha_stationary"  # four cameras, so 1..3 camera subsets exist
INSTRUCTION = "pick up the cube and hand it over"


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    p50, p90, p99 = np.percentile(np.asarray(samples_ms), [50, 90, 99])
    return {"p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3), "p99_ms": round(float(p99), 3),
            "mean_ms": round(float(np.mean(samples_ms)), 3), "n": len(samples_ms)}


def time_calls(call, warmup: int, repeats: int) -> dict[str, float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return percentiles(samples)


def measure(runtime: PolicyRuntime, image_hw: tuple[int, int], steps_list, warmup: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    images = {key: rng.integers(0, 256, (*image_hw, 3), dtype=np.uint8) for key in runtime.camera_keys}
    state = np.zeros(runtime.config.real_state_dim)
    runtime.set_instruction(INSTRUCTION)
    result = {"prefix_only": time_calls(lambda: runtime.predict_prefix(images), warmup, repeats)}
    for steps in steps_list:
        result[f"steps_{steps}"] = time_calls(lambda: runtime.predict(images, state, steps=steps), warmup, repeats)
    if 1 in steps_list:
        result["one_step_over_prefix"] = round(result["steps_1"]["p50_ms"] / result["prefix_only"]["p50_ms"], 3)
    return result


def bench_cpu(config: str, cameras: list[int], steps_list, warmup: int, repeats: int, threads: int) -> dict:
    profile = load_profile(PROFILE)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = {"config": config, "device": "cpu", "threads": threads, "image_hw": [480, 640], "per_cameras": {}}
        for count in cameras:
            policy = build_random_policy(config, profile, profile.camera_names[:count])
            out["parameters"] = sum(p.numel() for p in policy.parameters())
            runtime = PolicyRuntime.from_policy(policy, device="cpu")
            out["per_cameras"][str(count)] = measure(runtime, (480, 640), steps_list, warmup, repeats)
    finally:
        torch.set_num_threads(previous_threads)
    return out


def bench_cuda(config: str, cameras: int, steps_list, warmup: int, repeats: int) -> dict:
    """The large configuration, built directly on the GPU in bf16 (random weights)."""
    device = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    profile = load_profile(PROFILE)
    with device:
        policy = build_random_policy(config, profile, profile.camera_names[:cameras], dtype=torch.bfloat16)
    runtime = PolicyRuntime.from_policy(policy, device=device, dtype=torch.bfloat16, compile=True)
    setup_s = time.perf_counter() - start
    size = policy.config.image_size
    result = measure(runtime, (size, size), steps_list, warmup, repeats)
    return {"config": config, "device": torch.cuda.get_device_name(device), "cameras": cameras,
            "image_hw": [size, size], "parameters": sum(p.numel() for p in policy.parameters()),
            "setup_s": round(setup_s, 1), "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            **result}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vla-ros bench policy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads for the CPU part")
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--config", default="tiny", help="named config for the CPU part (tiny, tiny-smolvlm)")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-gpu", action="store_true")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1 or min(args.steps) < 1 \
            or not 1 <= min(args.cameras) <= max(args.cameras) <= 4:
        parser.error("repeats/threads/steps must be positive, warmup >= 0, cameras in 1..4")
    report = {"benchmark": "policy", "torch": torch.__version__}
    if not args.skip_cpu:
        report["cpu"] = bench_cpu(args.config, args.cameras, args.steps, args.warmup, args.repeats, args.threads)
    if torch.cuda.is_available() and not args.skip_gpu:
        report["cuda"] = bench_cuda("1.4b", 3, args.steps, args.warmup, args.repeats)
    else:
        report["cuda"] = None if args.skip_gpu else "no CUDA device"
    print(json.dumps(report, indent=2))
    return 0
