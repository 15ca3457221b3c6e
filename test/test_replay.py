"""`vla-ros replay` on synthetic ALOHA bags (both storage formats, raw and jpeg): the output bag's
trajectories respect every limit of the profile, holds happen exactly where one camera has a gap
(and the chunk latency after it), the report agrees with the output bag, and bad bags fail with
a clear message and no traceback. Plus the replay throughput benchmark's JSON."""

import json

import numpy as np
import pytest
from bagfactory import BagSpec, build_aloha_bag, write_test_profile

from vla_ros import bench_replay, replay
from vla_ros.control.controller import ControllerConfig
from vla_ros.data.bags import BagReader, BagWriter
from vla_ros.policy.checkpoint import build_random_policy, profile_stats, save_checkpoint
from vla_ros.policy.model import VLAPolicy
from vla_ros.policy.normalize import NormStats
from vla_ros.robot.profile import load_profile

LATENCY = 0.04
# The tiny config's chunks cover 10 ticks (0.18 s) from the capture time: with 25 Hz cameras
# (up to 0.04 s old) and 0.04 s latency, replanning every 0.05 s keeps a chunk live at all times.
REPLAN = 0.05
GAP = ("cam_left_wrist", 1.0, 1.4)
SECONDS = 2.2
CONFIG = ControllerConfig()
TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small two-camera profile and a tiny random checkpoint whose actions stay within 0.02 of
    the start pose, so that the open-loop replay (the recorded arm does not follow the commands)
    stays inside the tracking bound and any hold comes from the inputs."""
    root = tmp_path_factory.mktemp("replay")
    profile_path = write_test_profile(root)
    profile = load_profile(profile_path)
    policy = build_random_policy("tiny", profile, seed=0)
    lower, upper = profile.start_pose - 0.02, profile.start_pose + 0.02
    action = {"mean": (lower + upper) / 2, "std": (upper - lower) / 2, "min": lower, "max": upper}
    stats = NormStats(profile_stats(profile).state, action, mode="min_max")
    checkpoint = save_checkpoint(VLAPolicy(policy.config, policy.backbone, stats), root / "checkpoint")
    return profile_path, profile, checkpoint


def run_replay(capsys, bag, out, report, setup, *extra):
    profile_path, _, checkpoint = setup
    code = replay.main([str(bag), "--checkpoint", str(checkpoint), "--out", str(out), "--report", str(report),
                        "--profile", str(profile_path), *extra])
    return code, capsys.readouterr()


def read_commands(profile, out_bag):
    """Per tick (ns): the 14-vector commanded across both arms; plus hold/event records."""
    from vla_ros.ros.convert import trajectory_to_arm_targets

    topics = {replay.commands_topic(arm): (i, arm) for i, arm in enumerate(profile.arms)}
    per_tick: dict[int, dict[int, np.ndarray]] = {}
    events, diagnostics = [], 0
    with BagReader(out_bag) as bag:
        for m in bag.messages():
            if m.topic in topics:
                index, arm = topics[m.topic]
                times, targets = trajectory_to_arm_targets(profile, arm, m.msg)
                assert times.tolist() == pytest.approx([profile.dt])
                per_tick.setdefault(m.timestamp_ns, {})[index] = targets[0]
            elif m.topic == replay.EVENTS_TOPIC:
                events.append((m.timestamp_ns, json.loads(m.msg.data)))
            elif m.topic == replay.DIAGNOSTICS_TOPIC:
                diagnostics += 1
    ticks = sorted(per_tick)
    assert all(len(per_tick[t]) == len(profile.arms) for t in ticks)
    commands = np.stack([np.concatenate([per_tick[t][i] for i in range(len(profile.arms))]) for t in ticks])
    return np.asarray(ticks), commands, events, diagnostics


def expected_stale_ticks(ticks_ns, spec, profile):
    """Ticks at which the gate must refuse the inputs, from the bag's known stamps alone: a camera
    or joint state older than its max age, or camera stamps further apart than the max spread."""
    latency = int(spec.latency_s * 1e9)
    t0 = 1_700_000_000_000_000_000
    camera_stamps = {cam.name: [t0 + int(round(k / spec.camera_rate_hz * 1e9))
                                for k in range(int(spec.seconds * spec.camera_rate_hz))
                                if not (cam.name == GAP[0] and GAP[1] <= k / spec.camera_rate_hz < GAP[2])]
                     for cam in profile.cameras}
    stale = set()
    for tick in ticks_ns:
        newest = [max(s for s in stamps if s + latency <= tick) for stamps in camera_stamps.values()]
        ages = [(tick - s) * 1e-9 for s in newest]
        if max(ages) > CONFIG.max_camera_age or (max(newest) - min(newest)) * 1e-9 > CONFIG.max_camera_spread:
            stale.add(int(tick))
    return stale


@pytest.mark.slow
@pytest.mark.parametrize("storage,jpeg", [("sqlite3", False), ("mcap", True)])
def test_replay_respects_limits_and_holds_only_at_the_camera_gap(tmp_path, capsys, setup, storage, jpeg):
    _, profile, _ = setup
    spec = BagSpec(storage=storage, jpeg=jpeg, seconds=SECONDS, camera_gap=GAP)
    facts = build_aloha_bag(tmp_path / "bag", profile, spec)
    code, out = run_replay(capsys, facts.path, tmp_path / "out", tmp_path / "report.json", setup,
                           "--latency", str(LATENCY), "--replan-period", str(REPLAN))
    assert code == 0, out.err
    report = json.loads((tmp_path / "report.json").read_text())
    ticks, commands, events, diagnostics = read_commands(profile, tmp_path / "out")
    with BagReader(tmp_path / "out") as bag:
        assert bag.storage == storage

    # report == output bag
    assert report["final_state"] != "fault" and report["faults"] == {}
    assert report["commands"] == len(ticks) == report["ticks"]
    assert report["trajectory_messages"] == len(ticks) * len(profile.arms)
    assert report["event_messages"] == len(events)
    assert report["diagnostics_messages"] == diagnostics >= 3
    hold_events = [e for e in events if any(r.startswith("hold_") for r in e[1]["reasons"])]
    assert report["holds"] == len(hold_events)
    assert sum(report["holds_by_reason"].values()) == len(hold_events)
    for kind, count in report["safety_interventions"].items():
        assert count == sum(e[1]["reasons"].count(kind) for e in events)
    inference = report["inference"]
    assert inference["predictions"] == sum(report["chunks"].values()) + inference["undelivered_at_end"]
    assert report["chunks"]["chunks_accepted"] > 10
    assert set(report["action_error"]["per_joint"]) == set(profile.vector_names)
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # every limit, between consecutive ticks (every armed tick emits a command)
    dt = profile.dt
    assert np.allclose(np.diff(ticks) * 1e-9, dt)
    assert np.all(commands >= profile.safe_lower() - TOLERANCE) and np.all(commands <= profile.safe_upper() + TOLERANCE)
    assert np.all(np.abs(np.diff(commands, axis=0)) <= profile.velocity_limit * dt + TOLERANCE)
    assert np.all(np.abs(np.diff(commands, n=2, axis=0)) <= profile.acceleration_limit * dt * dt + TOLERANCE)

    # holds: stale inputs exactly in the camera gap; no chunk only until the first (or the first
    # after the gap) prediction has arrived
    stale = {t for t, e in events if "hold_stale" in e["reasons"]}
    expected = expected_stale_ticks(ticks, spec, profile)
    assert stale == expected and len(expected) > 5
    gap_end = max(expected)
    waits = sorted(t for t, e in events if "hold_no_chunk" in e["reasons"])
    allowed = (REPLAN + LATENCY + dt) * 1e9
    assert all(t - ticks[0] <= allowed or 0 < t - gap_end <= allowed for t in waits), ([(t - ticks[0]) * 1e-9 for t in waits], (gap_end - ticks[0]) * 1e-9)
    assert report["holds_by_reason"] == {"hold_stale": len(stale), "hold_no_chunk": len(waits)}
    assert all("camera" in r for t, e in events if t in stale for r in e["reasons"] if not r.startswith("hold_"))


@pytest.mark.slow
def test_the_default_evaluates_the_whole_bag_reproducibly(tmp_path, capsys, setup):
    """A fresh random policy drives far from the recording. The recorded arm never follows the
    replayed commands, so by default there is no tracking bound (as in a dry run), a fault would
    re-arm, and the latency is fixed: the whole bag is evaluated, twice identically. The old
    behaviour (--track --stop-at-fault) ends the evaluation at the first tracking fault."""
    profile_path, profile, _ = setup
    wild = save_checkpoint(build_random_policy("tiny", profile, seed=1), tmp_path / "wild")
    facts = build_aloha_bag(tmp_path / "bag", profile, BagSpec(seconds=SECONDS, camera_gap=GAP))
    args = [str(facts.path), "--checkpoint", str(wild), "--profile", str(profile_path)]
    for name in "ab":
        assert replay.main([*args, "--out", str(tmp_path / name), "--report", str(tmp_path / f"{name}.json")]) == 0
    assert replay.main([*args, "--out", str(tmp_path / "c"), "--report", str(tmp_path / "c.json"),
                        "--track", "--stop-at-fault"]) == 0
    capsys.readouterr()
    first, second, stopped = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "abc")
    assert not first["faults"] and first["final_state"] != "fault"
    ticks, commands, _, _ = read_commands(profile, tmp_path / "a")
    ticks_again, commands_again, _, _ = read_commands(profile, tmp_path / "b")
    np.testing.assert_array_equal(ticks, ticks_again)
    np.testing.assert_array_equal(commands, commands_again)
    assert (ticks[-1] - ticks[0]) * 1e-9 > SECONDS - 1.0  # commands until the end of the bag
    assert np.all(commands >= profile.safe_lower() - TOLERANCE) and np.all(commands <= profile.safe_upper() + TOLERANCE)
    if stopped["faults"]:  # after the fault only the stop's hold at the measured pose goes out
        assert stopped["final_state"] == "fault" and stopped["rearms"] == 0


def test_joint_states_lacking_a_joint_name_the_joint(tmp_path, capsys, setup):
    profile_path, profile, checkpoint = setup
    facts = build_aloha_bag(tmp_path / "bag", profile, BagSpec(seconds=0.5, drop_joint="wrist_angle"))
    code, out = run_replay(capsys, facts.path, tmp_path / "out", tmp_path / "report.json", setup)
    assert code == 1
    assert "wrist_angle" in out.err and "Traceback" not in out.err


def _unknown_type_bag(path):
    with BagWriter(path, "sqlite3") as bag:
        bag.register_types("int32 value\n", "acme_msgs/msg/Counter")
        counter = bag.typestore.types["acme_msgs/msg/Counter"]
        bag.write("/cam_high/camera/color/image_rect_raw", 1, counter(value=3))
    return path


@pytest.mark.parametrize("problem,expected", [
    ("truncated", "truncated"),
    ("empty", "bag is empty"),
    ("missing_camera", "camera 'cam_left_wrist'"),
    ("unknown_type", "acme_msgs/msg/Counter"),
    ("no_bag", "does not exist"),
])
def test_bad_bags_fail_clearly(tmp_path, capsys, setup, problem, expected):
    bag = tmp_path / "bag"
    if problem == "truncated":
        build_aloha_bag(bag, setup[1], BagSpec(seconds=0.5))
        (db,) = bag.glob("*.db3")
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])
    elif problem == "empty":
        BagWriter(bag, "mcap").close()
    elif problem == "missing_camera":
        build_aloha_bag(bag, "aloha_sim", BagSpec(seconds=0.3))
    elif problem == "unknown_type":
        _unknown_type_bag(bag)
    code, out = run_replay(capsys, bag, tmp_path / "out", tmp_path / "report.json", setup)
    assert code == 1
    assert expected in out.err and out.err.startswith("vla-ros replay:")
    assert "Traceback" not in out.err
    assert not (tmp_path / "out").exists() and not (tmp_path / "report.json").exists()


def test_existing_output_bag_is_refused(tmp_path, capsys, setup):
    facts = build_aloha_bag(tmp_path / "bag", setup[1], BagSpec(seconds=0.3))
    (tmp_path / "out").mkdir()
    code, out = run_replay(capsys, facts.path, tmp_path / "out", tmp_path / "report.json", setup)
    assert code == 1 and "already exists" in out.err


@pytest.mark.slow
def test_bench_replay_prints_json(tmp_path, capsys, setup):
    profile_path = setup[0]
    assert bench_replay.main(["--seconds", "1", "--profile", str(profile_path), "--latency", "0.03"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["benchmark"] == "replay_throughput" and result["realtime_factor"] > 0
    assert result["bag_seconds"] == pytest.approx(0.98) and result["predictions"] > 0
