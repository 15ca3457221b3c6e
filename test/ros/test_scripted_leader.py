"""scripted_leader: its leader JointState decodes back to the command through the recorder's
leader decoding, and the node, run against a stand-in for sim_node's reset service, plays the
script of the seed the simulation reset to (leader states + follower commands), signals ~/done,
and refuses to start on a seed mismatch, a failed reset or while playing."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from vla_ros.robot import decode
from vla_ros.robot.profile import load_profile
from vla_ros.ros import convert
from vla_ros.ros.command_interfaces import CommandLog, InterbotixDriverState
from vla_ros.ros.follower_setup import InterbotixDriverServices
from vla_ros.ros.scripted_leader import leader_joint_state
from vla_ros.ros.processes import NodeProcess, Probe, module_command, ros_context
from vla_ros.sim.scripted import ScriptedLeader

PROFILE = load_profile("aloha_sim")
STARTUP_TIMEOUT = 60.0
LEADER = module_command("vla_ros.ros.scripted_leader")
SEED = 7
STEPS = 50
RESET_SERVICE = "/fake_sim/reset"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-3.0, 3.0), min_size=6, max_size=6), st.floats(0.0, 1.0), st.sampled_from([0, 1]))
def test_leader_state_decodes_back_to_the_command(joints, gripper, arm_index):
    arm = PROFILE.arms[arm_index]
    command = np.array([*joints, gripper])
    msg = leader_joint_state(PROFILE, arm, command, convert.seconds_to_time(1.5), "right_finger")
    assert msg.name == [*PROFILE.arm_joints, arm.leader_gripper_joint, arm.finger_joint, "right_finger"]
    assert msg.position[-1] == -msg.position[-2]
    np.testing.assert_allclose(decode.leader_joint_state_to_arm_vector(PROFILE, arm, msg), command, atol=1e-12)


def test_leader_state_needs_one_arm_command():
    with pytest.raises(ValueError, match="must have 7 entries"):
        leader_joint_state(PROFILE, PROFILE.arms[0], np.zeros(14), convert.seconds_to_time(0.0), "right_finger")


@pytest.fixture(scope="module")
def running(domain):
    """The leader against a probe that stands in for sim_node: its reset service replies
    `probe.reset_reply` (success, message)."""
    params = {"seed": SEED, "sim_reset_service": RESET_SERVICE, "max_steps": STEPS, "reset_timeout": 10.0}
    with NodeProcess(LEADER, params, domain_id=domain) as node, ros_context(domain) as context, \
            Probe(context) as probe:
        probe.reset_reply = (True, "episode 1 seed 8")

        def reset(request, response):
            response.success, response.message = probe.reset_reply
            return response

        probe.node.create_service(Trigger, RESET_SERVICE, reset)
        # The probe plays xs_sdk: its setup services and its command topics.
        probe.driver = InterbotixDriverState(PROFILE)
        InterbotixDriverServices(probe.node, PROFILE, probe.driver)
        probe.commands = CommandLog(probe.node, PROFILE)
        for arm in PROFILE.arms:
            probe.subscribe(JointState, arm.leader_joint_states_topic)
        probe.subscribe(Bool, "/scripted_leader/done")
        for arm in PROFILE.arms:  # each subscription is matched on its own
            probe.wait_for_messages(arm.leader_joint_states_topic, 3, STARTUP_TIMEOUT, node)
        yield node, probe


def start(probe, node):
    return probe.call(Trigger, "/scripted_leader/start", Trigger.Request(), 30.0, node)


def leader_vector(msgs_by_arm):
    return np.concatenate([decode.leader_joint_state_to_arm_vector(PROFILE, arm, msgs[-1])
                           for arm, msgs in zip(PROFILE.arms, msgs_by_arm)])


@pytest.mark.ros
@pytest.mark.slow
def test_plays_the_script_of_the_seed_the_simulation_reset_to(running):
    node, probe = running
    np.testing.assert_allclose(leader_vector([probe.received[a.leader_joint_states_topic] for a in PROFILE.arms]),
                               PROFILE.start_pose, atol=1e-9)  # idle: holding the start pose
    done = probe.received["/scripted_leader/done"]
    commands = probe.commands.arm_commands[1]
    probe.reset_reply = (True, "episode 2 seed 9")
    started = start(probe, node)
    assert started.success, started.message
    assert "seed 9" in started.message and f"{STEPS} steps" in started.message
    refused = start(probe, node)
    assert not refused.success and "wait for ~/done" in refused.message
    probe.wait_for(lambda: [m.data for m in done][-2:] == [False, True], 30.0, "~/done false then true", node)
    probe.spin_for(0.2)

    expected = ScriptedLeader.from_seed(9)
    final = expected.action_at(STEPS - 1)
    np.testing.assert_allclose(leader_vector([probe.received[a.leader_joint_states_topic] for a in PROFILE.arms]),
                               final, atol=1e-9)
    assert len(commands) == STEPS
    assert probe.commands.rejections == []
    assert probe.driver.modes[1] == ["position"] * 6 + ["current_based_position"]  # the follower setup ran
    for step, (_, target) in ((0, commands[0]), (STEPS - 1, commands[-1])):
        # float32 on the xs_sdk topics
        np.testing.assert_allclose(target, expected.action_at(step)[PROFILE.arm_slice(1)], atol=1e-6)


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.parametrize("reply, message", [
    ((True, "episode 3 seed 99"), "launch sim_node and scripted_leader with the same seed"),
    ((False, "physics exploded"), "failed: physics exploded"),
    ((True, "reset done"), "expected sim_node's 'episode N seed S'"),
])
def test_start_refused_when_the_reset_does_not_fit(running, reply, message):
    node, probe = running
    commands_before = len(probe.commands.messages[PROFILE.arms[0].arm_command_topic])
    probe.reset_reply = reply
    refused = start(probe, node)
    assert not refused.success and message in refused.message
    probe.spin_for(0.2)
    assert len(probe.commands.messages[PROFILE.arms[0].arm_command_topic]) == commands_before  # follower left alone


@pytest.mark.ros
@pytest.mark.slow
def test_missing_reset_service_and_bad_configuration(ros_domain):
    params = {"sim_reset_service": "/nobody/reset", "reset_timeout": 0.5}
    with NodeProcess(LEADER, params, domain_id=ros_domain) as node, ros_context(ros_domain) as context, \
            Probe(context) as probe:
        refused = start(probe, node)
        assert not refused.success and "/nobody/reset is not available" in refused.message
    with NodeProcess(LEADER, {"sim_reset_service": "' '"}, domain_id=ros_domain) as node:
        node.process.wait(60)
        assert node.process.returncode == 2, node.report()
        assert "'sim_reset_service' must name" in node.stderr()
