"""Replay throughput benchmark (`vla-ros bench replay`), and the synthetic ALOHA bags it replays.

The benchmark writes a synthetic bag for a robot profile, a randomly initialised checkpoint of a
named policy configuration (default: tiny), replays the bag through `vla_ros.replay` and prints
JSON: bag seconds replayed per wall second (realtime_factor; > 1 means faster than real time).

The synthetic bags are shared with the tests (test/bagfactory.py): follower joint states whose
names are deliberately NOT in profile order, optional leader topics, raw or jpeg cameras, optional
episode markers and an optional gap in one camera, in either storage format. The recorded motion
is a known function of time, so tests can check what comes out against what went in.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla_ros.data.bags import BagWriter
from vla_ros.robot.profile import RobotProfile, load_profile

T0_NS = 1_700_000_000_000_000_000
EPISODE_TOPIC = "/episode"
WARMUP_PREDICTIONS = 3


def follower_vector(profile: RobotProfile, t: float) -> np.ndarray:
    """The recorded 14-dim state at time t (s): a slow sine around the start pose, inside the
    safe limits and far below the velocity and acceleration limits."""
    phase = np.arange(profile.action_dim) * 0.7
    vector = profile.start_pose + 0.15 * np.sin(1.5 * t + phase)
    grippers = list(profile.gripper_indices)
    vector[grippers] = 0.5 + 0.3 * np.sin(1.0 * t + phase[grippers])
    return vector


def leader_vector(profile: RobotProfile, t: float) -> np.ndarray:
    """The operator's action at time t: where the follower will be 0.1 s later."""
    return follower_vector(profile, t + 0.1)


def camera_image(camera_index: int, width: int, height: int, t: float) -> np.ndarray:
    """A smooth RGB pattern that moves with time (survives jpeg well)."""
    y, x = np.mgrid[0:height, 0:width]
    shift = int(40 * t)
    red = (3 * x + shift) % 256
    green = (4 * y + 60 * camera_index) % 256
    blue = np.full_like(x, (50 + 30 * camera_index + shift) % 256)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def follower_names_and_positions(profile: RobotProfile, arm_index: int, vector: np.ndarray):
    """A follower JointState as the ALOHA stack lays it out (gripper joint, two fingers), but in
    REVERSED order, so any decoder that relies on the order instead of the names fails."""
    arm = profile.arms[arm_index]
    part = vector[profile.arm_slice(arm_index)]
    finger = float(profile.follower_finger.denormalize(part[-1]))
    names = [*profile.arm_joints, arm.gripper_joint, arm.finger_joint, "right_finger"]
    positions = [*part[:-1], float(profile.follower_joint.denormalize(part[-1])), finger, -finger]
    return names[::-1], positions[::-1]


def leader_names_and_positions(profile: RobotProfile, arm_index: int, vector: np.ndarray):
    arm = profile.arms[arm_index]
    part = vector[profile.arm_slice(arm_index)]
    names = [arm.leader_gripper_joint, *profile.arm_joints]
    positions = [float(profile.leader_joint.denormalize(part[-1])), *part[:-1]]
    return names, positions


@dataclass
class BagSpec:
    storage: str = "sqlite3"
    jpeg: bool = False
    seconds: float = 2.0
    camera_rate_hz: float = 25.0
    joint_rate_hz: float = 50.0
    leaders: bool = True
    # (camera name, start s, end s): that camera publishes nothing in [start, end)
    camera_gap: tuple[str, float, float] | None = None
    # recording intervals (s); outside them nothing is recorded. None: one interval [0, seconds)
    episodes: list[tuple[float, float]] | None = None
    # write std_msgs/Bool True/False (or String task text / "stop") on EPISODE_TOPIC at the intervals' ends
    episode_marker: str | None = None  # None | "bool" | "string"
    distro: str = "jazzy"
    latency_s: float = 0.002  # receive time = header stamp + this
    drop_joint: str | None = None  # a joint the followers' JointStates leave out (a broken recording)


@dataclass
class BagFacts:
    path: Path
    profile: RobotProfile
    spec: BagSpec
    counts: dict[str, int] = field(default_factory=dict)
    camera_topics: dict[str, str] = field(default_factory=dict)


def camera_topic(profile: RobotProfile, camera_index: int, jpeg: bool) -> str:
    topic = profile.cameras[camera_index].topic
    return topic + "/compressed" if jpeg else topic


