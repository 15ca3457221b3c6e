"""`vla-ros convert`: a ROS 2 bag (ros2 bag record, .db3 or .mcap) -> a LeRobotDataset v3.0.

Frames are sampled at the dataset fps from the NEWEST message of every input received by then
(bag receive time), as the recorder node samples live topics: follower joint states ->
observation.state, leader joint states -> action (through the leader gripper map), every profile
camera (raw or /compressed) -> its video. A frame is skipped, and counted by reason, when an input's
header stamp is older than the tolerance; the frames kept are stored at their tick's time, so a
skipped frame leaves a gap in the timestamps (which training never pairs across) instead of being
hidden. A normalised gripper outside [0, 1] is clipped and counted, or refused
(--gripper-out-of-range). Episodes come from a marker topic (std_msgs/Bool:
True starts, False ends; std_msgs/String: "stop"/"end"/"save"/"" ends, any other text starts an
episode with that text as its task), from time gaps in the inputs, or else span the whole bag.

The input bookkeeping (which bag topic feeds which input; the newest decoded value of each) is
shared with `vla-ros replay`, so that conversion and replay see a bag exactly alike.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vla_ros.data.bags import BagError, BagMessage, BagReader, image_to_rgb, stamp_ns
from vla_ros.data.lerobot import GRIPPER_POLICIES, DatasetError, LeRobotWriter
from vla_ros.robot import decode
from vla_ros.robot.profile import ProfileError, RobotProfile, load_profile

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
MARKER_TYPES = ("std_msgs/msg/Bool", "std_msgs/msg/String")
END_WORDS = ("stop", "end", "save", "")
DEFAULT_TASK = "recorded teleoperation"
DEFAULT_TOLERANCE_S = 0.1


@dataclass(frozen=True)
class BagInputs:
    """Which bag topic feeds which input of a robot profile."""

    cameras: dict[str, str]    # camera name -> topic (Image or CompressedImage)
    followers: dict[str, str]  # arm name -> follower JointState topic
    leaders: dict[str, str]    # arm name -> leader JointState topic; empty when the bag has none

    @property
    def topics(self) -> list[str]:
        return [*self.cameras.values(), *self.followers.values(), *self.leaders.values()]

    @classmethod
    def resolve(cls, profile: RobotProfile, bag: BagReader, require_leaders: bool = False) -> BagInputs:
        """Find every input in ``bag``; BagError names each missing topic and what the bag has.
        A camera is taken from its topic, or from ``<topic>/compressed`` (image_transport)."""
        problems, cameras = [], {}
        for camera in profile.cameras:
            candidates = [t for t in (camera.topic, camera.topic + "/compressed")
                          if bag.topics.get(t) in (IMAGE_TYPE, COMPRESSED_TYPE)]
            if candidates:
                cameras[camera.name] = candidates[0]
            else:
                problems.append(f"camera '{camera.name}' ({camera.topic} or {camera.topic}/compressed)")

        def joint_topics(kind: str, attribute: str) -> dict[str, str]:
            found = {}
            for arm in profile.arms:
                topic = getattr(arm, attribute)
                if bag.topics.get(topic) == JOINT_STATE_TYPE:
                    found[arm.name] = topic
                else:
                    problems.append(f"{kind} joint states of arm '{arm.name}' ({topic})")
            return found

        followers = joint_topics("follower", "joint_states_topic")
        has_leaders = any(bag.topics.get(arm.leader_joint_states_topic) == JOINT_STATE_TYPE for arm in profile.arms)
        leaders = joint_topics("leader", "leader_joint_states_topic") if (has_leaders or require_leaders) else {}
        if problems:
            raise BagError(f"{bag.path}: missing for robot profile '{profile.name}': {'; '.join(problems)}. "
                           f"The bag has: {', '.join(f'{t} [{m}]' for t, m in sorted(bag.topics.items()))}")
        return cls(cameras, followers, leaders)


def message_stamp_s(message: BagMessage) -> float:
    """The header stamp in seconds; the receive time for messages recorded with an unset stamp."""
    stamp = stamp_ns(message.msg.header)
    return (stamp if stamp > 0 else message.timestamp_ns) * 1e-9


@dataclass
class LatestInputs:
    """The newest decoded value of every input, as a node holding the latest messages sees them.

    A message that cannot be decoded is counted under ``errors`` and leaves the previous value in
    place (the live nodes do the same), so one bad frame makes an input stale rather than fatal.
    """

    profile: RobotProfile
    inputs: BagInputs
    images: dict[str, tuple[float, np.ndarray]] = field(default_factory=dict)
    followers: dict[str, tuple[float, np.ndarray]] = field(default_factory=dict)
    leaders: dict[str, tuple[float, np.ndarray]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    last_error: str = ""

    def __post_init__(self):
        arms = {arm.name: arm for arm in self.profile.arms}
        cameras = {cam.name: cam for cam in self.profile.cameras}
        self._routes = {}
        for name, topic in self.inputs.cameras.items():
            self._routes[topic] = ("camera", cameras[name])
        for name, topic in self.inputs.followers.items():
            self._routes[topic] = ("follower", arms[name])
        for name, topic in self.inputs.leaders.items():
            self._routes[topic] = ("leader", arms[name])

    def clear(self) -> None:
        self.images.clear()
        self.followers.clear()
        self.leaders.clear()

    def update(self, message: BagMessage) -> bool:
        """Take in one bag message of an input topic; False if it is not an input or is bad."""
        route = self._routes.get(message.topic)
        if route is None:
            return False
        kind, spec = route
        try:
            stamp = message_stamp_s(message)
            if kind == "camera":
                image = image_to_rgb(message.msg)
                if image.shape != (spec.height, spec.width, 3):
                    raise ValueError(f"expected {spec.height}x{spec.width} RGB as the profile says, got shape {image.shape}")
                self.images[spec.name] = (stamp, image)
            elif kind == "follower":
                self.followers[spec.name] = (stamp, decode.joint_state_to_arm_vector(self.profile, spec, message.msg))
            else:
                self.leaders[spec.name] = (stamp, decode.leader_joint_state_to_arm_vector(self.profile, spec, message.msg))
        except ValueError as err:
            key = f"bad_{kind}:{spec.name}"
            self.errors[key] = self.errors.get(key, 0) + 1
            self.last_error = f"{message.topic} at t={message.timestamp_ns} ns: {err}"
            return False
        return True

    def camera_stamps(self) -> dict[str, float | None]:
        return {name: self.images[name][0] if name in self.images else None for name in self.inputs.cameras}

    def joint_stamps(self) -> dict[str, float | None]:
        return {name: self.followers[name][0] if name in self.followers else None for name in self.inputs.followers}

    def _vector(self, values: dict[str, tuple[float, np.ndarray]]) -> np.ndarray | None:
        arms = [arm.name for arm in self.profile.arms]
        if not all(name in values for name in arms):
            return None
        return np.concatenate([values[name][1] for name in arms])

    def state(self) -> np.ndarray | None:
        """The measured 14-vector (profile order), None until every arm has reported."""
        return self._vector(self.followers)

    def action(self) -> np.ndarray | None:
        """The operator's 14-vector from the leader arms, None without them."""
        return self._vector(self.leaders)

    def image_arrays(self) -> dict[str, np.ndarray]:
        return {name: image for name, (_, image) in self.images.items()}

    def stale_inputs(self, now: float, tolerance: float) -> list[str]:
        """Inputs whose newest message is missing or stamped more than ``tolerance`` before ``now``."""
        stale = []
        for kind, values, names in (("camera", self.images, self.inputs.cameras),
                                    ("follower", self.followers, self.inputs.followers),
                                    ("leader", self.leaders, self.inputs.leaders)):
            stale += [f"{kind}:{name}" for name in names if name not in values or now - values[name][0] > tolerance]
        return stale


