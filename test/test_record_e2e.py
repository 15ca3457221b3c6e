"""End to end, as a user records without a robot: sim_node + scripted_leader + recorder_node as
separate processes record two short teleoperation episodes; the dataset is read back frame by
frame (video frames == table rows, timestamps on the 1/fps grid, 14-dim state/action, grippers in [0, 1],
the follower having followed the leader); `vla-ros train` fine-tunes the tiny policy on it for a
few steps and the checkpoint loads and acts in PolicyRuntime."""

import json
import subprocess
import sys

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from vla_ros.data.lerobot import LeRobotDataset
from vla_ros.robot.profile import load_profile
from vla_ros.ros.processes import NodeProcess, Probe, module_command, ros_context

WIDTH, HEIGHT = 64, 48
SEED = 3
STEPS = 80  # script steps played per episode (1.6 s at 50 Hz)
EPISODES = 2
TIMEOUT = 60.0
ARM_JOINTS = np.r_[0:6, 7:13]
pytestmark = [pytest.mark.ros, pytest.mark.slow]


def call(probe, node, service):
    response = probe.call(Trigger, service, Trigger.Request(), TIMEOUT, node)
    assert response.success, f"{service}: {response.message}\n{node.report()}"
    return response.message


def sim_rejected_commands(probe) -> int:
    sim_status = [m.status[0] for m in probe.received["/diagnostics"] if m.status[0].name.startswith("sim_node")]
    return int({kv.key: kv.value for kv in sim_status[-1].values}["rejected_commands"])


def test_record_train_and_load(ros_domain, tmp_path):
    profile_path = tmp_path / "aloha_sim_small.yaml"
    profile_path.write_text("extends: aloha_sim\nname: aloha_sim_small\ncameras:\n"
                            f"  - {{name: cam_high, topic: /cam_high/camera/color/image_rect_raw, "
                            f"width: {WIDTH}, height: {HEIGHT}}}\n")
    profile = load_profile(profile_path)
    dataset = tmp_path / "dataset"
    sim_params = {"profile": str(profile_path), "image_width": WIDTH, "image_height": HEIGHT, "seed": SEED}
    leader_params = {"profile": str(profile_path), "seed": SEED, "max_steps": STEPS}
    recorder_params = {"profile": str(profile_path), "dataset": str(dataset), "task": "transfer the cube",
                       "allow_low_rate": True}  # the refusal has its own tests; here the CPU is shared
    stop_replies = []

    def node_process(module, params):
        return NodeProcess(module_command(f"vla_ros.ros.{module}"), params, domain_id=ros_domain)

    with node_process("sim_node", sim_params) as sim, node_process("scripted_leader", leader_params) as leader, \
            node_process("recorder_node", recorder_params) as recorder, \
            ros_context(ros_domain) as context, Probe(context) as probe:
        done = probe.subscribe(Bool, "/scripted_leader/done")
        probe.subscribe(DiagnosticArray, "/diagnostics")
        # The recorder refuses to start until every input is live (DDS discovery takes a while).
        probe.wait_for(lambda: probe.call(Trigger, "/recorder_node/start", Trigger.Request(), TIMEOUT,
                                          recorder).success, TIMEOUT, "the recorder's inputs", recorder)
        call(probe, recorder, "/recorder_node/discard")
        for _ in range(EPISODES):
            seen = len(done)
            call(probe, leader, "/scripted_leader/start")  # resets the sim, then plays
            call(probe, recorder, "/recorder_node/start")
            probe.wait_for(lambda: any(m.data for m in done[seen:]), TIMEOUT, "the script to end", leader)
            stop_replies.append(call(probe, recorder, "/recorder_node/stop"))
        probe.wait_for(lambda: any(m.status[0].name.startswith("sim_node") for m in probe.received["/diagnostics"]),
                       TIMEOUT, "sim_node diagnostics", sim)
        assert sim_rejected_commands(probe) == 0, sim.report()
        assert recorder.stop() == 0, recorder.report()  # waits for the pending saves
        for node in (sim, leader):
            assert node.stop() == 0, node.report()
    print(json.dumps({"recording_through_sim": stop_replies}))

    recorded = LeRobotDataset(dataset, profile=profile)
    assert recorded.num_episodes == EPISODES
    recorded.validate(decode_videos=True)
    for index in range(EPISODES):
        episode = recorded.episode(index)
        frames = list(recorded.iter_frames(index))  # raises if a video and the table disagree
        assert len(frames) == len(episode) > 10
        assert episode.task == "transfer the cube"
        # capture times on the 1/fps grid: consecutive unless a tick was dropped (then a gap shows)
        slots = np.round(episode.timestamps * recorded.fps)
        np.testing.assert_allclose(episode.timestamps, slots / recorded.fps, atol=1e-6)
        assert slots[0] == 0 and np.all(np.diff(slots) >= 1)
        assert episode.state.shape == episode.action.shape == (len(episode), 14)
        grippers = episode.action[:, list(profile.gripper_indices)]
        assert grippers.min() >= 0.0 and grippers.max() <= 1.0
        assert frames[0].images["cam_high"].shape == (HEIGHT, WIDTH, 3)
        # the follower was driven by the leader: the joint the leader moved most, the follower
        # moved the same way by at least half as much (it lags by a few ticks)
        commanded = episode.action[-1, ARM_JOINTS] - episode.action[0, ARM_JOINTS]
        followed = episode.state[-1, ARM_JOINTS] - episode.state[0, ARM_JOINTS]
        joint = int(np.argmax(np.abs(commanded)))
        assert abs(commanded[joint]) > 0.2
        assert followed[joint] / commanded[joint] > 0.5, (commanded, followed)

    run = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-m", "vla_ros.cli", "train", "--dataset", str(dataset), "--output", str(run),
         "--config", "tiny", "--steps", "2", "--profile", str(profile_path), "--quiet"],
        capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-4000:]

    from vla_ros.policy.runtime import PolicyRuntime

    runtime = PolicyRuntime(run / "policy", profile=profile, deterministic=True)
    runtime.set_instruction(episode.task)
    frame = frames[0]
    actions = runtime.predict(frame.images, frame.state)
    assert actions.shape[1] == 14 and np.all(np.isfinite(actions))
