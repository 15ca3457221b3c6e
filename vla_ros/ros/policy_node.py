"""policy_node: runs the one-step VLA policy on live camera and joint-state topics and streams
safe joint trajectories to the arms at the control rate.

The node only translates messages and owns threads; the decisions live below it:
- vla_ros.control.Controller gates inputs, executes chunks and applies the safety filter;
- vla_ros.policy.runtime.PolicyRuntime predicts action chunks.

Threads: one executor thread runs the callbacks (subscriptions decode into a latest-value store;
the control timer asks the Controller for one command per tick); inference runs in a plain worker
thread, never in the timer. The node starts DISARMED and publishes nothing to the arms until
~/enable is called; enabling ramps from the measured pose.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool, Trigger

from vla_ros.control.controller import Controller, ControllerConfig
from vla_ros.robot import decode
from vla_ros.robot.profile import ProfileError, load_profile
from vla_ros.ros import convert
from vla_ros.ros.command_interfaces import make_sender
from vla_ros.ros.follower_setup import FollowerSetupError, run_follower_setup
from vla_ros.ros.params import ParameterError, ParamSpec, declare_parameters
from vla_ros.ros.qos import (DEFAULT_IMAGE_DEPTH, ESTOP_TOPIC, IMAGE_RELIABILITIES, MatchedSubscription, estop_qos,
                             latest_state_qos, state_qos)
from vla_ros.ros.node_main import run_node
from vla_ros.ros.topic_diagnostics import TopicMonitor

PARAMETERS = (
    ParamSpec("profile", "aloha_stationary", "robot profile: bundled name (config/<name>.yaml) or a YAML path"),
    ParamSpec("checkpoint", "", "policy checkpoint directory (required)"),
    ParamSpec("instruction", "", "language instruction; also live on ~/instruction", live=True),
    ParamSpec("max_instruction_length", 1000, "longer instructions are refused (counted, logged); the "
              "tokenizer would otherwise spend the control loop's time on them", minimum=1, maximum=100000),
    ParamSpec("steps", 0, "decoding steps; 0 = the checkpoint's recommended number", minimum=0, maximum=100),
    ParamSpec("device", "cpu", "torch device for inference: cpu, cuda or cuda:N"),
    ParamSpec("dtype", "auto", "inference precision: auto (bfloat16 on CUDA, float32 on CPU), float32 or "
              "bfloat16 (on a CPU with AMX, a 500M VLM runs about 3x faster; the small shipped checkpoint gains "
              "nothing: docs/latency.md)",
              choices=("auto", "float32", "bfloat16")),
    ParamSpec("torch_threads", 1, "CPU threads for torch; more threads thrash when other processes share the cores",
              minimum=1, maximum=256),
    ParamSpec("deterministic", False, "zero initial noise: reproducible chunks (replay comparisons)"),
    ParamSpec("noise_scale", -1.0, "initial noise temperature: the sampled noise times this (1: as trained; < 0 "
              "(-1): the checkpoint's recommended_noise_scale); "
              "docs/experiments.md 'Smoothness of one-step chunks'", minimum=-1.0, maximum=10.0),
    ParamSpec("noise_correlation", -1.0, "correlation length of the initial noise along the chunk's horizon, in "
              "steps (squared-exponential kernel, unit variance); 0: white noise; < 0 (-1): the "
              "checkpoint's recommended_noise_correlation", minimum=-1.0, maximum=1000.0),
    ParamSpec("action_prefix_steps", -1, "checkpoints trained with an action prefix: how many of the targets that "
              "run from an observation's capture on the policy is given, so that each chunk continues the "
              "last (docs/experiments.md, 'Chunks that continue the last one'); -1: the checkpoint's "
              "action_prefix_steps; 0: none; ignored by checkpoints trained without", minimum=-1, maximum=1000),
    ParamSpec("noise_per_episode", False, "draw the initial noise once per enable and reuse it for every chunk"),
    ParamSpec("dry_run", False, "publish commands under ~/dry_run/<the driver's topic> instead of to the arms "
              "(no tracking bound: the arms do not follow); can change only while disarmed", live=True),
    ParamSpec("command_namespace", "", "prefix for the command topics: '' sends to the driver's own topics; "
              "robot.launch.py sets arm_guard's input namespace so that the guard is the last hop"),
    ParamSpec("follower_setup", True, "interbotix interface: before arming, do the ALOHA scripts' follower setup "
              "through each xs_sdk's services (reboot the gripper, arm in position mode, gripper in "
              "current_based_position mode, torque on); ignored by the other interfaces and in dry runs"),
    ParamSpec("follower_setup_timeout", 5.0, "seconds to wait for each follower setup service", minimum=0.1),
    ParamSpec("control_rate_hz", 0.0, "control rate in Hz; 0 = the profile's", minimum=0.0, maximum=1000.0),
    ParamSpec("replan_period", 0.1, "seconds between policy calls (a chunk covers horizon * dt)", minimum=0.0, maximum=10.0),
    ParamSpec("image_transport", "raw", "camera message type", choices=("raw", "compressed")),
    ParamSpec("image_qos", "auto", "camera QoS reliability; auto: the camera publisher's, reliable when it offers "
              "reliable (best_effort drops large frames over Fast DDS), else best_effort (a reliable subscription "
              "never hears a best-effort publisher), decided when the first publisher appears",
              choices=IMAGE_RELIABILITIES),
    ParamSpec("joint_state_qos", "best_effort", "joint-state subscription reliability (depth 1: only the newest "
              "counts; reliable ones arrived in bursts up to 0.3 s old next to image traffic)",
              choices=("reliable", "best_effort")),
    ParamSpec("max_joint_state_age", 0.1, "hold when the newest joint state is older (s)", minimum=0.001),
    ParamSpec("max_camera_age", 0.15, "hold when a camera's newest frame is older (s)", minimum=0.001),
    ParamSpec("max_camera_spread", 0.1, "hold when camera stamps differ by more (s)", minimum=0.0),
    ParamSpec("chunk_blend", "ensemble", "how overlapping chunks are blended", choices=("ensemble", "crossfade", "replace")),
    ParamSpec("crossfade_ticks", ControllerConfig.crossfade_ticks, "control ticks over which a new chunk ramps into "
              "the blend ('ensemble') or takes over ('crossfade'); shorter reacts sooner, longer is smoother",
              minimum=0, maximum=1000),
    ParamSpec("soft_start_time", 2.0, "after enable: ramp from the measured pose for this long (s)", minimum=0.0),
    ParamSpec("soft_start_speed_scale", 0.25, "velocity limit scale while ramping", minimum=0.01, maximum=1.0),
    ParamSpec("hold_fault_timeout", 2.0, "holding longer than this faults; re-enable needed (s)", minimum=0.01),
    ParamSpec("velocity_scale", 1.0, "scale on the profile's velocity limits", minimum=0.01, maximum=1.0, live=True),
    ParamSpec("acceleration_scale", 1.0, "scale on the profile's acceleration limits (a lower one applies once "
              "the commands are at rest)", minimum=0.01, maximum=1.0, live=True),
    ParamSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages", minimum=0.05),
    ParamSpec("inference_slowdown", 1.0, "testing only: after each inference wait (factor - 1) times its duration "
              "before the chunk is used, as a computer this many times slower would; sim-eval measures the "
              "latency-aware chunk executor with it (docs/experiments.md, 'Slowed inference'). 1: no wait",
              minimum=1.0, maximum=100.0),
)


def _percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


@dataclass
class _Inputs:
    """Latest decoded inputs, shared between subscription callbacks, the timer and the worker."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    arm_state: dict = field(default_factory=dict)  # arm name -> (stamp, vector)
    images: dict = field(default_factory=dict)  # camera name -> (stamp, undecoded message)
    errors: dict = field(default_factory=dict)  # kind -> count
    last_error: str = ""

    def count_error(self, kind: str, text: str) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            self.last_error = text