@dataclass
class ConvertReport:
    bag: str
    dataset: str
    fps: int
    episodes: int = 0
    frames_written: int = 0
    frames_per_episode: list[int] = field(default_factory=list)
    frames_skipped: int = 0
    skipped_by_input: dict[str, int] = field(default_factory=dict)
    episodes_empty: int = 0
    missing_frames: int = 0     # frame periods inside episodes with no frame (timestamp gaps)
    grippers_clipped: int = 0   # normalised gripper values moved into [0, 1]
    input_errors: dict[str, int] = field(default_factory=dict)
    last_input_error: str = ""


class _EpisodeSampler:
    """Feeds frames sampled at fps into the writer, one episode at a time."""

    def __init__(self, writer: LeRobotWriter, latest: LatestInputs, report: ConvertReport, tolerance: float):
        self.writer, self.latest, self.report, self.tolerance = writer, latest, report, tolerance
        self.period_ns = int(round(1e9 / report.fps))
        self.task: str | None = None  # an episode is open when this is set
        self.next_tick: int | None = None
        self.first_tick: int | None = None
        self.frames = 0
        self.saves: list = []  # Futures of the episodes handed to the writer

    def start(self, task: str, time_ns: int) -> None:
        """Open an episode whose tick grid starts at ``time_ns`` (closing any open one)."""
        if self.task is not None:
            self.end()
        self.task, self.next_tick, self.first_tick, self.frames = task, time_ns, None, 0

    def sample_until(self, time_ns: int, inclusive: bool = False) -> None:
        """Sample every tick before ``time_ns`` (or at it, when inclusive) with what arrived by then."""
        if self.task is None:
            return
        while self.next_tick < time_ns or (inclusive and self.next_tick == time_ns):
            self._sample(self.next_tick)
            self.next_tick += self.period_ns

    def _sample(self, tick_ns: int) -> None:
        stale = self.latest.stale_inputs(tick_ns * 1e-9, self.tolerance)
        if stale and self.frames == 0:
            return  # an episode begins at its first frame with every input fresh
        if stale:
            self.report.frames_skipped += 1
            for name in stale:
                self.report.skipped_by_input[name] = self.report.skipped_by_input.get(name, 0) + 1
            return
        if self.frames == 0:
            self.writer.start_episode(self.task)
            self.first_tick = tick_ns
        self.writer.add_frame(self.latest.state(), self.latest.action(), self.latest.image_arrays(),
                              timestamp=(tick_ns - self.first_tick) * 1e-9)
        self.frames += 1

    def end(self) -> None:
        if self.task is None:
            return
        if self.frames:
            self.saves.append(self.writer.save_episode())
            self.report.episodes += 1
            self.report.frames_written += self.frames
            self.report.frames_per_episode.append(self.frames)
        else:
            self.report.episodes_empty += 1
        self.task, self.next_tick = None, None


