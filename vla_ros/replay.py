"""`vla-ros replay`: evaluate a checkpoint offline on a recorded ROS 2 bag, before it drives a robot.

The bag is replayed in simulated time exactly as policy_node would live it: the newest decoded
inputs at each control tick (vla_ros.data.convert.LatestInputs, shared with `vla-ros convert`), the
SAME Controller (input gating, latency-aware chunk executor, safety filter), armed at the first
tick whose inputs pass the gate, starting from the measured pose. Inference runs for real on each
observation the node would have predicted from, and its chunk reaches the controller only after
the inference latency (the measured predict time, or --latency) has elapsed in bag time, so late
chunks are handled as on the robot. Replanning follows the node: every --replan-period seconds,
or as soon as the previous prediction is done when it takes longer.

Output: a bag with the commanded JointTrajectory per arm on /replay/<arm>/joint_trajectory (the arm
joints and the gripper joint angle, one point one tick ahead; never the driver's own topics, so
that playing the output bag next to a robot cannot move it), /diagnostics (DiagnosticArray, once a second) and
/replay/events (std_msgs/String JSON, one per tick with a hold or a safety intervention); a JSON
report; and a plot of commanded vs recorded joint positions beside the report.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla_ros.control.controller import Controller, ControllerConfig
from vla_ros.control.safety import FAULT, ArmingError
from vla_ros.data.bags import BagError, BagReader, BagWriter
from vla_ros.data.convert import BagInputs, LatestInputs
from vla_ros.robot.profile import ProfileError, RobotProfile, load_profile

EVENTS_TOPIC = "/replay/events"
DIAGNOSTICS_TOPIC = "/diagnostics"
HOLD_PREFIX = "hold_"
DEFAULT_REPLAN_PERIOD = 0.1  # policy_node's default
MIN_REPLAN_GAP = 0.002  # policy_node waits at least this long between predictions
DIAGNOSTICS_PERIOD = 1.0


def commands_topic(arm) -> str:
    """Where the output bag records an arm's commands."""
    return f"/replay/{arm.name}/joint_trajectory"


class ReplayError(ValueError):
    """The replay cannot run: bad bag, checkpoint, profile or options (message says which)."""


DEFAULT_LATENCY_S = 0.05  # a fixed model latency: the same report on any machine, under any load


@dataclass
class ReplayOptions:
    """Defaults evaluate the whole bag reproducibly: the recorded arm never follows the replayed
    commands, so there is no tracking bound (as in a dry run); a fault re-arms from the measured
    pose; the model latency is fixed. latency_s None uses each call's measured predict time."""

    latency_s: float | None = DEFAULT_LATENCY_S
    replan_period: float = DEFAULT_REPLAN_PERIOD
    storage: str | None = None  # output bag storage; None: the input bag's
    rearm: bool = True  # after a fault, arm again from the measured pose, as an operator would
    controller: ControllerConfig = field(default_factory=lambda: ControllerConfig(track_measured=False))