class PolicyNode(Node):
    def __init__(self, runtime_factory=None):
        super().__init__("policy_node")
        self.params = declare_parameters(self, PARAMETERS, self._on_parameters)
        self.profile = load_profile(self.params["profile"])
        rate = self.params["control_rate_hz"] or self.profile.control_rate_hz
        self.dt = 1.0 / rate
        self.inputs = _Inputs()
        self.instruction = self.params["instruction"]
        self.inference_ms: deque[float] = deque(maxlen=500)  # observation to chunk, as the executor sees it
        self.inference_compute_ms: deque[float] = deque(maxlen=500)  # the model's own time
        self.action_prefix_given: deque[int] = deque(maxlen=500)  # entries of the plan each chunk continued
        self.tick_intervals: deque[float] = deque(maxlen=2000)
        self.commands_published = 0
        self._last_tick: float | None = None
        self._last_state = ""
        self.load_error = ""

        self.controller = Controller(self.profile, ControllerConfig(
            dt=self.dt,
            max_joint_state_age=self.params["max_joint_state_age"],
            max_camera_age=self.params["max_camera_age"],
            max_camera_spread=self.params["max_camera_spread"],
            chunk_blend=self.params["chunk_blend"],
            crossfade_ticks=self.params["crossfade_ticks"],
            soft_start_time=self.params["soft_start_time"],
            soft_start_speed_scale=self.params["soft_start_speed_scale"],
            hold_fault_timeout=self.params["hold_fault_timeout"],
            velocity_scale=self.params["velocity_scale"],
            acceleration_scale=self.params["acceleration_scale"],
            track_measured=not self.params["dry_run"],
        ))
        self.controller_lock = threading.Lock()
        self.runtime = self._load_runtime(runtime_factory)
        self.action_prefix_steps = (0 if self.runtime is None
                                    else self.runtime.prefix_steps_for(self.params["action_prefix_steps"]))

        compressed = self.params["image_transport"] == "compressed"
        image_type = CompressedImage if compressed else Image
        self.input_monitors = self._input_monitors(compressed)
        for camera in self.profile.cameras:
            MatchedSubscription(self, image_type, convert.camera_topic(camera.topic, compressed),
                                lambda msg, cam=camera: self._on_image(cam, msg), self.params["image_qos"],
                                DEFAULT_IMAGE_DEPTH)
        for arm in self.profile.arms:
            self.create_subscription(JointState, arm.joint_states_topic,
                                     lambda msg, arm=arm: self._on_joint_state(arm, msg),
                                     latest_state_qos(self.params["joint_state_qos"]))
        self.create_subscription(Bool, "~/estop", self._on_estop, state_qos())
        self.estop_asserted = False  # the latest value on the shared e-stop topic
        self.create_subscription(Bool, ESTOP_TOPIC, self._on_shared_estop, estop_qos())
        self.create_subscription(String, "~/instruction", self._on_instruction, state_qos())
        self.create_service(SetBool, "~/enable", self._on_enable)
        self.create_service(Trigger, "~/reset_estop", self._on_reset_estop)

        namespace = self.params["command_namespace"]
        if namespace and (not namespace.startswith("/") or namespace.endswith("/") or " " in namespace):
            raise ParameterError(f"parameter 'command_namespace' must be '' or an absolute namespace such as "
                                 f"'/arm_guard/in', got {namespace!r}")
        self.sender = self._make_sender(self.params["dry_run"])
        self._pending_instruction: str | None = None
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", state_qos())
        self.create_timer(self.dt, self._on_tick)
        self.create_timer(self.params["diagnostics_period"], self._publish_diagnostics)

        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._inference_loop, name="policy_inference", daemon=True)
        self._worker.start()
        self.setup_error = ""
        self.setup_done = threading.Event()
        self._start_follower_setup()
        if self.params["inference_slowdown"] > 1.0:
            self.get_logger().warning(f"inference_slowdown {self.params['inference_slowdown']:g}: every chunk is "
                                      f"held back as on a slower computer (a test setting, not for a robot)")
        self.get_logger().info(
            f"ready (DISARMED): profile {self.profile.name}, checkpoint '{self.params['checkpoint']}', "
            f"{rate:g} Hz, cameras {list(self.profile.camera_names)}, dry_run={self.params['dry_run']}; "
            f"arm with: ros2 service call {self.get_fully_qualified_name()}/enable std_srvs/srv/SetBool '{{data: true}}'")

    # --- setup ------------------------------------------------------------------------------

    def _load_runtime(self, runtime_factory):
        """Load the checkpoint; on failure keep the node up (diagnostics explain) but never arm."""
        try:
            if runtime_factory is None:
                from vla_ros.policy.runtime import PolicyRuntime

                import torch

                torch.set_num_threads(self.params["torch_threads"])
                if not self.params["checkpoint"]:
                    raise ValueError("parameter 'checkpoint' is empty: give a checkpoint directory")
                dtype = None if self.params["dtype"] == "auto" else getattr(torch, self.params["dtype"])
                runtime = PolicyRuntime(self.params["checkpoint"], device=self.params["device"],
                                        steps=self.params["steps"] or None, dtype=dtype,
                                        deterministic=self.params["deterministic"],
                                        noise_scale=(None if self.params["noise_scale"] < 0
                                                     else self.params["noise_scale"]),
                                        noise_correlation=(None if self.params["noise_correlation"] < 0
                                                           else self.params["noise_correlation"]),
                                        noise_per_episode=self.params["noise_per_episode"])
            else:
                runtime = runtime_factory(self.params)
            runtime.check_compatible(self.profile)
            runtime.set_instruction(self.instruction)
            return runtime
        except Exception as exc:  # any load failure must leave a clear, reported reason
            self.load_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"policy not loaded, the node will refuse to arm: {self.load_error}")
            return None

    def _make_sender(self, dry_run: bool):
        prefix = f"{self.get_fully_qualified_name()}/dry_run" if dry_run else self.params["command_namespace"]
        return make_sender(self, self.profile, self.dt, prefix)

    def _start_follower_setup(self) -> None:
        """Arming waits for the follower setup when it is needed (interbotix, live commands)."""
        needed = (self.params["follower_setup"] and self.profile.command_interface == "interbotix"
                  and not self.params["dry_run"])
        if not needed:
            self.setup_done.set()
        elif not self.setup_done.is_set() and self.setup_error != "follower setup in progress":
            self.setup_error = "follower setup in progress"
            threading.Thread(target=self._follower_setup, name="follower_setup", daemon=True).start()

    def _on_parameters(self, changes: dict) -> str | None:
        """Live parameters (ros2 param set): applied at once, or refused with the reason."""
        if "dry_run" in changes and changes["dry_run"] != self.params["dry_run"]:
            with self.controller_lock:
                state = self.controller.safety.state
                if state != "disarmed":
                    return f"dry_run can change only while disarmed (the node is {state})"
                self.controller.set_tracking(not changes["dry_run"])
            old, self.sender = self.sender, self._make_sender(changes["dry_run"])
            for publisher in (p for publishers in old.publishers for p in publishers):
                self.destroy_publisher(publisher)
            self.params["dry_run"] = changes["dry_run"]
            self._start_follower_setup()
            self.get_logger().warning(f"dry_run is now {changes['dry_run']}")
        if "velocity_scale" in changes or "acceleration_scale" in changes:
            scales = (changes.get("velocity_scale", self.params["velocity_scale"]),
                      changes.get("acceleration_scale", self.params["acceleration_scale"]))
            with self.controller_lock:
                self.controller.set_scales(*scales)
            self.get_logger().info(f"velocity_scale {scales[0]:g}, acceleration_scale {scales[1]:g}")
        if "instruction" in changes:
            refusal = self._queue_instruction(changes["instruction"])
            if refusal:
                return refusal
        return None

    def _follower_setup(self) -> None:
        """The ALOHA scripts' follower setup; arming waits for it (see follower_setup.py)."""
        try:
            run_follower_setup(self, self.profile, self.params["follower_setup_timeout"], self._stop)
        except FollowerSetupError as exc:
            self.setup_error = f"follower setup failed: {exc}"
            self.get_logger().error(f"{self.setup_error}; the node will refuse to arm")
            return
        self.setup_error = ""
        self.setup_done.set()
        self.get_logger().info("follower setup done: arms in position mode, grippers in current_based_position, torque on")

    # --- inputs -----------------------------------------------------------------------------

    def _input_monitors(self, compressed: bool) -> dict[str, TopicMonitor]:
        """Rate and stamp-age diagnostics per input topic, graded by this node's staleness limits:
        a stamp older than max_*_age makes the policy hold, and so does a rate under 1 / max_*_age."""
        now, node, robot = self._now(), self.get_name(), self.profile.name
        camera_age, state_age = self.params["max_camera_age"], self.params["max_joint_state_age"]
        monitors = {f"camera:{camera.name}": TopicMonitor(
            f"{node}: input camera {camera.name}", convert.camera_topic(camera.topic, compressed),
            f"{robot}/{camera.name}", min_rate=1.0 / camera_age, max_age=camera_age, start=now)
            for camera in self.profile.cameras}
        for arm in self.profile.arms:
            monitors[f"joint_states:{arm.name}"] = TopicMonitor(
                f"{node}: input joint_states {arm.name}", arm.joint_states_topic, f"{robot}/{arm.name}",
                min_rate=1.0 / state_age, max_age=state_age, start=now)
        return monitors

    def _on_image(self, camera, msg) -> None:
        """Keep the newest frame after cheap header checks; decoding waits for the worker, which
        uses one frame in five (at the default replan period), so that the 50 Hz callbacks stay
        light next to the control timer."""
        try:
            if not hasattr(msg, "format"):  # raw: encoding and size are in the header
                channels = decode.IMAGE_ENCODINGS.get(msg.encoding, (0,))[0]
                if channels < 3:
                    raise ValueError(f"encoding '{msg.encoding}' is not a colour encoding the policy can use")
                if (msg.height, msg.width) != (camera.height, camera.width):
                    raise ValueError(f"expected {camera.height}x{camera.width}, got {msg.height}x{msg.width}")
            stamp = convert.time_to_seconds(msg.header.stamp)
        except Exception as exc:  # a bad frame is counted and leaves the camera stale
            self.inputs.count_error(f"bad_image:{camera.name}", f"camera {camera.name}: {exc}")
            return
        self.input_monitors[f"camera:{camera.name}"].record(self._now(), stamp)
        with self.inputs.lock:
            self.inputs.images[camera.name] = (stamp, msg)

    def _decoded_frames(self, images: dict) -> dict | None:
        """The policy's input images, or None (counted, reported) when a frame cannot be used."""
        frames = {}
        for camera in self.profile.cameras:
            try:
                array = convert.any_image_to_array(images[camera.name][1])
                if array.shape != (camera.height, camera.width, 3):
                    raise ValueError(f"expected {camera.height}x{camera.width} RGB, got shape {array.shape}")
            except Exception as exc:
                self.inputs.count_error(f"bad_image:{camera.name}", f"camera {camera.name}: {exc}")
                return None
            frames[camera.name] = array
        return frames

    def _on_joint_state(self, arm, msg: JointState) -> None:
        try:
            vector = decode.joint_state_to_arm_vector(self.profile, arm, msg)
            stamp = convert.time_to_seconds(msg.header.stamp)
        except Exception as exc:
            self.inputs.count_error(f"bad_joint_state:{arm.name}", f"arm {arm.name}: {exc}")
            return
        self.input_monitors[f"joint_states:{arm.name}"].record(self._now(), stamp)
        with self.inputs.lock:
            self.inputs.arm_state[arm.name] = (stamp, vector)

    def _on_instruction(self, msg: String) -> None:
        refusal = self._queue_instruction(msg.data)
        if refusal:
            self.inputs.count_error("instruction_too_long", refusal)
            self.get_logger().warning(refusal, throttle_duration_sec=1.0)

    def _queue_instruction(self, text: str) -> str | None:
        """Hand a new instruction to the inference thread (tokenizing is its work, never the
        control timer's); too long ones are refused with the reason."""
        limit = self.params["max_instruction_length"]
        if len(text) > limit:
            return f"instruction refused: {len(text)} characters, more than max_instruction_length {limit}"
        self._pending_instruction = text
        return None

    def _apply_instruction(self) -> None:
        text, self._pending_instruction = self._pending_instruction, None
        if text is None:
            return
        self.instruction = text
        if self.runtime is not None:
            self.runtime.set_instruction(text)
        self.get_logger().info(f"instruction: {text!r}")

    def _snapshot(self):
        """(measured 14-vector or None, joint-state stamps, camera stamps, images) under one lock."""
        with self.inputs.lock:
            arm_state = dict(self.inputs.arm_state)
            images = dict(self.inputs.images)
        joint_stamps = {arm.name: arm_state[arm.name][0] if arm.name in arm_state else None
                        for arm in self.profile.arms}
        camera_stamps = {cam: images[cam][0] if cam in images else None for cam in self.profile.camera_names}
        measured = None
        if all(arm.name in arm_state for arm in self.profile.arms):
            measured = np.concatenate([arm_state[arm.name][1] for arm in self.profile.arms])
        return measured, joint_stamps, camera_stamps, images

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --- control ----------------------------------------------------------------------------

    def _on_tick(self) -> None:
        now = self._now()
        wall = time.monotonic()
        if self._last_tick is not None:
            self.tick_intervals.append(wall - self._last_tick)
        self._last_tick = wall
        measured, joint_stamps, camera_stamps, _ = self._snapshot()
        with self.controller_lock:
            result = self.controller.tick(now, measured, joint_stamps, camera_stamps, steady=wall)
        if result.state != self._last_state:
            self._log_state(self._last_state, result)
            self._last_state = result.state
            self._publish_diagnostics()  # operators see a hold or fault when it happens
        if result.command is None:
            return
        self.sender.send(result.command)
        self.commands_published += 1

    def _log_state(self, previous: str, result) -> None:
        """Every state change, at its level: holds are warnings (throttled: a flapping input would
        flood the log), faults and e-stops errors."""
        why = ",".join(result.reasons) or "-"
        logger = self.get_logger()
        if result.state == "holding":
            logger.warning(f"holding ({why}): braking, then repeating the command", throttle_duration_sec=1.0)
        elif result.state == "fault":
            logger.error(f"FAULT ({self.controller.safety.fault_reason}): settling onto the measured pose and "
                         f"holding; re-enable to move")
        elif result.state == "estopped":
            logger.error("E-STOP: settling onto the measured pose and holding; reset with ~/reset_estop")
        elif previous == "holding" and result.state in ("running", "ramping"):
            logger.info(f"{result.state} again: inputs and chunks are back", throttle_duration_sec=1.0)
        else:
            logger.info(f"state {previous or 'start'} -> {result.state}")

    def _inference_loop(self) -> None:
        """Predict a chunk from the newest fresh observation every replan_period while armed."""
        period = self.params["replan_period"]
        while not self._stop.is_set():
            started = time.monotonic()
            self._apply_instruction()
            if self.runtime is not None and self.controller.wants_chunks():
                self._predict_once()
            self._stop.wait(max(period - (time.monotonic() - started), 0.002))

    def _predict_once(self) -> None:
        now = self._now()
        measured, joint_stamps, camera_stamps, images = self._snapshot()
        with self.controller_lock:
            gate = self.controller.check_inputs(now, joint_stamps, camera_stamps)
        if not gate.ok or measured is None:
            return
        frames = self._decoded_frames(images)
        if frames is None:
            return
        prefix = None
        if self.action_prefix_steps:
            with self.controller_lock:
                prefix = self.controller.planned_targets(gate.capture_time, self.action_prefix_steps)
            self.action_prefix_given.append(len(prefix))
        started = time.perf_counter()
        try:
            chunk = self.runtime.predict(frames, measured, action_prefix=prefix)
        except Exception as exc:  # reported and held by the controller (no chunk)
            self.inputs.count_error("inference_error", f"inference: {type(exc).__name__}: {exc}")
            return
        compute = time.perf_counter() - started
        self.inference_compute_ms.append(compute * 1e3)
        slowdown = self.params["inference_slowdown"]
        if slowdown > 1.0 and self._stop.wait((slowdown - 1.0) * compute):
            return
        self.inference_ms.append((time.perf_counter() - started) * 1e3)
        with self.controller_lock:
            self.controller.on_chunk(chunk, gate.capture_time, self._now())

    # --- services and safety topics ---------------------------------------------------------

    def _on_enable(self, request, response):
        if not request.data:
            with self.controller_lock:
                self.controller.disable()
            response.success, response.message = True, "disarmed"
            return response
        if self.runtime is None:
            response.success, response.message = False, f"refusing to arm: policy not loaded: {self.load_error}"
            return response
        measured, joint_stamps, camera_stamps, _ = self._snapshot()
        now = self._now()
        with self.controller_lock:
            gate = self.controller.check_inputs(now, joint_stamps, camera_stamps)
            if measured is None or not gate.ok:
                reason = "no joint states from every arm" if measured is None else gate.reason
                response.success, response.message = False, f"refusing to arm: inputs not ready ({reason})"
                return response
            if not self.setup_done.is_set():
                response.success, response.message = False, f"refusing to arm: {self.setup_error}"
                return response
            try:
                self.controller.enable(now, measured, steady=time.monotonic())
            except Exception as exc:  # e.g. e-stop latched
                response.success, response.message = False, f"refusing to arm: {exc}"
                return response
        self.runtime.new_episode()  # per-episode noise: a new draw for this session
        response.success, response.message = True, "armed: ramping from the measured pose"
        self.get_logger().info(response.message)
        return response

    def _on_estop(self, msg: Bool) -> None:
        if msg.data:
            with self.controller_lock:
                self.controller.set_estop(True)
            self.get_logger().error("E-STOP latched: reset with ~/reset_estop, then re-enable")

    def _on_shared_estop(self, msg: Bool) -> None:
        """The shared e-stop (transient local: a node started after the press sees it too)."""
        self.estop_asserted = bool(msg.data)
        self._on_estop(msg)

    def _on_reset_estop(self, request, response):
        if self.estop_asserted:
            response.success = False
            response.message = f"the e-stop on {ESTOP_TOPIC} is still pressed: publish false there first"
            return response
        with self.controller_lock:
            self.controller.set_estop(False)
        response.success, response.message = True, "e-stop reset; node is disarmed, re-enable to move"
        self.get_logger().warning(response.message)
        return response

    # --- diagnostics ------------------------------------------------------------------------

    def diagnostics_values(self) -> dict:
        now = self._now()
        _, joint_stamps, camera_stamps, _ = self._snapshot()
        with self.controller_lock:
            values = dict(self.controller.diagnostics(now))
        intervals_ms = [abs(i - self.dt) * 1e3 for i in self.tick_intervals]
        with self.inputs.lock:
            errors, last_error = dict(self.inputs.errors), self.inputs.last_error
        values.update({
            "policy_loaded": self.runtime is not None,
            "load_error": self.load_error,
            "command_interface": self.profile.command_interface,
            "dry_run": self.params["dry_run"],
            "velocity_scale": self.params["velocity_scale"],
            "acceleration_scale": self.params["acceleration_scale"],
            "follower_setup": "done" if self.setup_done.is_set() else self.setup_error,
            "instruction": self.instruction,
            "commands_published": self.commands_published,
            "inference_ms_p50": _percentile(self.inference_ms, 50),
            "inference_ms_p99": _percentile(self.inference_ms, 99),
            "inference_count": len(self.inference_ms),
            "inference_compute_ms_p50": _percentile(self.inference_compute_ms, 50),
            "inference_slowdown": self.params["inference_slowdown"],
            "timer_jitter_ms_p50": _percentile(intervals_ms, 50),
            "timer_jitter_ms_p99": _percentile(intervals_ms, 99),
            "last_input_error": last_error,
        })
        if self.runtime is not None:  # how it decodes: the checkpoint's recommendations unless overridden
            values.update(dtype=str(self.runtime.dtype).removeprefix("torch."),
                          decode_steps=self.runtime.steps, action_prefix_steps=self.action_prefix_steps,
                          action_prefix_given_p50=_percentile(self.action_prefix_given, 50),
                          **self.runtime.initial_noise.describe())
        for name, stamp in {**{f"age_joint_states:{k}": v for k, v in joint_stamps.items()},
                            **{f"age_camera:{k}": v for k, v in camera_stamps.items()}}.items():
            values[name] = float("inf") if stamp is None else now - stamp
        for kind, count in errors.items():
            values[f"input_errors:{kind}"] = count
        return values

    def _publish_diagnostics(self) -> None:
        values = self.diagnostics_values()
        state = str(values.get("state", "unknown"))
        if self.runtime is None or state in ("fault", "estopped"):
            level = DiagnosticStatus.ERROR
        elif state == "holding" or any(k.startswith("input_errors:") for k in values):
            level = DiagnosticStatus.WARN
        else:
            level = DiagnosticStatus.OK
        message = f"policy not loaded: {self.load_error}" if self.runtime is None else state
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: policy", message=message,
                                  hardware_id=self.profile.name)
        status.values = [KeyValue(key=str(k), value=str(v)) for k, v in values.items()]
        now = self._now()
        msg = DiagnosticArray(status=[status, *(monitor.status(now) for monitor in self.input_monitors.values())])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(msg)

    def close(self) -> None:
        """Stop the inference worker before the node goes away."""
        self._stop.set()
        self._worker.join(timeout=5.0)


def main(argv: list[str] | None = None) -> int:
    # One thread spins callbacks (rclpy's MultiThreadedExecutor stalled the 50 Hz timer by
    # 45-550 ms p99 here, the single-threaded one by ~2 ms); inference has its own thread.
    return run_node("policy_node", PolicyNode, (ParameterError, ProfileError, ImportError), argv)


if __name__ == "__main__":
    sys.exit(main())