def build_aloha_bag(path: str | Path, profile: RobotProfile | str | Path, spec: BagSpec | None = None) -> BagFacts:
    spec = spec or BagSpec()
    if not isinstance(profile, RobotProfile):
        profile = load_profile(profile)
    facts = BagFacts(Path(path), profile, spec)
    facts.camera_topics = {cam.name: camera_topic(profile, i, spec.jpeg) for i, cam in enumerate(profile.cameras)}
    intervals = spec.episodes or [(0.0, spec.seconds)]
    latency = int(spec.latency_s * 1e9)

    def write(bag, topic, stamp_ns, msg):
        bag.write(topic, stamp_ns + latency, msg)
        facts.counts[topic] = facts.counts.get(topic, 0) + 1

    with BagWriter(path, spec.storage, distro=spec.distro) as bag:
        for episode, (start, end) in enumerate(intervals):
            if spec.episode_marker == "bool":
                write(bag, EPISODE_TOPIC, T0_NS + int(start * 1e9) - latency - 1, bag.bool_msg(True))
                write(bag, EPISODE_TOPIC, T0_NS + int(end * 1e9), bag.bool_msg(False))
            elif spec.episode_marker == "string":
                write(bag, EPISODE_TOPIC, T0_NS + int(start * 1e9) - latency - 1, bag.string_msg(f"task {episode}"))
                write(bag, EPISODE_TOPIC, T0_NS + int(end * 1e9), bag.string_msg("stop"))
            for k in range(int(round((end - start) * spec.joint_rate_hz))):
                t = start + k / spec.joint_rate_hz
                stamp = T0_NS + int(round(t * 1e9))
                follower, leader = follower_vector(profile, t), leader_vector(profile, t)
                for arm_index, arm in enumerate(profile.arms):
                    names, positions = follower_names_and_positions(profile, arm_index, follower)
                    if spec.drop_joint in names:
                        keep = [i for i, name in enumerate(names) if name != spec.drop_joint]
                        names, positions = [names[i] for i in keep], [positions[i] for i in keep]
                    write(bag, arm.joint_states_topic, stamp, bag.joint_state(names, positions, stamp))
                    if spec.leaders:
                        names, positions = leader_names_and_positions(profile, arm_index, leader)
                        write(bag, arm.leader_joint_states_topic, stamp, bag.joint_state(names, positions, stamp))
            for k in range(int(round((end - start) * spec.camera_rate_hz))):
                t = start + k / spec.camera_rate_hz
                stamp = T0_NS + int(round(t * 1e9))
                for i, cam in enumerate(profile.cameras):
                    if spec.camera_gap and spec.camera_gap[0] == cam.name and spec.camera_gap[1] <= t < spec.camera_gap[2]:
                        continue
                    image = camera_image(i, cam.width, cam.height, t)
                    msg = bag.compressed_image(image, stamp, quality=95) if spec.jpeg else bag.image(image, stamp)
                    write(bag, facts.camera_topics[cam.name], stamp, msg)
    return facts


def main(argv: list[str] | None = None) -> int:
    """Replay a synthetic bag with a random checkpoint; print bag seconds per wall second (JSON)."""
    parser = argparse.ArgumentParser(prog="vla-ros bench replay", description=main.__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="bag length (s)")
    parser.add_argument("--profile", default="aloha_sim", help="robot profile (its cameras at full size)")
    parser.add_argument("--config", default="tiny", help="named policy configuration (vla-ros init-checkpoint)")
    parser.add_argument("--raw", action="store_true", help="raw images instead of jpeg (CompressedImage)")
    parser.add_argument("--storage", choices=("sqlite3", "mcap"), default="mcap")
    parser.add_argument("--latency", type=float, help="fixed modelled latency (default: measured)")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")
    from vla_ros.policy.checkpoint import build_random_policy, save_checkpoint
    from vla_ros.policy.runtime import PolicyRuntime
    from vla_ros.replay import ReplayOptions, replay_bag

    profile = load_profile(args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        spec = BagSpec(storage=args.storage, jpeg=not args.raw, seconds=args.seconds)
        build_aloha_bag(Path(tmp) / "bag", profile, spec)
        build_s = time.perf_counter() - started
        save_checkpoint(build_random_policy(args.config, profile), Path(tmp) / "checkpoint")
        runtime = PolicyRuntime(Path(tmp) / "checkpoint", deterministic=True, profile=profile)
        runtime.set_instruction("transfer the cube")
        warm_up = {cam.name: camera_image(i, cam.width, cam.height, 0.0) for i, cam in enumerate(profile.cameras)}
        for _ in range(WARMUP_PREDICTIONS):  # steady state: the first CPU calls pay one-off setup
            runtime.predict(warm_up, profile.start_pose)
        # rearm: a random policy soon leaves the tracking bound; re-arming keeps it predicting all along
        options = ReplayOptions(latency_s=args.latency, rearm=True)
        report = replay_bag(Path(tmp) / "bag", runtime, profile, Path(tmp) / "out", options)
    result = {
        "benchmark": "replay_throughput",
        "profile": profile.name,
        "cameras": [f"{c.name} {c.width}x{c.height}" for c in profile.cameras],
        "images": "raw" if args.raw else "jpeg",
        "storage": args.storage,
        "policy_config": args.config,
        "bag_seconds": report["bag_seconds"],
        "wall_seconds": report["wall_seconds"],
        "realtime_factor": report["realtime_factor"],
        "target": "realtime_factor > 1",
        "ticks": report["ticks"],
        "predictions": report["inference"]["predictions"],
        "rearms_after_faults": report["rearms"],
        "predict_ms": report["inference"]["predict_ms"],
        "bag_build_seconds": build_s,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