def convert_bag(bag_path: str | Path, output: str | Path, profile: RobotProfile, fps: int = 50,
                episode_topic: str | None = None, gap_s: float | None = None, task: str = DEFAULT_TASK,
                tolerance_s: float = DEFAULT_TOLERANCE_S, gripper_out_of_range: str = "clip") -> ConvertReport:
    """Convert one bag; raises BagError / DatasetError / ValueError with a message for the user."""
    if episode_topic and gap_s is not None:
        raise ValueError("give either an episode topic or a time gap for episode boundaries, not both")
    if gap_s is not None and gap_s <= 0:
        raise ValueError(f"--gap must be > 0 seconds, got {gap_s}")
    if tolerance_s <= 0:
        raise ValueError(f"--tolerance must be > 0 seconds, got {tolerance_s}")
    if not task.strip():
        raise ValueError("--task must not be empty")
    report = ConvertReport(str(bag_path), str(output), int(fps))
    with BagReader(bag_path) as bag:
        inputs = BagInputs.resolve(profile, bag, require_leaders=True)
        topics = list(inputs.topics)
        if episode_topic:
            bag.require_topics([episode_topic])
            if bag.topics[episode_topic] not in MARKER_TYPES:
                raise BagError(f"{bag.path}: episode topic {episode_topic} carries {bag.topics[episode_topic]}; "
                               f"expected one of {list(MARKER_TYPES)}")
            topics.append(episode_topic)
        latest = LatestInputs(profile, inputs)
        with LeRobotWriter.for_profile(output, profile, fps, gripper_out_of_range=gripper_out_of_range) as writer:
            sampler = _EpisodeSampler(writer, latest, report, tolerance_s)
            last_input_ns = None
            for message in bag.messages(topics):
                now = message.timestamp_ns
                if message.topic == episode_topic:
                    text = message.msg.data
                    sampler.sample_until(now, inclusive=True)
                    if text is False or (isinstance(text, str) and text.strip().lower() in END_WORDS):
                        sampler.end()
                    else:
                        sampler.start(task if isinstance(text, bool) or text.strip().lower() == "start" else text.strip(), now)
                    continue
                if last_input_ns is None and not episode_topic:
                    sampler.start(task, now)
                elif gap_s is not None and last_input_ns is not None and (now - last_input_ns) * 1e-9 > gap_s:
                    sampler.sample_until(last_input_ns, inclusive=True)
                    latest.clear()
                    sampler.start(task, now)
                sampler.sample_until(now)
                latest.update(message)
                last_input_ns = now
            if last_input_ns is not None:
                sampler.sample_until(last_input_ns, inclusive=True)
            sampler.end()
            for future in sampler.saves:
                result = future.result()
                report.missing_frames += result.missing_frames
                report.grippers_clipped += result.grippers_clipped
    report.input_errors, report.last_input_error = dict(latest.errors), latest.last_error
    return report


