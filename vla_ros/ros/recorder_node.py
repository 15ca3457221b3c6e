"""recorder_node: teleoperation episodes from live topics into a LeRobotDataset v3.0.

A timer samples one frame per dataset period from the NEWEST message of every input: the
follower joint states (observation.state), the leader joint states (action, the gripper through
the leader gripper map) and every profile camera. An input whose newest message is stamped
further than ``tolerance`` from the sample time makes that frame a dropped frame, counted per
input and reason, because recording a stale image beside a fresh joint state silently teaches
the policy the wrong thing. Episodes are started, saved and discarded through std_srvs/Trigger
services; saving hands the episode to the writer's worker thread, so the sampling timer never
waits for encoding or disk. An episode whose camera rate (or recorded frame rate) fell below
``min_rate_fraction`` of the fps is not saved unless ``allow_low_rate`` is true: it waits for
~/discard, or for ~/stop again after the override is set.

Services: ~/start, ~/stop (save), ~/discard (std_srvs/Trigger). Topics: ~/task (std_msgs/String,
sets the ``task`` parameter), /diagnostics (per-episode counts).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from vla_ros.data.lerobot import DatasetError, LeRobotWriter, SaveResult
from vla_ros.robot import decode
from vla_ros.robot.profile import CameraSpec, ProfileError, RobotProfile, load_profile
from vla_ros.ros import convert
from vla_ros.ros.params import ParameterError, ParamSpec, declare_parameters
from vla_ros.ros.qos import IMAGE_RELIABILITIES, RELIABILITIES, MatchedSubscription, latest_state_qos, state_qos
from vla_ros.ros.node_main import run_node


PARAMETERS = (
    ParamSpec("profile", "aloha_stationary", "robot profile: a bundled name (config/<name>.yaml) or a YAML path"),
    ParamSpec("dataset", "", "LeRobotDataset v3.0 directory to create or append to (required)"),
    ParamSpec("fps", 0, "dataset frame rate; 0 = the profile's control rate", minimum=0, maximum=1000),
    ParamSpec("task", "", "task text stored with each episode (also set by publishing on ~/task); "
              "an episode cannot start without one", live=True),
    ParamSpec("tolerance", 0.1, "seconds an input's newest message may be from the sample time before the "
              "frame is dropped and counted late", minimum=0.001, maximum=10.0),
    ParamSpec("stamp_source", "header", "time of a message: header (its header.stamp) or receipt (when this "
              "node received it; for sources that leave stamps unset)", choices=("header", "receipt")),
    ParamSpec("image_format", "raw", "raw: sensor_msgs/Image on each camera topic; compressed: "
              "sensor_msgs/CompressedImage on <camera topic>/compressed", choices=("raw", "compressed")),
    ParamSpec("joint_state_qos", "best_effort", "joint-state subscription reliability (depth 1). best_effort: "
              "measured here, reliable subscriptions received the sim's 50 Hz joint states in bursts up to "
              "0.3 s old (a lost sample holds back the newer ones), best_effort within 0.11 s",
              choices=tuple(RELIABILITIES)),
    ParamSpec("image_qos", "auto", "camera subscription reliability; auto: the publisher's (reliable when it "
              "offers reliable, else best_effort), decided when the first publisher appears",
              choices=IMAGE_RELIABILITIES),
    ParamSpec("image_qos_depth", 1, "camera subscription queue depth (only the newest image is ever used)",
              minimum=1, maximum=100),
    ParamSpec("min_rate_fraction", 0.9, "an episode whose camera rate or recorded frame rate is below this "
              "fraction of fps is not saved unless allow_low_rate", minimum=0.0, maximum=1.0, live=True),
    ParamSpec("allow_low_rate", False, "save episodes even when their measured rate is below min_rate_fraction",
              live=True),
    ParamSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages", minimum=0.05, maximum=60.0),
    ParamSpec("gripper_out_of_range", "clip", "a normalised gripper outside [0, 1] (a finger below the profile's "
              "'closed'): clip (counted, with a warning) or refuse (the episode cannot be saved)",
              choices=("clip", "refuse")),
)
FRAME_RATE_KEY = "recorded frames"


# --------------------------------------------------------------------------------------------
# Sampling (pure: no ROS, testable with made-up times)


@dataclass
class InputCounts:
    """One input's bookkeeping for the current (or last) episode. ``missing``, ``late`` and
    ``invalid`` count sample times at which this input made the frame a dropped one."""

    received: int = 0  # messages that arrived during the episode
    missing: int = 0   # no message had arrived yet
    late: int = 0      # the newest message was stamped more than the tolerance from the sample time
    invalid: int = 0   # the newest message could not be decoded (see last_error)
    last_error: str = ""


class FrameSampler:
    """The newest message of each input, and frames sampled from them at given times.

    Messages are decoded lazily, once each, by ``decoders[name]`` (ValueError = bad message):
    only messages that end up in a frame cost decoding time. Counts restart with each episode.

    ``slot`` is the sample time's place on the frame grid (frame periods since the episode's first
    sample time; with ``period`` given, a sample time more than one period after the previous one
    skips the slots in between: ticks the timer never ran). Frames are stored at their slot, so
    every dropped frame and every missed tick leaves a gap that training can see.
    """

    def __init__(self, decoders: Mapping[str, Callable[[Any], Any]], tolerance: float, period: float | None = None):
        if not decoders:
            raise ValueError("a sampler needs at least one input")
        if not tolerance > 0:
            raise ValueError(f"tolerance must be > 0 seconds, got {tolerance!r}")
        if period is not None and not period > 0:
            raise ValueError(f"period must be > 0 seconds, got {period!r}")
        self.decoders = dict(decoders)
        self.tolerance = float(tolerance)
        self.period = period
        self.counts = {name: InputCounts() for name in self.decoders}
        self.ticks = 0   # sample times in the episode
        self.frames = 0  # of which produced a frame
        self.missed_ticks = 0  # frame periods with no sample time at all
        self.refused = 0  # frames the dataset writer refused (e.g. a gripper outside [0, 1])
        self.slot = -1
        self._last_time: float | None = None
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self._latest: dict[str, list] = {}  # name -> [stamp, message, decoded value or None]

    @property
    def active(self) -> bool:
        return self.started_at is not None and self.stopped_at is None

    @property
    def dropped(self) -> int:
        """Frame periods of the episode that have no frame."""
        return self.ticks - self.frames + self.missed_ticks

    def start(self, time: float) -> None:
        """Begin an episode at ``time``: counts restart; the newest messages stay usable."""
        self.counts = {name: InputCounts() for name in self.decoders}
        self.ticks = self.frames = self.missed_ticks = self.refused = 0
        self.slot, self._last_time = -1, None
        self.started_at, self.stopped_at = float(time), None

    def stop(self, time: float) -> None:
        if not self.active:
            raise RuntimeError("no episode to stop")
        self.stopped_at = max(float(time), self.started_at)

    def silent_inputs(self, time: float, window: float = 1.0) -> list[str]:
        """Inputs with no message in the ``window`` seconds before ``time``: an episode started now
        would record nothing from them (a wrong topic name, or DDS discovery still under way).
        A merely slow input is not silent; the rate check at the stop deals with it."""
        return [name for name in self.decoders
                if name not in self._latest or abs(time - self._latest[name][0]) > window]

    def update(self, name: str, stamp: float, message: Any) -> None:
        """Take the newest message of input ``name``, stamped ``stamp`` seconds."""
        if name not in self.decoders:
            raise KeyError(f"unknown input {name!r}; inputs are {sorted(self.decoders)}")
        self._latest[name] = [float(stamp), message, None]
        if self.active:
            self.counts[name].received += 1

    def sample(self, time: float) -> dict[str, Any] | None:
        """The decoded newest value of every input at ``time``, or None (a dropped frame,
        counted against each input that was missing, late or undecodable)."""
        self.ticks += 1
        step = 1
        if self.period is not None and self._last_time is not None:
            step = max(1, int(round((time - self._last_time) / self.period)))
        self.missed_ticks += step - 1
        self.slot += step
        self._last_time = time
        values, problems = {}, []
        for name, decoder in self.decoders.items():
            latest = self._latest.get(name)
            counts = self.counts[name]
            if latest is None:
                counts.missing += 1
                problems.append(name)
                continue
            stamp, message, value = latest
            if abs(time - stamp) > self.tolerance:
                counts.late += 1
                problems.append(name)
                continue
            if value is None:
                try:
                    value = latest[2] = decoder(message)
                except ValueError as exc:
                    counts.invalid += 1
                    counts.last_error = str(exc)
                    problems.append(name)
                    continue
            values[name] = value
        if problems:
            return None
        self.frames += 1
        return values

    def refuse(self) -> None:
        """The frame just sampled was not stored after all (the writer refused it)."""
        self.frames -= 1
        self.refused += 1

    def duration(self, now: float) -> float:
        """Seconds the episode has lasted (until its stop, or until ``now`` while active)."""
        if self.started_at is None:
            return 0.0
        end = self.stopped_at if self.stopped_at is not None else now
        return max(end - self.started_at, 0.0)

    def rates(self, now: float, inputs: Sequence[str]) -> dict[str, float]:
        """Messages per second received on ``inputs``, and the recorded frame rate."""
        seconds = self.duration(now)
        if seconds <= 0:
            return {}
        rates = {name: self.counts[name].received / seconds for name in inputs}
        rates[FRAME_RATE_KEY] = self.frames / seconds
        return rates

    def rate_shortfalls(self, now: float, inputs: Sequence[str], fps: float, min_fraction: float) -> dict[str, float]:
        """The rates (of ``inputs`` and of recorded frames) below ``min_fraction * fps``."""
        floor = min_fraction * fps
        return {name: rate for name, rate in self.rates(now, inputs).items() if rate < floor}


# --------------------------------------------------------------------------------------------
# The node


class RecorderState(Enum):
    IDLE = "idle"
    RECORDING = "recording"
    AWAITING_DECISION = "awaiting discard or override"  # stopped, refused for a low rate


def follower_input(arm) -> str:
    return f"follower:{arm.name}"


def leader_input(arm) -> str:
    return f"leader:{arm.name}"


def camera_input(camera: CameraSpec) -> str:
    return f"camera:{camera.name}"


def decode_camera(camera: CameraSpec, msg: Any) -> np.ndarray:
    """An Image or CompressedImage -> RGB uint8 of the profile's size for this camera."""
    image = convert.any_image_to_array(msg)
    if image.shape != (camera.height, camera.width, 3) or image.dtype != np.uint8:
        raise ValueError(f"camera '{camera.name}': expected {camera.width}x{camera.height} RGB uint8 as the "
                         f"profile says, got {image.dtype} of shape {image.shape}")
    return image


