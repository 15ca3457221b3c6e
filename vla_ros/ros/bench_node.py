"""Benchmark: policy_node's latency and timer jitter as a separate process, printed as JSON.

policy_node runs on a reserved ROS domain with a tiny random checkpoint; this process plays the
robot: it publishes joint states and camera frames at the control rate (stamped with the send
time) and its arms follow the latest command. After arming, for --seconds it measures

- observation_to_chunk_ms: policy_node's diagnostic 'last_chunk_latency_s' for each new accepted
  chunk = (last control tick before the chunk was accepted) - (oldest camera stamp it was
  predicted from). The node dates acceptance by its last tick, so this proxy has the resolution
  of one control period (20 ms at 50 Hz) and can be negative; the true latency lies in
  [value, value + period). It shows frames are used promptly; it cannot resolve a 3 ms overhead;
- bare_predict_ms: PolicyRuntime.predict in this process on the same checkpoint, image size and
  thread count, measured before the node starts; node_inference_ms is the same call timed inside
  the node (its diagnostics), so node_overhead_ms_p50 = node_inference p50 - bare predict p50 is
  what running inside the node (its executor threads contend for the GIL and the cores) adds
  to each prediction;
- jitter (|interval - control period|): of the receipt times here of the arm commands (the
  profile's command interface; xs_sdk's commands carry no stamp), and the node's own
  timer_jitter diagnostics (its last 2000 ticks, so start-up and warm-up included: the jitter
  target); the feeder's own send-interval jitter shows whether this process kept its 50 Hz;
- diagnostic_states / hold_reasons: the node's state and input-gate reasons per diagnostics
  message in the window (holds mean the node saw stale inputs: the figures are then under load).

    python -m vla_ros.ros.bench_node --seconds 10 --image-size 480x640 [--image-transport compressed]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_srvs.srv import SetBool

from vla_ros.robot.profile import ProfileError, load_profile
from vla_ros.ros import convert
from vla_ros.ros.command_interfaces import CommandLog, InterbotixDriverState
from vla_ros.ros.episodes import write_camera_size_profile
from vla_ros.ros.follower_setup import InterbotixDriverServices
from vla_ros.ros.qos import image_qos, state_qos
from vla_ros.ros.processes import NodeProcess, Probe, module_command, ros_context
from vla_ros.sim.collect import TASK_TEXT, image_size_argument

STARTUP_TIMEOUT = 120.0
INSTRUCTION = TASK_TEXT["transfer_cube"]
TARGETS_MS = {"node_overhead_p50": 3.0, "jitter_p99": 5.0}  # on CPU


class RobotFeeder:
    """Publishes every arm's joint state and every camera at the control rate from the benchmark
    process; the arms follow the latest received command so the node sees the pose it asked for."""

    def __init__(self, probe: Probe, profile, width: int, height: int, commands: CommandLog, compressed: bool):
        self.probe, self.profile, self.commands = probe, profile, commands
        self.pose = profile.start_pose.copy()
        node = probe.node
        self.joint_publishers = [node.create_publisher(JointState, arm.joint_states_topic, state_qos())
                                 for arm in profile.arms]
        # One frame, restamped each tick: a camera-like picture (smooth, a little noise) so that
        # JPEG sizes are realistic; encoding it once keeps the feeder's own cost out of the figures.
        rows, cols = np.mgrid[0:height, 0:width]
        noise = np.random.default_rng(0).integers(0, 8, (height, width, 3))
        image = np.stack([rows * 255 // height, cols * 255 // width, (rows + cols) * 127 // (height + width)],
                         axis=-1) + noise
        image = np.clip(image, 0, 255).astype(np.uint8)
        self.frame = (convert.array_to_compressed(image) if compressed
                      else convert.array_to_image(image, "rgb8", bridge=None))
        image_type = CompressedImage if compressed else Image
        self.image_publishers = [node.create_publisher(image_type, convert.camera_topic(camera.topic, compressed),
                                                       image_qos()) for camera in profile.cameras]
        self.send_times: list[float] = []  # monotonic; shows when the benchmark itself stalls
        node.create_timer(profile.dt, self.publish)

    def publish(self) -> None:
        self.send_times.append(time.monotonic())
        commanded = np.isfinite(self.commands.pose)
        self.pose[commanded] = self.commands.pose[commanded]
        stamp = self.probe.node.get_clock().now().to_msg()
        for index, (arm, publisher) in enumerate(zip(self.profile.arms, self.joint_publishers)):
            part = self.pose[self.profile.arm_slice(index)]
            publisher.publish(convert.arm_joint_state(self.profile, arm, part, np.zeros_like(part), stamp,
                                                      "right_finger"))
        self.frame.header.stamp = stamp
        for publisher in self.image_publishers:
            publisher.publish(self.frame)


def _summary(samples_ms) -> dict:
    """p50/p99/mean/n of a latency sample; a benchmark without samples has failed to measure."""
    from vla_ros.policy.bench import percentiles

    if len(samples_ms) == 0:
        raise RuntimeError("no samples in the measurement window")
    return percentiles(list(samples_ms))


def _diagnostic_values(msg: DiagnosticArray) -> dict | None:
    for status in msg.status:
        if status.name.startswith("policy_node"):
            return {kv.key: kv.value for kv in status.values}
    return None


def bare_predict(checkpoint: str, profile, width: int, height: int, steps: int, threads: int,
                 repeats: int) -> dict:
    """In-process predict latency on the node's inputs: the floor the node's latency is compared with."""
    import torch

    from vla_ros.policy.bench import time_calls
    from vla_ros.policy.runtime import PolicyRuntime

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runtime = PolicyRuntime(checkpoint, steps=steps or None)
        runtime.set_instruction(INSTRUCTION)
        image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        images = {camera: image for camera in profile.camera_names}
        return time_calls(lambda: runtime.predict(images, profile.start_pose), warmup=3, repeats=repeats)
    finally:
        torch.set_num_threads(previous)


def measure_node(args, profile_path: str, checkpoint: str, domain: int) -> dict:
    profile = load_profile(profile_path)
    params = {"profile": profile_path, "checkpoint": checkpoint, "instruction": INSTRUCTION,
              "steps": args.steps, "torch_threads": args.torch_threads, "replan_period": args.replan_period,
              "diagnostics_period": args.diagnostics_period, "soft_start_time": 0.2,
              "image_transport": args.image_transport}
    with NodeProcess(module_command("vla_ros.ros.policy_node"), params, domain_id=domain) as node, \
            ros_context(domain) as context, Probe(context, "bench_node") as probe:
        log = CommandLog(probe.node, profile)
        commands = log.arm_commands
        if profile.command_interface == "interbotix":  # answer the follower setup as xs_sdk would
            InterbotixDriverServices(probe.node, profile, InterbotixDriverState(profile))
        diagnostics = probe.subscribe(DiagnosticArray, "/diagnostics")
        feeder = RobotFeeder(probe, profile, args.width, args.height, log,
                             compressed=args.image_transport == "compressed")
        probe.wait_for(lambda: any(_diagnostic_values(m) for m in diagnostics), STARTUP_TIMEOUT,
                       "policy_node diagnostics", node)
        latest = next(v for m in reversed(diagnostics) if (v := _diagnostic_values(m)))
        if latest.get("policy_loaded") != "True":
            raise RuntimeError(f"policy_node did not load the checkpoint: {latest.get('load_error')}")
        deadline = time.monotonic() + 30.0
        while not (response := probe.call(SetBool, "/policy_node/enable", SetBool.Request(data=True), 30.0,
                                          node)).success:
            if time.monotonic() > deadline:
                raise RuntimeError(f"policy_node refused to arm: {response.message}\n{node.report()}")
            probe.spin_for(0.2)
        probe.spin_for(args.settle)  # soft start and the first chunks
        first_command, first_diagnostic, first_send = len(commands[0]), len(diagnostics), len(feeder.send_times)
        started = time.monotonic()
        probe.spin_for(args.seconds)
        elapsed = time.monotonic() - started
        if not node.alive():
            raise RuntimeError(f"policy_node died during the measurement:\n{node.report()}")

        window = commands[0][first_command:]
        receipts = np.array([received for received, _ in window])
        period = profile.dt  # the node runs at the profile's control rate

        chunk_latency_ms, states, gate_reasons, accepted_seen = [], {}, {}, None
        for msg in diagnostics[first_diagnostic:]:
            values = _diagnostic_values(msg)
            if not values:
                continue
            states[values.get("state", "?")] = states.get(values.get("state", "?"), 0) + 1
            for reason in filter(None, values.get("gate_reasons", "").split(",")):
                gate_reasons[reason] = gate_reasons.get(reason, 0) + 1
            accepted = values.get("chunks_accepted")
            latency = float(values.get("last_chunk_latency_s", "nan"))
            if accepted != accepted_seen and math.isfinite(latency):  # one sample per new chunk
                chunk_latency_ms.append(latency * 1e3)
            accepted_seen = accepted
        final = next(v for m in reversed(diagnostics) if (v := _diagnostic_values(m)))
        if len(window) < 2 or not chunk_latency_ms:
            raise RuntimeError(f"policy_node published {len(window)} trajectories and {len(chunk_latency_ms)} new "
                               f"chunks in {elapsed:.1f} s: too few to measure (states {states}, hold reasons "
                               f"{gate_reasons}, fault: {final.get('fault_reason')!r})")
        return {
            "seconds": round(elapsed, 2),
            "trajectories_per_s": round(len(window) / elapsed, 2),
            "diagnostic_states": states,
            "hold_reasons": gate_reasons,
            "observation_to_chunk_ms": _summary(chunk_latency_ms),
            "observation_to_chunk_resolution_ms": round(period * 1e3, 3),
            "node_inference_ms": {"p50_ms": round(float(final["inference_ms_p50"]), 3),
                                  "p99_ms": round(float(final["inference_ms_p99"]), 3),
                                  "n": int(final["inference_count"])},
            "feeder_interval_jitter_ms": _summary(np.abs(np.diff(feeder.send_times[first_send:]) - period) * 1e3),
            "receipt_interval_jitter_ms": _summary(np.abs(np.diff(receipts) - period) * 1e3),
            "node_timer_jitter_ms": {"p50_ms": round(float(final["timer_jitter_ms_p50"]), 3),
                                     "p99_ms": round(float(final["timer_jitter_ms_p99"]), 3)},
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vla-ros bench node", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window after arming")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds after arming before measuring")
    parser.add_argument("--image-size", type=image_size_argument, default=(480, 640), help="HxW camera frames (ALOHA: 480x640)")
    parser.add_argument("--image-transport", choices=("raw", "compressed"), default="raw",
                        help="camera messages: raw sensor_msgs/Image or JPEG CompressedImage")
    parser.add_argument("--profile", default="aloha_sim")
    parser.add_argument("--config", default="tiny", help="named random-policy configuration")
    parser.add_argument("--steps", type=int, default=0, help="decoding steps; 0 = the checkpoint's recommended")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--replan-period", type=float, default=0.1)
    parser.add_argument("--diagnostics-period", type=float, default=0.1,
                        help="how often the node reports (each report samples the latest chunk latency)")
    parser.add_argument("--predict-repeats", type=int, default=50)
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.settle < 0 or args.steps < 0 or args.torch_threads < 1 or args.predict_repeats < 1:
        parser.error("--seconds must be > 0, --settle and --steps >= 0, --torch-threads and --predict-repeats >= 1")
    args.height, args.width = args.image_size
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from domain_coordinator import domain_id

    from vla_ros.policy.checkpoint import build_random_policy, save_checkpoint

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_node_") as workdir:
        try:
            profile_path = write_camera_size_profile(load_profile(args.profile), args.width, args.height, workdir)
            profile = load_profile(profile_path)
            policy = build_random_policy(args.config, profile, seed=0)
        except (ProfileError, ValueError) as exc:  # unknown profile or configuration name
            print(f"vla-ros bench node: {exc}", file=sys.stderr)
            return 2
        checkpoint = str(save_checkpoint(policy, Path(workdir) / "policy"))
        bare = bare_predict(checkpoint, profile, args.width, args.height, args.steps, args.torch_threads,
                            args.predict_repeats)
        try:
            with domain_id() as domain:
                node = measure_node(args, profile_path, checkpoint, int(domain))
        except (AssertionError, RuntimeError) as exc:  # the node failed to start, arm or publish
            print(f"vla-ros bench node: {exc}", file=sys.stderr)
            return 1
    overhead = node["node_inference_ms"]["p50_ms"] - bare["p50_ms"]
    jitter_p99 = node["node_timer_jitter_ms"]["p99_ms"]
    print(json.dumps({
        "benchmark": "policy_node", "profile": profile.name, "config": args.config,
        "image_hw": [args.height, args.width], "image_transport": args.image_transport,
        "cameras": list(profile.camera_names),
        "control_rate_hz": profile.control_rate_hz, "replan_period_s": args.replan_period,
        "torch_threads": args.torch_threads, "cpu_count": os.cpu_count(),
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "bare_predict_ms": bare, **node,
        "node_overhead_ms_p50": round(overhead, 3),
        "targets_ms": TARGETS_MS,
        "meets_targets": {"node_overhead_p50": overhead < TARGETS_MS["node_overhead_p50"],
                          "jitter_p99": jitter_p99 < TARGETS_MS["jitter_p99"]},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
