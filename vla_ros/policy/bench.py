"""`vla-ros bench policy`: predict latency of the inference runtime, printed as JSON.

CPU: the tiny configuration, for 1, 2 and 3 cameras, 1 vs 10 Euler steps, plus the prefix alone
(preprocessing + VLM). Camera frames are 480x640 like the ALOHA cameras, so resizing is included.
CUDA (when available): the ~1.4B configuration with random weights (SigLIP-So400m-sized vision
+ 4 Gemma-2B-sized layers + the 30M head), 3 cameras at 224x224, bf16 + CUDA graphs, plus peak
GPU memory. Targets (issue 3): p50 <= 10 ms, p99 <= 15 ms, < 6 GB, one step within 10% of the
prefix alone. Latencies are wall-clock per predict call in milliseconds, after warm-up.

Small models on a shared CPU are dominated by thread hand-off, so the CPU part runs with
--threads intra-op threads (default 1); the value is recorded in the output, with the machine's
load average before and after (other processes inflate every figure).

Attention layouts (issue 17, "layouts" in the output): the head's condition cache on CPU. The
tiny configuration and a policy with a given checkpoint's architecture (--checkpoint) are timed
with a freshly initialised block-causal head and, for comparison, the bidirectional head (for the
checkpoint: its own trained weights, if it is bidirectional), each with the instruction cut to its
real tokens and padded to max_text_tokens. Targets: ten steps <= 1.6x one step, and one step within
10% of the prefix, i.e. a cached head step <= 0.1x the prefix (head_step_over_prefix).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from vla_ros.policy.checkpoint import build_random_policy, load_checkpoint  # noqa: E402
from vla_ros.policy.head import BIDIRECTIONAL, BLOCK_CAUSAL  # noqa: E402
from vla_ros.policy.model import PolicyConfig, VLAPolicy  # noqa: E402
from vla_ros.policy.runtime import PolicyRuntime  # noqa: E402
from vla_ros.robot.profile import load_profile  # noqa: E402

PROFILE = "aloha_stationary"  # four cameras, so 1..3 camera subsets exist
INSTRUCTION = "pick up the cube and hand it over"


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    p50, p90, p99 = np.percentile(np.asarray(samples_ms), [50, 90, 99])
    return {"p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3), "p99_ms": round(float(p99), 3),
            "mean_ms": round(float(np.mean(samples_ms)), 3), "min_ms": round(float(np.min(samples_ms)), 3),
            "n": len(samples_ms)}


def time_calls(call, warmup: int, repeats: int) -> dict[str, float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return percentiles(samples)


def time_interleaved(calls: dict, warmup: int, repeats: int) -> dict[str, dict[str, float]]:
    """Like time_calls for several calls taken in turn, so that load from other processes falls
    on all of them alike and their ratios stay meaningful on a shared machine."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: percentiles(values) for name, values in samples.items()}


def arithmetic_mflop(calls: dict) -> dict[str, float]:
    """Each call's matrix arithmetic (matmuls, convolutions, attention) in MFLOP, counted by
    torch's FlopCounterMode in one call. Its ratios are what the time ratios would be on a machine
    where only arithmetic costs: the floor the time ratios cannot beat."""
    counts = {}
    for name, call in calls.items():
        with FlopCounterMode(display=False) as counter:
            call()
        counts[name] = round(counter.get_total_flops() / 1e6, 3)
    return counts