def input_decoders(profile: RobotProfile) -> dict[str, Callable[[Any], Any]]:
    decoders: dict[str, Callable[[Any], Any]] = {}
    for arm in profile.arms:
        decoders[follower_input(arm)] = partial(decode.joint_state_to_arm_vector, profile, arm)
        decoders[leader_input(arm)] = partial(decode.leader_joint_state_to_arm_vector, profile, arm)
    for camera in profile.cameras:
        decoders[camera_input(camera)] = partial(decode_camera, camera)
    return decoders


class RecorderNode(Node):
    def __init__(self, **node_kwargs):
        super().__init__("recorder_node", **node_kwargs)
        self.params = declare_parameters(self, PARAMETERS, self.on_live_parameters)
        if not self.params["dataset"].strip():
            raise ParameterError("parameter 'dataset' must name the dataset directory to record into")
        self.profile = load_profile(self.params["profile"])
        self.fps = self.params["fps"] or int(round(self.profile.control_rate_hz))
        self.writer = LeRobotWriter.for_profile(self.params["dataset"], self.profile, self.fps,
                                                gripper_out_of_range=self.params["gripper_out_of_range"])
        self.sampler = FrameSampler(input_decoders(self.profile), self.params["tolerance"], 1.0 / self.fps)
        self.last_refusal = ""
        self.camera_inputs = [camera_input(c) for c in self.profile.cameras]
        self.state = RecorderState.IDLE
        self.episodes_started = 0
        self.episodes_saved = 0
        self.save_failures = 0
        self.last_save: SaveResult | None = None
        self.last_save_error = ""
        self.pending_saves: list[Future] = []

        use_header = self.params["stamp_source"] == "header"
        self.input_topics: dict[str, str] = {}
        joint_qos = latest_state_qos(self.params["joint_state_qos"])
        for arm in self.profile.arms:
            for name, topic in ((follower_input(arm), arm.joint_states_topic),
                                (leader_input(arm), arm.leader_joint_states_topic)):
                self.create_subscription(JointState, topic, partial(self.on_message, name, use_header), joint_qos)
                self.input_topics[name] = topic
        compressed = self.params["image_format"] == "compressed"
        for camera in self.profile.cameras:
            topic = convert.camera_topic(camera.topic, compressed)
            MatchedSubscription(self, CompressedImage if compressed else Image, topic,
                                partial(self.on_message, camera_input(camera), use_header),
                                self.params["image_qos"], self.params["image_qos_depth"])
            self.input_topics[camera_input(camera)] = topic
        self.create_subscription(String, "~/task", self.on_task, state_qos())
        self.create_service(Trigger, "~/start", self.on_start)
        self.create_service(Trigger, "~/stop", self.on_stop)
        self.create_service(Trigger, "~/discard", self.on_discard)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", state_qos())
        self.sample_timer = self.create_timer(1.0 / self.fps, self.on_sample_time)
        self.create_timer(self.params["diagnostics_period"], self.publish_diagnostics)
        self.get_logger().info(f"recording {self.profile.name} at {self.fps} fps into {self.params['dataset']} "
                               f"({self.writer.num_episodes} episodes there); call ~/start")

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --- inputs and sampling ----------------------------------------------------------------

    def on_message(self, name: str, use_header: bool, msg) -> None:
        self.sampler.update(name, convert.time_to_seconds(msg.header.stamp) if use_header else self.now(), msg)

    def tick_time(self) -> float:
        """The time this timer call was scheduled for: on the timer's grid, however late the
        callback runs, so that a late callback is not mistaken for a dropped frame."""
        now = self.now()
        until_next = self.sample_timer.time_until_next_call()
        return now if until_next is None else now + until_next * 1e-9 - 1.0 / self.fps

    def on_sample_time(self) -> None:
        if self.state is not RecorderState.RECORDING:
            return
        values = self.sampler.sample(self.tick_time())
        if values is None:
            return
        state = np.concatenate([values[follower_input(arm)] for arm in self.profile.arms])
        action = np.concatenate([values[leader_input(arm)] for arm in self.profile.arms])
        images = {c.name: values[camera_input(c)] for c in self.profile.cameras}
        # Stored at its slot on the frame grid (episode time, not the clock: a clock stepped back
        # by NTP must not make the writer refuse frames); skipped slots are the dropped frames.
        try:
            self.writer.add_frame(state, action, images, timestamp=self.sampler.slot / self.fps)
        except ValueError as exc:
            self.sampler.refuse()
            if self.last_refusal != str(exc):
                self.get_logger().warning(f"frame not recorded: {exc}")
            self.last_refusal = str(exc)

    # --- task and parameters ----------------------------------------------------------------

    def on_task(self, msg: String) -> None:
        text = msg.data.strip()
        if not text:
            self.get_logger().warning("ignored an empty task on ~/task")
            return
        self.set_parameters([Parameter("task", value=text)])

    @staticmethod
    def on_live_parameters(changes: dict) -> None:
        """task, allow_low_rate and min_rate_fraction apply from the next use (declare_parameters
        has validated them and stores them in self.params)."""
        return None

    # --- episode services -------------------------------------------------------------------

    def on_start(self, request, response):
        if self.state is not RecorderState.IDLE:
            response.success, response.message = False, f"cannot start: {self.state.value}"
            return response
        task = self.params["task"].strip()
        if not task:
            response.success = False
            response.message = "no task: set the 'task' parameter or publish the task text on ~/task"
            return response
        silent = self.sampler.silent_inputs(self.now())
        if silent:
            response.success = False
            response.message = f"cannot start: no recent messages from {', '.join(silent)} (check the topics)"
            return response
        try:
            self.writer.start_episode(task)
        except (RuntimeError, ValueError, OSError) as exc:
            response.success, response.message = False, f"cannot start: {exc}"
            return response
        self.sampler.start(self.now())
        self.state = RecorderState.RECORDING
        self.episodes_started += 1
        response.success, response.message = True, f"recording at {self.fps} fps: {task!r}"
        self.get_logger().info(response.message)
        return response

    def on_stop(self, request, response):
        if self.state is RecorderState.IDLE:
            response.success, response.message = False, "no episode to stop"
            return response
        now = self.now()
        if self.state is RecorderState.RECORDING:
            self.sampler.stop(now)
            self.state = RecorderState.AWAITING_DECISION
        summary = self.episode_summary(now)
        if self.sampler.frames == 0:
            self.writer.discard_episode()
            self.state = RecorderState.IDLE
            response.success, response.message = False, f"no frames were recorded; episode discarded ({summary})"
            self.get_logger().warning(response.message)
            return response
        shortfalls = self.sampler.rate_shortfalls(now, self.camera_inputs, self.fps, self.params["min_rate_fraction"])
        if shortfalls and not self.params["allow_low_rate"]:
            rates = ", ".join(f"{name} {rate:.1f}/s" for name, rate in shortfalls.items())
            response.success = False
            response.message = (f"NOT saved: {rates} below {self.params['min_rate_fraction']:g} x {self.fps} fps. "
                                f"Call ~/discard, or set allow_low_rate:=true and call ~/stop again ({summary})")
            self.get_logger().warning(response.message)
            return response
        future = self.writer.save_episode()
        self.pending_saves = [f for f in self.pending_saves if not f.done()] + [future]
        future.add_done_callback(self.on_saved)
        self.state = RecorderState.IDLE
        response.success, response.message = True, f"saving {self.sampler.frames} frames ({summary})"
        self.get_logger().info(response.message)
        return response

    def on_discard(self, request, response):
        if self.state is RecorderState.IDLE:
            response.success, response.message = False, "no episode to discard"
            return response
        if self.sampler.active:
            self.sampler.stop(self.now())
        self.writer.discard_episode()
        self.state = RecorderState.IDLE
        response.success, response.message = True, f"discarded {self.sampler.frames} frames"
        self.get_logger().info(response.message)
        return response

    def on_saved(self, future: Future) -> None:
        """Runs on the writer's save thread: only records the outcome."""
        try:
            result = future.result()
        except Exception as exc:  # the writer logged the traceback; keep the node recording
            self.save_failures += 1
            self.last_save_error = str(exc)
            self.get_logger().error(f"saving an episode failed: {exc}")
            return
        self.episodes_saved += 1
        self.last_save = result
        self.get_logger().info(f"saved episode {result.episode_index}: {result.length} frames "
                               f"({result.missing_frames} gaps on the frame grid, {result.grippers_clipped} "
                               f"gripper values clipped to [0, 1]) in {result.seconds:.2f} s")

    def episode_summary(self, now: float) -> str:
        dropped = {name: f"{c.missing} missing, {c.late} late, {c.invalid} invalid"
                   for name, c in self.sampler.counts.items() if c.missing or c.late or c.invalid}
        expected = int(round(self.sampler.duration(now) * self.fps))
        text = f"{self.sampler.frames} of {expected} expected frames recorded, {self.sampler.dropped} dropped"
        if self.sampler.missed_ticks:
            dropped["timer"] = f"{self.sampler.missed_ticks} periods with no sample time"
        if self.sampler.refused:
            dropped["writer"] = f"{self.sampler.refused} refused ({self.last_refusal})"
        return text + (f": {dropped}" if dropped else "")

    # --- health and shutdown ----------------------------------------------------------------

    def publish_diagnostics(self) -> None:
        now = self.now()
        counts = self.sampler.counts
        if self.save_failures:
            level, message = DiagnosticStatus.ERROR, f"save failed: {self.last_save_error}"
        elif self.state is RecorderState.AWAITING_DECISION:
            level, message = DiagnosticStatus.WARN, "episode not saved: rate too low; discard or override"
        elif self.sampler.dropped:
            level, message = DiagnosticStatus.WARN, f"{self.sampler.dropped} frames dropped this episode"
        else:
            level, message = DiagnosticStatus.OK, self.state.value
        pending = sum(not f.done() for f in self.pending_saves)
        values = [
            ("state", self.state.value), ("task", self.params["task"]), ("fps", self.fps),
            ("episodes_started", self.episodes_started), ("episodes_saved", self.episodes_saved),
            ("saves_pending", pending), ("save_failures", self.save_failures),
            ("last_save_seconds", f"{self.last_save.seconds:.3f}" if self.last_save else ""),
            ("last_save_missing_frames", self.last_save.missing_frames if self.last_save else ""),
            ("last_save_grippers_clipped", self.last_save.grippers_clipped if self.last_save else ""),
            ("episode_frames", self.sampler.frames), ("episode_dropped", self.sampler.dropped),
            ("episode_missed_ticks", self.sampler.missed_ticks), ("episode_refused", self.sampler.refused),
            ("encoder_backlog", self.writer.encoder_backlog),
        ]
        for name, c in counts.items():
            values += [(f"{name}.topic", self.input_topics[name]),
                       (f"{name}.received", c.received), (f"{name}.missing", c.missing),
                       (f"{name}.late", c.late), (f"{name}.invalid", c.invalid)]
            if c.last_error:
                values.append((f"{name}.last_error", c.last_error))
        rates = self.sampler.rates(now, self.camera_inputs)
        values += [(f"rate.{name}", f"{rate:.2f}") for name, rate in rates.items()]
        status = DiagnosticStatus(level=level, name="recorder_node: recording", message=message,
                                  hardware_id=self.profile.name,
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values])
        self.diagnostics_pub.publish(DiagnosticArray(header=convert.make_header(self.get_clock().now().to_msg()),
                                                     status=[status]))

    def close(self) -> None:
        """Finish every pending save (an unsaved episode is discarded) and release the dataset."""
        if self.state is not RecorderState.IDLE:
            self.get_logger().warning(f"shutting down with an unsaved episode ({self.sampler.frames} frames): "
                                      "discarded")
        pending = sum(not f.done() for f in self.pending_saves)
        if pending:
            self.get_logger().info(f"waiting for {pending} pending episode save(s)")
        self.writer.close()


def main(argv: list[str] | None = None) -> int:
    return run_node("recorder_node", RecorderNode, (ParameterError, ProfileError, DatasetError, ValueError, OSError),
                    argv)


if __name__ == "__main__":
    sys.exit(main())