def _stats_ms(values_s: list[float]) -> dict:
    if not values_s:
        return {"count": 0}
    ms = np.asarray(values_s) * 1e3
    return {"count": len(ms), "mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)),
            "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


class _Recorder:
    """Writes the replay's output bag and keeps the series the report and the plot need."""

    def __init__(self, writer: BagWriter, profile: RobotProfile, dt: float):
        self.writer, self.profile, self.dt = writer, profile, dt
        types = writer.typestore.types
        self._key_value = types["diagnostic_msgs/msg/KeyValue"]
        self._status = types["diagnostic_msgs/msg/DiagnosticStatus"]
        self._array = types["diagnostic_msgs/msg/DiagnosticArray"]
        self.times: list[float] = []
        self.commands: list[np.ndarray] = []
        self.measured: list[np.ndarray] = []
        self.operator: list[np.ndarray | None] = []
        self.holding: list[bool] = []
        self.reasons: dict[str, int] = {}
        self.events = 0
        self.hold_ticks = 0
        self.trajectories = 0
        self.diagnostics = 0

    def tick(self, now_ns: int, result, measured, operator) -> None:
        for reason in result.reasons:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        holding = any(r.startswith(HOLD_PREFIX) for r in result.reasons)
        self.hold_ticks += holding
        if result.reasons:
            event = {"t": now_ns * 1e-9, "state": result.state, "reasons": list(result.reasons)}
            self.writer.write(EVENTS_TOPIC, now_ns, self.writer.string_msg(json.dumps(event)))
            self.events += 1
        if result.command is None:
            return
        for arm_index, arm in enumerate(self.profile.arms):
            positions = result.command[self.profile.arm_slice(arm_index)].copy()
            positions[-1] = self.profile.follower_joint.denormalize(positions[-1])
            msg = self.writer.joint_trajectory(self.profile.command_joint_names(arm), [positions], [self.dt], now_ns)
            self.writer.write(commands_topic(arm), now_ns, msg)
            self.trajectories += 1
        self.times.append(now_ns * 1e-9)
        self.commands.append(result.command)
        self.measured.append(measured)
        self.operator.append(operator)
        self.holding.append(holding)

    def diagnostics_msg(self, now_ns: int, values: dict) -> None:
        state = str(values.get("state", ""))
        level = 2 if state in ("fault", "estopped") else 1 if state == "holding" else 0
        status = self._status(level=level, name="replay: policy", message=state, hardware_id=self.profile.name,
                              values=[self._key_value(key=str(k), value=str(v)) for k, v in values.items()])
        self.writer.write(DIAGNOSTICS_TOPIC, now_ns, self._array(header=self.writer.header(now_ns), status=[status]))
        self.diagnostics += 1


def _action_error(profile: RobotProfile, recorder: _Recorder) -> dict | None:
    """Per joint error between the commanded targets and the operator's (leader) actions, over
    the ticks where the policy was in control (not holding)."""
    pairs = [(c, o) for c, o, h in zip(recorder.commands, recorder.operator, recorder.holding) if o is not None and not h]
    if not pairs:
        return None
    error = np.stack([c for c, _ in pairs]) - np.stack([o for _, o in pairs])
    per_joint = {name: {"mae": float(np.abs(error[:, i]).mean()), "rmse": float(np.sqrt((error[:, i] ** 2).mean())),
                        "max": float(np.abs(error[:, i]).max())}
                 for i, name in enumerate(profile.vector_names)}
    return {"ticks": len(pairs), "mae": float(np.abs(error).mean()), "per_joint": per_joint,
            "units": "rad for arm joints, normalised [0, 1] for grippers"}


def plot_replay(path: Path, profile: RobotProfile, recorder: _Recorder) -> None:
    """Commanded vs recorded (follower, and leader when present) position per joint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = np.asarray(recorder.times) - recorder.times[0]
    commands = np.stack(recorder.commands)
    measured = np.stack(recorder.measured)
    operator = [o for o in recorder.operator if o is not None]
    per_arm = profile.joints_per_arm
    fig, axes = plt.subplots(per_arm, len(profile.arms), figsize=(6 * len(profile.arms), 2 * per_arm),
                             sharex=True, squeeze=False)
    holds = np.asarray(recorder.holding)
    for index, name in enumerate(profile.vector_names):
        ax = axes[index % per_arm][index // per_arm]
        ax.plot(times, measured[:, index], color="0.5", label="recorded follower")
        if len(operator) == len(times):
            ax.plot(times, np.stack(operator)[:, index], color="tab:orange", label="recorded leader (operator)")
        ax.plot(times, commands[:, index], color="tab:blue", label="commanded (policy + safety)")
        if holds.any():
            ax.fill_between(times, 0, 1, where=holds, color="tab:red", alpha=0.15, transform=ax.get_xaxis_transform(),
                            label="hold")
        ax.set_ylabel(name, fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("time since arming (s)")
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def replay_bag(bag_path: str | Path, runtime, profile: RobotProfile, out_bag: str | Path,
               options: ReplayOptions | None = None, plot_path: str | Path | None = None) -> dict:
    """Replay ``bag_path`` through ``runtime`` (a PolicyRuntime) and the Controller; write
    ``out_bag`` (and the plot, when ``plot_path`` is given); return the report. Raises ReplayError
    / BagError with a message for the user."""
    options = options or ReplayOptions()
    if options.latency_s is not None and not (math.isfinite(options.latency_s) and options.latency_s >= 0):
        raise ReplayError(f"--latency must be a finite number of seconds >= 0, got {options.latency_s}")
    if not (math.isfinite(options.replan_period) and options.replan_period >= 0):
        raise ReplayError(f"--replan-period must be >= 0 s, got {options.replan_period}")
    wall_start = time.perf_counter()
    controller = Controller(profile, options.controller)
    dt_ns = int(round(controller.dt * 1e9))
    with BagReader(bag_path) as bag:
        inputs = BagInputs.resolve(profile, bag)
        latest = LatestInputs(profile, inputs)
        storage = options.storage or bag.storage
        with BagWriter(out_bag, storage) as writer:
            recorder = _Recorder(writer, profile, controller.dt)
            sim = _Simulation(controller, runtime, latest, recorder, options)
            next_tick = first_ns = last_ns = None
            for message in bag.messages(inputs.topics):
                if next_tick is None:
                    next_tick = first_ns = message.timestamp_ns
                while next_tick < message.timestamp_ns:
                    sim.tick(next_tick)
                    next_tick += dt_ns
                latest.update(message)
                last_ns = message.timestamp_ns
            while next_tick is not None and next_tick <= last_ns:
                sim.tick(next_tick)
                next_tick += dt_ns
    if sim.enabled_at_ns is None:
        reasons = ", ".join(f"{k} x{v}" for k, v in sorted(sim.gate_failures.items())) or "no input messages"
        last = f"; last input error: {latest.last_error}" if latest.last_error else ""
        raise ReplayError(f"{bag_path}: the inputs never passed the gate, so the policy was never armed "
                          f"(gate reasons over the bag: {reasons}){last}")
    wall_s = time.perf_counter() - wall_start
    bag_seconds = (last_ns - first_ns) * 1e-9
    interventions = {k: v for k, v in recorder.reasons.items() if not k.startswith(HOLD_PREFIX) and k in
                     controller.safety.counters}
    report = {
        "bag": str(bag_path),
        "output_bag": str(out_bag),
        "profile": profile.name,
        "control_rate_hz": 1.0 / controller.dt,
        "steps": runtime.steps,
        "bag_seconds": bag_seconds,
        "armed_at_s": (sim.enabled_at_ns - first_ns) * 1e-9,
        "ticks": sim.ticks,
        "ticks_before_arming": sim.ticks_before_arming,
        "commands": len(recorder.commands),
        "trajectory_messages": recorder.trajectories,
        "trajectory_topics": [commands_topic(arm) for arm in profile.arms],
        "holds": recorder.hold_ticks,
        "holds_by_reason": {k: v for k, v in sorted(recorder.reasons.items()) if k.startswith(HOLD_PREFIX)},
        "safety_interventions": dict(sorted(interventions.items())),
        "gate_reasons": {k: v for k, v in sorted(recorder.reasons.items())
                         if not k.startswith(HOLD_PREFIX) and k not in interventions},
        "event_messages": recorder.events,
        "diagnostics_messages": recorder.diagnostics,
        "final_state": controller.safety.state,
        "faults": {k: v for k, v in sorted(controller.safety.counters.items()) if k.startswith("fault_")},
        "rearms": sim.rearms,
        "fault_reason": controller.safety.fault_reason,
        "chunks": dict(sorted(controller.chunk_counters.items())),
        "inference": {"predictions": len(sim.predict_s), "undelivered_at_end": int(sim.pending is not None),
                      "latency_model": "measured" if options.latency_s is None
                      else f"fixed {options.latency_s} s", "predict_ms": _stats_ms(sim.predict_s)},
        "input_errors": dict(latest.errors),
        "last_input_error": latest.last_error,
        "action_error": _action_error(profile, recorder) if inputs.leaders else None,
        "wall_seconds": wall_s,
        "realtime_factor": bag_seconds / wall_s if wall_s > 0 else math.inf,
    }
    if plot_path is not None:
        plot_replay(Path(plot_path), profile, recorder)
        report["plot"] = str(plot_path)
    return report


class _Simulation:
    """One control tick at a time in bag time: chunk arrivals, arming, the tick, predictions."""

    def __init__(self, controller: Controller, runtime, latest: LatestInputs, recorder: _Recorder,
                 options: ReplayOptions):
        self.controller, self.runtime, self.latest, self.recorder, self.options = (
            controller, runtime, latest, recorder, options)
        self.pending: tuple[float, np.ndarray, float] | None = None  # (arrival s, chunk, capture s)
        self.next_prediction = -math.inf
        self.next_diagnostics = -math.inf
        self.enabled_at_ns: int | None = None
        self.ticks = 0
        self.ticks_before_arming = 0
        self.rearms = 0
        self.predict_s: list[float] = []
        self.gate_failures: dict[str, int] = {}

    def tick(self, now_ns: int) -> None:
        now = now_ns * 1e-9
        controller, latest = self.controller, self.latest
        if self.pending is not None and self.pending[0] <= now:
            controller.on_chunk(self.pending[1], self.pending[2])
            self.pending = None
        measured = latest.state()
        joint_stamps, camera_stamps = latest.joint_stamps(), latest.camera_stamps()
        faulted = self.enabled_at_ns is not None and controller.safety.state == FAULT
        if self.enabled_at_ns is None or (faulted and self.options.rearm):
            gate = controller.check_inputs(now, joint_stamps, camera_stamps)
            if gate.ok and measured is not None:
                try:
                    controller.enable(now, measured)
                except ArmingError as err:
                    raise ReplayError(f"cannot arm on the recorded pose at t={now:.3f} s: {err}") from None
                if self.enabled_at_ns is None:
                    self.enabled_at_ns = now_ns
                else:
                    self.rearms += 1
            elif self.enabled_at_ns is None:
                self.ticks_before_arming += 1
                for reason in gate.reasons:
                    self.gate_failures[reason] = self.gate_failures.get(reason, 0) + 1
                return
        self.ticks += 1
        result = controller.tick(now, measured, joint_stamps, camera_stamps)
        self.recorder.tick(now_ns, result, measured, latest.action())
        if now >= self.next_diagnostics:
            self.recorder.diagnostics_msg(now_ns, {**controller.diagnostics(now),
                                                   "inference_count": len(self.predict_s)})
            self.next_diagnostics = now + DIAGNOSTICS_PERIOD
        if self.pending is None and now >= self.next_prediction and controller.wants_chunks():
            self._predict(now, measured, joint_stamps, camera_stamps)

    def _predict(self, now, measured, joint_stamps, camera_stamps) -> None:
        gate = self.controller.check_inputs(now, joint_stamps, camera_stamps)
        if not gate.ok or measured is None:
            self.next_prediction = now + self.options.replan_period
            return
        started = time.perf_counter()
        chunk = self.runtime.predict(self.latest.image_arrays(), measured)
        elapsed = time.perf_counter() - started
        self.predict_s.append(elapsed)
        latency = elapsed if self.options.latency_s is None else self.options.latency_s
        self.pending = (now + latency, chunk, gate.capture_time)
        self.next_prediction = now + max(self.options.replan_period, latency + MIN_REPLAN_GAP)


def _load(args) -> tuple[RobotProfile, object]:
    from vla_ros.policy import checkpoint as checkpoints
    from vla_ros.policy.runtime import PolicyRuntime

    profile_name = args.profile
    if profile_name is None:
        profile_name = checkpoints.load_config(args.checkpoint).robot_profile
        if not profile_name:
            raise ReplayError(f"{args.checkpoint}: the checkpoint names no robot profile; pass --profile")
    profile = load_profile(profile_name)
    runtime = PolicyRuntime(args.checkpoint, device=args.device, steps=args.steps,
                            deterministic=not args.stochastic, profile=profile)
    runtime.set_instruction(args.instruction)
    return profile, runtime


def _latency_argument(text: str) -> float | None:
    if text == "measured":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'measured', got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    """`vla-ros replay BAG --checkpoint DIR --out OUTBAG --report REPORT.json`; exit 1 on error."""
    parser = argparse.ArgumentParser(prog="vla-ros replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("bag", help="bag directory, or its .db3/.mcap file")
    parser.add_argument("--checkpoint", required=True, help="policy checkpoint directory")
    parser.add_argument("--out", required=True, help="output bag directory (must not exist)")
    parser.add_argument("--report", required=True, help="JSON report path; the plot goes beside it (.png)")
    parser.add_argument("--steps", type=int, help="decoding steps (default: the checkpoint's recommendation)")
    parser.add_argument("--profile", help="robot profile name or YAML path (default: the checkpoint's)")
    parser.add_argument("--latency", type=_latency_argument, default=DEFAULT_LATENCY_S,
                        help=f"model inference latency in seconds (default {DEFAULT_LATENCY_S}: reproducible on any "
                        "machine), or 'measured': each call's predict time on this machine")
    parser.add_argument("--replan-period", type=float, default=DEFAULT_REPLAN_PERIOD,
                        help="seconds between policy calls, as policy_node's replan_period")
    parser.add_argument("--chunk-blend", default=ControllerConfig.chunk_blend, choices=("ensemble", "crossfade", "replace"))
    parser.add_argument("--instruction", default="", help="language instruction")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stochastic", action="store_true", help="sample the initial noise (default: zero noise)")
    parser.add_argument("--stop-at-fault", action="store_true",
                        help="end the evaluation at the first safety fault (default: re-arm from the measured "
                        "pose and evaluate the whole bag)")
    parser.add_argument("--track", action="store_true",
                        help="apply the tracking bound against the recorded pose (only meaningful when the bag's "
                        "arm followed these very commands; a recorded bag's arm does not)")
    parser.add_argument("--storage", choices=("sqlite3", "mcap"), help="output bag storage (default: the input's)")
    args = parser.parse_args(argv)
    report_path = Path(args.report)
    out_bag = Path(args.out)
    created_out = False
    try:
        if out_bag.exists():
            raise ReplayError(f"{out_bag}: output bag already exists; choose a new path")
        BagReader(args.bag).close()  # a bad bag is reported before the checkpoint is loaded
        profile, runtime = _load(args)
        options = ReplayOptions(latency_s=args.latency, replan_period=args.replan_period, storage=args.storage,
                                rearm=not args.stop_at_fault,
                                controller=ControllerConfig(chunk_blend=args.chunk_blend, track_measured=args.track))
        created_out = True
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report = replay_bag(args.bag, runtime, profile, out_bag, options, plot_path=report_path.with_suffix(".png"))
        report_path.write_text(json.dumps(report, indent=1))
    except (BagError, ReplayError, ProfileError, ValueError, OSError) as err:
        if created_out and out_bag.exists():
            shutil.rmtree(out_bag, ignore_errors=True)  # a partial output bag would pass for a result
        print(f"vla-ros replay: {err}", file=sys.stderr)
        return 1
    summary = {k: report[k] for k in ("commands", "holds", "holds_by_reason", "safety_interventions",
                                      "realtime_factor", "plot")}
    summary["predict_ms_p50"] = report["inference"]["predict_ms"].get("p50")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
