"""Closed-loop episodes in simulation, run THROUGH ROS: sim_node, arm_guard and policy_node as
separate processes on an isolated ROS domain, driven by an in-process client over DDS. arm_guard is
the last hop before sim_node's drivers, as on the robot (launch/robot.launch.py).

Shared by `vla-ros demo` (one episode, a summary) and `vla-ros sim-eval` (many episodes, success
rates). The client only does what an operator would: reset the episode (sim_node ~/reset), arm the
policy (arm_guard ~/rearm, then policy_node ~/enable), watch success, commands and /diagnostics, disarm;
and, between episodes, change policy_node's instruction as an operator would (`ros2 param set`),
without restarting anything. Every episode records which of the scene's behaviours it completed
(sim_node ~/behaviours), so that an evaluation can tabulate instruction given against behaviour done.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float32
from std_srvs.srv import SetBool, Trigger

from vla_ros.robot.profile import load_profile
from vla_ros.ros import convert
from vla_ros.ros.command_interfaces import arm_command_type, command_qos
from vla_ros.ros.qos import image_qos
from vla_ros.ros.processes import NodeProcess, Probe, module_command, ros_context
from vla_ros.sim.behaviours import BEHAVIOURS, INSTRUCTIONS, NONE, classify
from vla_ros.sim.collect import TASK_TEXT
from vla_ros.sim.success import wilson_interval

NODE_MODULES = {"sim_node": "vla_ros.ros.sim_node", "policy_node": "vla_ros.ros.policy_node",
                "arm_guard": "vla_ros.ros.arm_guard"}
GUARD_INPUT = "/arm_guard/in"  # policy_node's command_namespace = arm_guard's input_namespace


def node_command(executable: str) -> list[str]:
    """The installed console script (what the launch files start), else `python -m` the module."""
    installed = shutil.which(executable, path=str(Path(sys.executable).parent))
    return [installed] if installed else module_command(NODE_MODULES[executable])


@dataclass
class SessionConfig:
    checkpoint: str
    profile: str = "aloha_sim"
    task: str = "transfer_cube"
    instruction: str = TASK_TEXT["transfer_cube"]  # what collect-sim datasets are labelled with
    steps: int = 0  # decoding steps; 0 = the checkpoint's recommended
    seed: int = 0  # episode k of the session uses seed + k (sim_node's convention)
    episode_steps: int = 400  # 8 s at 50 Hz, the gym-aloha episode length
    image_width: int = 640
    image_height: int = 480
    deterministic: bool = False
    soft_start_time: float = 0.2
    # JPEG between sim_node and policy_node: measured here, raw 640x480 frames over Fast DDS delayed
    # the small joint-state messages past the 0.1 s freshness gate (holds); JPEG did not.
    compressed_images: bool = True
    # sim_node publishes /clock and the other nodes run on it (use_sim_time): when the simulation
    # falls behind the wall clock on a loaded machine, the policy's clock slows with it. False:
    # everything on the wall clock (the simulation then runs slower than its commander thinks).
    sim_clock: bool = True
    # sim_node waits up to this long (s) after each step for the policy's goal for the next one
    # (sim_node lockstep_timeout; needs sim_clock): on a busy machine a third of the goals otherwise
    # reached the simulation a step after the one they were computed for. 0: free-running.
    lockstep_timeout: float = 0.1
    # further policy_node parameters (e.g. {"noise_correlation": 16.0}): what an operator would set
    policy_params: dict = field(default_factory=dict)
    # cam_high of the first `video_episodes` episodes as mp4; '{episode}' in the path is the index
    video_path: str = ""
    video_episodes: int = 1
    startup_timeout: float = 120.0


@dataclass
class EpisodeResult:
    episode: int
    seed: int
    success: bool
    max_reward: float
    steps: int
    time_to_success_s: float | None
    commands_published: int
    diagnostics: dict = field(default_factory=dict)
    guard: dict = field(default_factory=dict)  # arm_guard's diagnostics at the end of the episode
    instruction: str = ""  # what policy_node was told during the episode
    completed: dict = field(default_factory=dict)  # behaviour -> episode step it completed at, or None
    behaviour: str = NONE  # the behaviour completed first (vla_ros.sim.behaviours.classify)


def _parse_value(text: str):
    """DiagnosticStatus values are strings; numbers come back as numbers."""
    try:
        return float(text) if any(c in text for c in ".en") else int(text)
    except ValueError:
        return text


def _diagnostic_values(msg: DiagnosticArray, prefix: str) -> dict | None:
    for status in msg.status:
        if status.name.startswith(prefix):
            return {kv.key: _parse_value(kv.value) for kv in status.values}
    return None


def write_camera_size_profile(profile, width: int, height: int, directory: str | os.PathLike) -> str:
    """A profile YAML in `directory` that extends `profile` with every camera at width x height:
    nodes check frame sizes against the profile, so smaller test/benchmark frames need one."""
    import yaml

    cameras = [{"name": c.name, "topic": c.topic, "width": int(width), "height": int(height)}
               for c in profile.cameras]
    path = Path(directory) / f"{profile.name}_{width}x{height}.yaml"
    path.write_text(yaml.safe_dump({"extends": profile.source, "name": profile.name, "cameras": cameras}))
    return str(path)


def completed_behaviours(status: DiagnosticStatus | None) -> dict[str, int | None]:
    """sim_node's ~/behaviours message -> behaviour: the step it completed at, or None."""
    values = {kv.key: kv.value for kv in status.values} if status is not None else {}
    return {name: int(values[name]) if values.get(name) else None for name in BEHAVIOURS}


