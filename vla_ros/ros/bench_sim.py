"""Benchmark: sim_node's publish rates and image latency between processes, per image QoS.

Starts sim_node (real time, 50 Hz) as its own process for each reliability, subscribes from
this process with the same QoS, and prints JSON: joint-state and image rates, frames missing
(steps whose joint state arrived but whose image did not), image latency (header stamp -> receipt, both on this
machine's clock) and sim_node's own step/overrun counters; then the speed of stepping as fast
as possible (/clock mode).

    python -m vla_ros.ros.bench_sim --seconds 10 --width 640 --height 480
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState

from vla_ros.robot.profile import load_profile
from vla_ros.ros import convert
from vla_ros.ros.qos import RELIABILITIES, image_qos
from vla_ros.ros.processes import NodeProcess, Probe, module_command, ros_context
from vla_ros.sim.aloha_sim import SIM_DT

STARTUP_TIMEOUT = 90.0


def measure(reliability: str, seconds: float, width: int, height: int, domain: int, profile_name: str) -> dict:
    profile = load_profile(profile_name)
    camera = profile.cameras[0]
    joint_topic = profile.arms[0].joint_states_topic
    params = {"profile": profile_name, "image_width": width, "image_height": height, "image_qos": reliability,
              "real_time": True, "rate": profile.control_rate_hz}
    with NodeProcess(module_command("vla_ros.ros.sim_node"), params, domain_id=domain) as node, \
            ros_context(domain) as context, Probe(context, "bench_sim") as probe:
        images = probe.subscribe(Image, camera.topic, image_qos(reliability))
        states = probe.subscribe(JointState, joint_topic)
        diagnostics = probe.subscribe(DiagnosticArray, "/diagnostics")
        probe.wait_for(lambda: len(images) >= 10 and len(states) >= 10, STARTUP_TIMEOUT,
                       "sim_node to publish", node)
        probe.spin_for(1.0)  # settle discovery and the first frames
        first_image, first_state = len(images), len(states)
        start = time.monotonic()
        probe.spin_for(seconds)
        elapsed = time.monotonic() - start
        window = images[first_image:]
        window_receipts = probe.receipt_times[camera.topic][first_image:]
        stamps = np.array([convert.time_to_seconds(m.header.stamp) for m in window])
        # latency: header stamp (sim_node's wall clock) -> receipt (this process's wall clock)
        receipt_wall = np.array(window_receipts) + (time.time() - time.monotonic())
        latency_ms = (receipt_wall - stamps) * 1e3
        # every step publishes a joint state (small, reliable) and an image with the same stamp
        published = {convert.time_to_seconds(m.header.stamp) for m in states}
        if stamps.size:
            published = {t for t in published if stamps[0] <= t <= stamps[-1]}
        missing = len(published - set(stamps.tolist()))
        counters = {}
        if diagnostics:
            counters = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
        return {
            "image_qos": reliability,
            "configured_hz": profile.control_rate_hz,
            "seconds": round(elapsed, 2),
            "joint_state_hz": round((len(states) - first_state) / elapsed, 2),
            "image_hz": round(len(window) / elapsed, 2),
            "images_received": len(window),
            "images_missing": missing,
            "image_latency_ms": {
                "mean": round(float(latency_ms.mean()), 2),
                "p50": round(float(np.percentile(latency_ms, 50)), 2),
                "p95": round(float(np.percentile(latency_ms, 95)), 2),
                "max": round(float(latency_ms.max()), 2),
            } if latency_ms.size else None,
            "sim_steps": int(counters.get("steps", 0)),
            "sim_overruns": int(counters.get("overruns", 0)),
        }


def measure_fast_mode(seconds: float, width: int, height: int, domain: int, profile_name: str) -> dict:
    """Simulated seconds per wall second when stepping as fast as possible (from /clock)."""
    params = {"profile": profile_name, "image_width": width, "image_height": height, "real_time": False}
    with NodeProcess(module_command("vla_ros.ros.sim_node"), params, domain_id=domain) as node, \
            ros_context(domain) as context, Probe(context, "bench_sim") as probe:
        clocks = probe.subscribe(Clock, "/clock")
        probe.wait_for(lambda: len(clocks) >= 10, STARTUP_TIMEOUT, "sim_node to publish /clock", node)
        first = convert.time_to_seconds(clocks[-1].clock)
        start = time.monotonic()
        probe.spin_for(seconds)
        elapsed = time.monotonic() - start
        advanced = convert.time_to_seconds(clocks[-1].clock) - first
        return {"mode": "as fast as possible", "seconds": round(elapsed, 2),
                "steps_per_s": round(advanced / SIM_DT / elapsed, 2),
                "real_time_factor": round(advanced / elapsed, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_sim", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per QoS")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--profile", default="aloha_sim")
    parser.add_argument("--qos", nargs="+", default=sorted(RELIABILITIES, reverse=True), choices=sorted(RELIABILITIES))
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.width < 16 or args.height < 16:
        parser.error("--seconds must be > 0 and the image at least 16x16")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from domain_coordinator import domain_id

    results = []
    try:
        with domain_id() as domain:
            for reliability in args.qos:
                results.append(measure(reliability, args.seconds, args.width, args.height, int(domain), args.profile))
            fast = measure_fast_mode(args.seconds, args.width, args.height, int(domain), args.profile)
    except AssertionError as exc:  # sim_node failed to start or publish: show its output
        print(f"bench_sim: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"benchmark": "sim_node", "width": args.width, "height": args.height,
                      "cpu_count": os.cpu_count(), "results": results,
                      "fast_mode": fast}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