def measure(runtime: PolicyRuntime, image_hw: tuple[int, int], steps_list, warmup: int, repeats: int) -> dict:
    """Prefix alone and predict with each step count, interleaved (time_interleaved), and the
    arithmetic of each (arithmetic_mflop)."""
    rng = np.random.default_rng(0)
    images = {key: rng.integers(0, 256, (*image_hw, 3), dtype=np.uint8) for key in runtime.camera_keys}
    state = np.zeros(runtime.config.real_state_dim)
    runtime.set_instruction(INSTRUCTION)
    calls = {"prefix_only": lambda: runtime.predict_prefix(images)}
    for steps in steps_list:
        calls[f"steps_{steps}"] = lambda steps=steps: runtime.predict(images, state, steps=steps)
    result = time_interleaved(calls, warmup, repeats)
    result["mflop"] = arithmetic_mflop(calls)
    if 1 in steps_list:
        result["one_step_over_prefix"] = round(result["steps_1"]["p50_ms"] / result["prefix_only"]["p50_ms"], 3)
        result["mflop_one_step_over_prefix"] = round(result["mflop"]["steps_1"] / result["mflop"]["prefix_only"], 3)
        if 10 in steps_list:
            result["mflop_ten_over_one"] = round(result["mflop"]["steps_10"] / result["mflop"]["steps_1"], 3)
    return result


def step_costs(result: dict) -> dict:
    """From measure() with 1 and 10 steps: ten over one step, one head step (the cost of each
    extra step) over the prefix, and what a one-step predict spends besides the prefix and its
    step: the head's condition pass (cached layout), state/noise/output handling."""
    def costs(statistic: str) -> dict:
        one, ten, prefix = (result[key][statistic] for key in ("steps_1", "steps_10", "prefix_only"))
        head_step = (ten - one) / 9
        return {"ten_over_one": round(ten / one, 3), "head_step_ms": round(head_step, 3),
                "head_step_over_prefix": round(head_step / prefix, 3),
                "one_step_rest_ms": round(one - prefix - head_step, 3)}

    # p50 is the figure; the fastest calls show the cost with the least interference from others.
    return {**costs("p50_ms"), "from_min_ms": costs("min_ms")}


def with_layout(policy: VLAPolicy, attention: str) -> VLAPolicy:
    """The same backbone and statistics with a freshly initialised head in `attention` layout."""
    values = policy.config.to_dict()
    values["head"]["attention"] = attention
    torch.manual_seed(0)
    return VLAPolicy(PolicyConfig.from_dict(values), policy.backbone, policy.stats)


def camera_hw(config: PolicyConfig) -> tuple[int, int]:
    """The frame size the policy was trained on (its first camera's), else ALOHA's 480x640."""
    sizes = config.extra.get("training", {}).get("camera_image_sizes", {}) if isinstance(config.extra, dict) else {}
    size = sizes.get(config.camera_keys[0]) if isinstance(sizes, dict) else None
    return tuple(size) if size else (480, 640)


def measure_head(policy: VLAPolicy, condition_tokens: int, warmup: int, repeats: int) -> dict:
    """The head alone on a random condition of the prefix's size, interleaved: its per-observation
    condition pass (block-causal only) and one step (cached step, or the whole sequence for a
    bidirectional head). Clean figures where whole predicts are too long and noisy to difference."""
    config, head = policy.config, policy.head
    generator = torch.Generator().manual_seed(0)
    condition = torch.randn(1, condition_tokens, config.head.condition_dim, generator=generator)
    mask = torch.ones(1, condition_tokens, dtype=torch.bool)
    state = torch.zeros(1, config.state_dim)
    noise = torch.randn(1, config.horizon, config.action_dim, generator=generator)
    t = torch.zeros(1)
    with torch.inference_mode():
        if head.cacheable:
            cache = head.encode_condition(condition, mask, state)
            calls = {"condition_pass": lambda: head.encode_condition(condition, mask, state),
                     "step": lambda: head.step(cache, noise, t)}
        else:
            calls = {"step": lambda: head(condition, mask, state, noise, t)}
        return {"condition_tokens": condition_tokens, **time_interleaved(calls, warmup, repeats)}