class SimSession:
    """sim_node + arm_guard + policy_node on a reserved ROS domain; use as a context manager."""

    def __init__(self, config: SessionConfig):
        self.config = config
        self.profile = load_profile(config.profile)
        self._stack = contextlib.ExitStack()
        self.episodes_run = 0
        self.instruction = config.instruction

    def __enter__(self) -> SimSession:
        from domain_coordinator import domain_id

        try:
            self.domain = int(self._stack.enter_context(domain_id()))
            # The children get the domain through their environment only: this process keeps its
            # own (the client context below is bound to the domain explicitly).
            env = {"ROS_DOMAIN_ID": str(self.domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
            cfg = self.config
            self.sim = self._stack.enter_context(NodeProcess(
                node_command("sim_node"), domain_id=self.domain, env=env,
                params={"profile": cfg.profile, "task": cfg.task, "seed": cfg.seed,
                        "image_width": cfg.image_width, "image_height": cfg.image_height,
                        "image_format": "jpeg" if cfg.compressed_images else "raw",
                        "publish_clock": cfg.sim_clock,
                        "lockstep_timeout": cfg.lockstep_timeout if cfg.sim_clock else 0.0}))
            self.guard = self._stack.enter_context(NodeProcess(
                node_command("arm_guard"), domain_id=self.domain, env=env,
                params={"profile": cfg.profile, "input_namespace": GUARD_INPUT, "use_sim_time": cfg.sim_clock,
                        "simulation_clock": cfg.sim_clock}))
            self.policy = self._stack.enter_context(NodeProcess(
                node_command("policy_node"), domain_id=self.domain, env=env,
                params={"profile": self._profile_for_policy(), "checkpoint": cfg.checkpoint,
                        "instruction": cfg.instruction, "steps": cfg.steps, "command_namespace": GUARD_INPUT,
                        "deterministic": cfg.deterministic, "soft_start_time": cfg.soft_start_time,
                        "image_transport": "compressed" if cfg.compressed_images else "raw",
                        "use_sim_time": cfg.sim_clock,
                        # sim_node answers the driver's setup services only once it spins: on a
                        # loaded machine that took more than policy_node's 5 s default
                        "follower_setup_timeout": cfg.startup_timeout / 4, **cfg.policy_params}))
            context = self._stack.enter_context(ros_context(self.domain))
            self.probe = self._stack.enter_context(Probe(context, "sim_session_client"))
            self._subscribe()
            self._wait_until_ready()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def _profile_for_policy(self) -> str:
        """The policy node must see the camera size sim_node publishes: a derived profile when the
        size differs from the profile's (written next to nothing the user owns: a temp file)."""
        camera = self.profile.cameras[0]
        if (camera.width, camera.height) == (self.config.image_width, self.config.image_height):
            return self.profile.source
        import tempfile

        directory = self._stack.enter_context(tempfile.TemporaryDirectory())
        return write_camera_size_profile(self.profile, self.config.image_width, self.config.image_height, directory)

    def _subscribe(self) -> None:
        self.success_msgs = self.probe.subscribe(Bool, "/sim_node/success")
        self.behaviour_msgs = self.probe.subscribe(DiagnosticStatus, "/sim_node/behaviours")
        self.reward_msgs = self.probe.subscribe(Float32, "/sim_node/reward")
        self.joint_msgs = self.probe.subscribe(JointState, self.profile.arms[0].joint_states_topic)
        # Counted only: decoding every command here took CPU from the nodes under test.
        record_all = command_qos()
        record_all.depth = 100
        self.command_msgs = self.probe.subscribe(arm_command_type(self.profile), self.profile.arms[0].arm_command_topic,
                                                 record_all)
        self.diagnostic_msgs = self.probe.subscribe(DiagnosticArray, "/diagnostics")
        compressed = self.config.compressed_images
        self.image_msgs = (self.probe.subscribe(CompressedImage if compressed else Image,
                                                convert.camera_topic(self.profile.cameras[0].topic, compressed),
                                                image_qos())
                           if self.config.video_path else None)

    def _wait_until_ready(self) -> None:
        timeout = self.config.startup_timeout
        self.probe.wait_for(lambda: len(self.joint_msgs) > 0, timeout, "sim_node joint states", self.sim)
        self.probe.wait_for(lambda: self.policy_diagnostics() is not None, timeout,
                            "policy_node diagnostics", self.policy)
        loaded = self.policy_diagnostics().get("policy_loaded")
        if loaded != "True":  # booleans stay strings
            raise RuntimeError(f"policy_node did not load the policy: {self.policy_diagnostics().get('load_error')}")
        self.probe.wait_for(lambda: self.guard_diagnostics() is not None, timeout, "arm_guard diagnostics", self.guard)

    def policy_diagnostics(self) -> dict | None:
        return self._latest_diagnostics("policy_node")

    def guard_diagnostics(self) -> dict | None:
        return self._latest_diagnostics("arm_guard")

    def _latest_diagnostics(self, prefix: str) -> dict | None:
        for msg in reversed(self.diagnostic_msgs):
            values = _diagnostic_values(msg, prefix)
            if values is not None:
                return values
        return None

    def _call(self, srv_type, name: str, request, process: NodeProcess):
        return self.probe.call(srv_type, name, request, timeout=30.0, process=process)

    def set_instruction(self, text: str) -> None:
        """Tell the running policy_node a new instruction through its live `instruction` parameter
        (what `ros2 param set /policy_node instruction ...` does), and wait until its diagnostics
        report it in use; the next episode runs with it."""
        value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=text)
        request = SetParameters.Request(parameters=[Parameter(name="instruction", value=value)])
        result = self._call(SetParameters, "/policy_node/set_parameters", request, self.policy).results[0]
        if not result.successful:
            raise RuntimeError(f"policy_node refused the instruction {text!r}: {result.reason}")
        self.probe.wait_for(lambda: str((self.policy_diagnostics() or {}).get("instruction")) == text, 30.0,
                            f"policy_node to use the instruction {text!r}", self.policy)
        self.instruction = text

    def run_episode(self) -> EpisodeResult:
        """Reset, arm, run episode_steps simulation steps, disarm; nothing else touches the arms."""
        cfg, index = self.config, self.episodes_run
        self._call(SetBool, "/policy_node/enable", SetBool.Request(data=False), self.policy)
        # Its stream stopped, the guard holds the measured pose: let that happen before the reset,
        # or the hold of the old pose would arrive after it.
        self.probe.wait_for(lambda: (self.guard_diagnostics() or {}).get("state") != "armed", 10.0,
                            "arm_guard to hold after the policy stopped", self.guard)
        reset = self._call(Trigger, "/sim_node/reset", Trigger.Request(), self.sim)
        if not reset.success:
            raise RuntimeError(f"sim_node reset failed: {reset.message}")
        # Fresh state after the reset before arming, so the ramp starts from the new pose.
        self.joint_msgs.clear()
        self.probe.wait_for(lambda: len(self.joint_msgs) >= 3, 30.0, "joint states after reset", self.sim)
        deadline = time.monotonic() + 30.0
        while not (rearmed := self._call(Trigger, "/arm_guard/rearm", Trigger.Request(), self.guard)).success:
            if time.monotonic() > deadline:
                raise RuntimeError(f"arm_guard refused to re-arm: {rearmed.message}")
            self.probe.spin_for(0.1)
        while True:
            enabled = self._call(SetBool, "/policy_node/enable", SetBool.Request(data=True), self.policy)
            if enabled.success or time.monotonic() > deadline:
                break
            self.probe.spin_for(0.1)  # e.g. the first camera frame after the reset is still on its way
        if not enabled.success:
            raise RuntimeError(f"policy_node refused to arm: {enabled.message}")
        self.joint_msgs.clear()
        self.success_msgs.clear()
        self.behaviour_msgs.clear()
        self.reward_msgs.clear()
        self.command_msgs.clear()
        if self.image_msgs is not None:
            self.image_msgs.clear()
        started = time.monotonic()
        success_at = None
        while len(self.joint_msgs) < cfg.episode_steps:
            self.probe.wait_for(lambda n=len(self.joint_msgs): len(self.joint_msgs) > n, 30.0,
                                "simulation steps", self.sim)
            if success_at is None and any(m.data for m in self.success_msgs):
                success_at = len(self.joint_msgs) * self.profile.dt
            for process in (self.policy, self.guard):
                if not process.alive():
                    raise RuntimeError(f"a node died:\n{process.report()}")
        self._call(SetBool, "/policy_node/enable", SetBool.Request(data=False), self.policy)
        completed = completed_behaviours(self.behaviour_msgs[-1] if self.behaviour_msgs else None)
        self.probe.spin_for(max(1.1 - (time.monotonic() - started) % 1.0, 0.0))  # one more diagnostics
        result = EpisodeResult(
            episode=index, seed=cfg.seed + reset_index(reset.message, index),
            success=success_at is not None or any(m.data for m in self.success_msgs),
            max_reward=max((m.data for m in self.reward_msgs), default=0.0),
            steps=len(self.joint_msgs), time_to_success_s=success_at,
            commands_published=len(self.command_msgs), diagnostics=self.policy_diagnostics() or {},
            guard=self.guard_diagnostics() or {}, instruction=self.instruction, completed=completed,
            behaviour=classify(completed))
        if self.image_msgs is not None and index < cfg.video_episodes:
            write_video(cfg.video_path.format(episode=index), self.image_msgs, self.profile.control_rate_hz)
        self.episodes_run += 1
        return result


def image_size_for(checkpoint: str | os.PathLike, profile) -> tuple[int, int]:
    """(height, width) for sim_node to render: the frame size the checkpoint was trained on
    (recorded by `vla-ros train`), else the profile's first camera. Rendering another size and
    resizing gives different pixels than the training frames, which costs a small policy success.
    An unreadable checkpoint also falls back: policy_node reports why it cannot load it."""
    from vla_ros.policy.checkpoint import CheckpointError, load_config

    try:
        sizes = load_config(checkpoint).extra.get("training", {}).get("camera_image_sizes") or {}
        height, width = next(iter(sizes.values()))
        return int(height), int(width)
    except (CheckpointError, StopIteration, AttributeError, TypeError, ValueError):
        camera = profile.cameras[0]
        return camera.height, camera.width


def reset_index(message: str, fallback: int) -> int:
    """sim_node answers 'episode K seed S'; the seed offset of this session is K."""
    words = message.split()
    try:
        return int(words[words.index("episode") + 1])
    except (ValueError, IndexError):
        return fallback


def write_video(path: str, messages: list, fps: float) -> None:
    """cam_high frames of an episode -> mp4 (h264) for a person to look at."""
    import av

    if not messages:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frames = [convert.any_image_to_array(m) for m in messages]
    height, width = frames[0].shape[:2]
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        for frame in frames:
            image = av.VideoFrame.from_ndarray(frame[: stream.height, : stream.width], format="rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def confusion_table(results: list[EpisodeResult]) -> dict:
    """Instruction given -> behaviour completed (each of BEHAVIOURS, or none): episode counts,
    rates and 95% Wilson intervals; every episode falls in exactly one column of its row."""
    table = {}
    for instruction in dict.fromkeys(r.instruction for r in results):
        row = [r for r in results if r.instruction == instruction]
        table[instruction] = {"episodes": len(row)} | {
            column: {"count": (k := sum(r.behaviour == column for r in row)), "rate": k / len(row),
                     "rate_95ci": wilson_interval(k, len(row))}
            for column in (*BEHAVIOURS, NONE)}
    return table


def format_confusion_table(table: dict) -> str:
    """The confusion table as Markdown: count/episodes, percentage and 95% interval per cell."""
    columns = (*BEHAVIOURS, NONE)
    lines = ["| instruction given | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for instruction, row in table.items():
        cells = [f"{row[c]['count']}/{row['episodes']} = {100 * row[c]['rate']:.0f}% "
                 f"({100 * row[c]['rate_95ci'][0]:.0f}-{100 * row[c]['rate_95ci'][1]:.0f}%)" for c in columns]
        lines.append(f"| {instruction} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def instructed_behaviour(instruction: str) -> str | None:
    """The behaviour an instruction asks for, when it is one the demonstrations were labelled with."""
    return next((name for name, text in INSTRUCTIONS.items() if text == instruction), None)


def instructed_success(table: dict) -> dict:
    """From a confusion_table: episodes that completed the behaviour their instruction asks for,
    over those whose instruction names one (`successes` counts the transfer reward whatever was asked)."""
    rows = [(row, instructed_behaviour(instruction)) for instruction, row in table.items()]
    n = sum(row["episodes"] for row, asked in rows if asked is not None)
    k = sum(row[asked]["count"] for row, asked in rows if asked is not None)
    return {"episodes": n, "completed": k, "rate": k / n if n else None,
            "rate_95ci": wilson_interval(k, n) if n else None}


def summarize(results: list[EpisodeResult]) -> dict:
    """Success rate with a Wilson 95% interval, which behaviour each instruction produced, and
    the policy node's own figures."""
    n = len(results)
    k = sum(r.success for r in results)
    interval = wilson_interval(k, n)
    last = results[-1].diagnostics if results else {}
    guard = results[-1].guard if results else {}
    interventions = _prefixed(last, "interventions:")
    times = [r.time_to_success_s for r in results if r.time_to_success_s is not None]
    return {
        "episodes": n,
        "successes": k,
        "success_rate": k / n if n else 0.0,
        "success_rate_95ci": interval,
        "confusion": (table := confusion_table(results)),
        "completed_as_instructed": instructed_success(table),
        "mean_time_to_success_s": float(np.mean(times)) if times else None,
        "commands_published_per_episode": [r.commands_published for r in results],
        "inference_ms_p50": last.get("inference_ms_p50"),
        "inference_ms_p99": last.get("inference_ms_p99"),
        "inference_compute_ms_p50": last.get("inference_compute_ms_p50"),  # below inference_ms when slowed
        "timer_jitter_ms_p99": last.get("timer_jitter_ms_p99"),
        "safety_interventions": interventions,
        # arm_guard's counters over the session (forwarded, refused:<why>, latches:<why>, holds):
        # one timeout latch per episode is the stop after each disarm.
        "guard": _prefixed(guard, "count:") | {"invalid_commands": guard.get("invalid_commands", 0)},
        # policy_instruction: the instruction policy_node reported in use at the end of the episode;
        # guard: what arm_guard counted since the previous episode's end (e.g. a latch mid-episode
        # shows as refused:latched in the episode it cost, beside its success)
        "per_episode": [asdict(r) | {"diagnostics": None, "guard": guard_counts_since(r, previous),
                                     "policy_instruction": r.diagnostics.get("instruction")}
                        for r, previous in zip(results, [None, *results[:-1]])],
    }


def guard_counts_since(result: EpisodeResult, previous: EpisodeResult | None) -> dict[str, int]:
    """arm_guard's counters (forwarded, refused:<why>, latches:<why>, holds, rearms) that grew
    between the end of `previous` (or the session's start) and the end of `result`."""
    now = _prefixed(result.guard, "count:")
    before = _prefixed(previous.guard, "count:") if previous is not None else {}
    return {name: int(value - before.get(name, 0)) for name, value in now.items() if value > before.get(name, 0)}


def _prefixed(values: dict, prefix: str) -> dict:
    """The entries of a diagnostics dict whose keys start with `prefix`, keyed without it."""
    return {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}
