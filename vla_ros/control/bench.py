"""`vla-ros bench control`: per-tick cost of gating + chunk executor + safety filter.

Drives a Controller with a synthetic but realistic stream: fresh stamps every tick, a chunk every
`--replan-ticks` ticks that arrives `--latency-ticks` after its capture, a measured pose that
follows the commands. Only Controller.tick is timed (on_chunk is reported separately), in wall
time (p50_us, p99_us, max_us: what the 50 Hz timer sees, including preemption by other processes)
and in thread CPU time (cpu_*: the cost itself). Prints JSON with the 1-minute load average for
context; the target is p99 well below the 20 ms tick (< 200 us).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from vla_ros.control.chunks import BLEND_MODES
from vla_ros.control.controller import Controller, ControllerConfig
from vla_ros.robot.profile import load_profile


def _percentiles_us(samples_ns: list[int], prefix: str = "") -> dict:
    values = np.asarray(samples_ns, dtype=np.float64) / 1e3
    keys = [f"{prefix}p50_us", f"{prefix}p99_us", f"{prefix}max_us"]
    if values.size == 0:
        return dict.fromkeys(keys)
    return dict(zip(keys, (round(float(np.percentile(values, 50)), 2), round(float(np.percentile(values, 99)), 2),
                           round(float(values.max()), 2))))


def run(profile_name: str, ticks: int, blend: str, horizon: int, replan_ticks: int, latency_ticks: int,
        seed: int) -> dict:
    profile = load_profile(profile_name)
    controller = Controller(profile, ControllerConfig(chunk_blend=blend, soft_start_time=0.5))
    dt = controller.dt
    rng = np.random.default_rng(seed)
    amplitude = (profile.safe_upper() - profile.safe_lower()) * 0.2
    phase = rng.uniform(0, 2 * np.pi, profile.action_dim)

    def planned(t: float) -> np.ndarray:
        return profile.start_pose + amplitude * np.sin(0.5 * t + phase) * (t > 0)

    now = 1000.0
    measured = profile.start_pose.copy()
    controller.enable(now, measured)
    origin = now
    pending: list[tuple[int, np.ndarray, float]] = []
    tick_ns, tick_cpu_ns, chunk_ns = [], [], []
    emitted = 0
    for k in range(ticks):
        now = origin + (k + 1) * dt
        if k % replan_ticks == 0:
            capture = now
            chunk = np.stack([planned(capture - origin + j * dt) for j in range(horizon)])
            chunk += rng.normal(0.0, 0.002, chunk.shape)  # policies are not exactly consistent
            pending.append((k + latency_ticks, chunk, capture))
        while pending and pending[0][0] <= k:
            _, chunk, capture = pending.pop(0)
            started = time.perf_counter_ns()
            controller.on_chunk(chunk, capture)
            chunk_ns.append(time.perf_counter_ns() - started)
        joint_stamps = {arm.name: now - 0.004 for arm in profile.arms}
        camera_stamps = {name: now - 0.02 - 0.003 * i for i, name in enumerate(profile.camera_names)}
        started, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
        result = controller.tick(now, measured, joint_stamps, camera_stamps)
        tick_ns.append(time.perf_counter_ns() - started)
        tick_cpu_ns.append(time.thread_time_ns() - started_cpu)
        if result.command is not None:
            emitted += 1
            measured = result.command + rng.normal(0.0, 0.001, result.command.shape)
    report = {"ticks": ticks, **_percentiles_us(tick_ns), "mean_us": round(float(np.mean(tick_ns)) / 1e3, 2),
              **_percentiles_us(tick_cpu_ns, "cpu_"), "load_average_1min": round(os.getloadavg()[0], 2),
              "on_chunk": _percentiles_us(chunk_ns), "blend": blend, "horizon": horizon,
              "replan_ticks": replan_ticks, "latency_ticks": latency_ticks, "commands_emitted": emitted,
              "final_state": controller.safety.state}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vla-ros bench control", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="aloha_stationary")
    parser.add_argument("--ticks", type=int, default=20000)
    parser.add_argument("--blend", choices=BLEND_MODES, default="ensemble")
    parser.add_argument("--horizon", type=int, default=10, help="chunk length H")
    parser.add_argument("--replan-ticks", type=int, default=5, help="ticks between chunk captures")
    parser.add_argument("--latency-ticks", type=int, default=3, help="ticks from capture to arrival")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("ticks", "horizon", "replan_ticks"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.latency_ticks < 0:
        parser.error("--latency-ticks must be >= 0")
    print(json.dumps(run(args.profile, args.ticks, args.blend, args.horizon, args.replan_ticks,
                         args.latency_ticks, args.seed)))
    return 0