def bench_layouts(checkpoint: str | None, warmup: int, repeats: int, threads: int, configs=("tiny",),
                  instructions=("cut", "padded")) -> dict:
    """Prefix, 1 and 10 steps for both attention layouts, one camera, for the named random
    configurations and the checkpoint's architecture, instruction cut and/or padded (CPU)."""
    profile = load_profile(PROFILE)
    cases = {}
    for name in configs:
        policy = build_random_policy(name, profile, profile.camera_names[:1])
        cases[name] = {layout: with_layout(policy, layout) for layout in (BLOCK_CAUSAL, BIDIRECTIONAL)}
    if checkpoint:
        shipped = load_checkpoint(checkpoint)
        cases["checkpoint"] = {shipped.config.head.attention + " (trained weights)": shipped}
        for layout in (BLOCK_CAUSAL, BIDIRECTIONAL):
            if layout != shipped.config.head.attention:
                cases["checkpoint"][layout] = with_layout(shipped, layout)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = {"threads": threads, "steps": [1, 10], "targets": {"ten_over_one_max": 1.6, "one_step_over_prefix_max": 1.1,
                                                           "head_step_over_prefix_max": 0.1}}
    try:
        for name, policies in cases.items():
            config = next(iter(policies.values())).config
            entry = {"source": checkpoint if name == "checkpoint" else f"random:{name}",
                     "cameras": list(config.camera_keys), "image_hw": list(camera_hw(config)),
                     "horizon": config.horizon, "head": {k: v for k, v in config.head.to_dict().items()
                                                         if k != "attention"},
                     "condition_tokens_padded": None, "layouts": {}}
            for layout, policy in policies.items():
                for pad_text in [text == "padded" for text in instructions]:
                    runtime = PolicyRuntime.from_policy(policy, device="cpu", pad_text=pad_text)
                    result = measure(runtime, camera_hw(config), [1, 10], warmup, repeats)
                    entry["condition_tokens_padded"] = runtime.policy.backbone.num_tokens(len(config.camera_keys))
                    entry[f"instruction_tokens_{'padded' if pad_text else 'cut'}"] = int(runtime._text[0].shape[1])
                    key = f"{layout}, instruction {'padded' if pad_text else 'cut'}"
                    tokens = len(config.camera_keys) * policy.backbone.tokens_per_image + runtime._text[0].shape[1]
                    head = measure_head(runtime.policy, int(tokens), warmup, max(repeats, 20))
                    head["step_over_prefix"] = round(head["step"]["p50_ms"] / result["prefix_only"]["p50_ms"], 4)
                    entry["layouts"][key] = {**result, **step_costs(result), "head_only": head}
            out[name] = entry
    finally:
        torch.set_num_threads(previous_threads)
    return out


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
    parser.add_argument("--checkpoint", help="also time this checkpoint's architecture in both attention layouts")
    parser.add_argument("--layout-configs", nargs="+", default=["tiny"], help="named random configs for the "
                        "attention-layout comparison (e.g. tiny 1.4b; 1.4b takes seconds per call on a CPU)")
    parser.add_argument("--instructions", nargs="+", choices=["cut", "padded"], default=["cut", "padded"],
                        help="instruction cut to its real tokens and/or padded to max_text_tokens")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-layouts", action="store_true", help="skip the attention-layout comparison")
    parser.add_argument("--skip-gpu", action="store_true")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1 or min(args.steps) < 1 \
            or not 1 <= min(args.cameras) <= max(args.cameras) <= 4:
        parser.error("repeats/threads/steps must be positive, warmup >= 0, cameras in 1..4")
    report = {"benchmark": "policy", "torch": torch.__version__,
              "load_average_before": [round(v, 2) for v in os.getloadavg()], "cpu_count": os.cpu_count()}
    if not args.skip_cpu:
        report["cpu"] = bench_cpu(args.config, args.cameras, args.steps, args.warmup, args.repeats, args.threads)
    if not args.skip_layouts:
        report["layouts"] = bench_layouts(args.checkpoint, args.warmup, args.repeats, args.threads,
                                          args.layout_configs, args.instructions)
    if torch.cuda.is_available() and not args.skip_gpu:
        report["cuda"] = bench_cuda("1.4b", 3, args.steps, args.warmup, args.repeats)
    else:
        report["cuda"] = None if args.skip_gpu else "no CUDA device"
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(report, indent=2))
    return 0