def main(argv: list[str] | None = None) -> int:
    """`vla-ros convert BAG --output DATASET --profile NAME`: prints a JSON report; exit 1 on error."""
    parser = argparse.ArgumentParser(prog="vla-ros convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("bag", help="bag directory, or its .db3/.mcap file")
    parser.add_argument("--output", required=True, help="LeRobotDataset directory (created, or appended to)")
    parser.add_argument("--profile", required=True, help="robot profile name or YAML path")
    parser.add_argument("--fps", type=int, default=50, help="dataset frame rate (default 50)")
    bounds = parser.add_mutually_exclusive_group()
    bounds.add_argument("--episode-topic", help="std_msgs/Bool or String topic that starts/ends episodes")
    bounds.add_argument("--gap", type=float, help="start a new episode after this many seconds without input")
    parser.add_argument("--task", default=DEFAULT_TASK, help="task text of the episodes")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_S,
                        help="skip a frame when an input's newest message is older than this (s)")
    parser.add_argument("--gripper-out-of-range", choices=GRIPPER_POLICIES, default="clip",
                        help="a normalised gripper outside [0, 1]: clip it (counted in the report) or refuse "
                             "the conversion (default clip)")
    args = parser.parse_args(argv)
    if args.fps <= 0:
        parser.error(f"--fps must be a positive integer, got {args.fps}")
    try:
        profile = load_profile(args.profile)
        report = convert_bag(args.bag, args.output, profile, args.fps, args.episode_topic, args.gap,
                             args.task, args.tolerance, args.gripper_out_of_range)
    except (BagError, DatasetError, ProfileError, ValueError, OSError) as err:
        print(f"vla-ros convert: {err}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(report), indent=1))
    if report.frames_written == 0:
        reason = f"; last input error: {report.last_input_error}" if report.last_input_error else ""
        print(f"vla-ros convert: no frames written (every sampled frame had a stale or missing input: "
              f"{report.skipped_by_input}){reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
