"""The robot profiles load, expand per-joint data to the 14-dim vector, and reject bad files
with a message naming file, key and problem."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from vla_ros.robot.profile import ProfileError, config_dir, load_profile

BUNDLED = ["aloha_stationary", "aloha_ros1_act", "aloha_sim", "aloha_stationary_ros2_control", "aloha_sim_ros2_control"]


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_profiles_load(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.action_dim == 14
    assert profile.vector_names[:7] == (
        "left_waist", "left_shoulder", "left_elbow", "left_forearm_roll",
        "left_wrist_angle", "left_wrist_rotate", "left_gripper",
    )
    assert profile.gripper_indices == (6, 13)
    assert profile.dt == pytest.approx(0.02)
    assert np.all(profile.safe_lower() < profile.start_pose)
    assert np.all(profile.start_pose < profile.safe_upper())
    assert not profile.position_lower.flags.writeable


def test_variants_share_the_arm_and_differ_in_data():
    humble, ros1 = load_profile("aloha_stationary"), load_profile("aloha_ros1_act")
    np.testing.assert_array_equal(humble.position_upper, ros1.position_upper)
    assert humble.follower_finger.open == pytest.approx(0.0579)
    assert ros1.follower_joint.close == pytest.approx(-0.6213)
    assert humble.arms[0].joint_states_topic == "/follower_left/joint_states"
    assert ros1.arms[0].joint_states_topic == "/puppet_left/joint_states"
    assert load_profile("aloha_sim").camera_names == ("cam_high",)


def test_each_profile_names_the_stack_it_describes():
    """The stock ALOHA stack runs xs_sdk (no ros2_control): commands go to its joint_group and
    joint_single topics; the ros2_control variant names the Interbotix controllers' topics."""
    stock = load_profile("aloha_stationary")
    assert stock.command_interface == "interbotix" and stock.interbotix_arm_group == "arm"
    assert [(a.arm_command_topic, a.gripper_command_topic, a.driver_namespace) for a in stock.arms] == [
        ("/follower_left/commands/joint_group", "/follower_left/commands/joint_single", "/follower_left"),
        ("/follower_right/commands/joint_group", "/follower_right/commands/joint_single", "/follower_right")]
    assert load_profile("aloha_sim").command_interface == "interbotix"
    control = load_profile("aloha_stationary_ros2_control")
    assert control.command_interface == "ros2_control"
    assert [(a.arm_command_topic, a.gripper_command_topic, a.finger_joint) for a in control.arms] == [
        ("/follower_left/arm_controller/joint_trajectory", "/follower_left/gripper_controller/joint_trajectory",
         "left_finger"),
        ("/follower_right/arm_controller/joint_trajectory", "/follower_right/gripper_controller/joint_trajectory",
         "left_finger")]
    for path in config_dir().glob("aloha*.yaml"):
        header = path.read_text().split("\n\n")[0]
        assert "joint_trajectory_controller per arm" not in header or "ros2_control" in path.name, path


def test_gripper_map_round_trip():
    gmap = load_profile("aloha_stationary").follower_finger
    assert float(gmap.normalize(gmap.open)) == pytest.approx(1.0)
    assert float(gmap.normalize(gmap.close)) == pytest.approx(0.0)
    values = np.linspace(-0.2, 1.2, 15)
    np.testing.assert_allclose(gmap.normalize(gmap.denormalize(values)), values, atol=1e-12)


def _write_variant(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((config_dir() / "aloha_stationary.yaml").read_text())
    edit(data)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "edit, key, problem",
    [
        (lambda d: d.pop("control_rate_hz"), "control_rate_hz", "missing"),
        (lambda d: d.update(control_rate_hz=-5), "control_rate_hz", "> 0"),
        (lambda d: d["limits"].update(velocity=[1.0] * 6), "limits.velocity", "7 numbers"),
        (lambda d: d["limits"]["acceleration"].__setitem__(2, 0.0), "limits.acceleration[2]", "> 0"),
        (lambda d: d["limits"]["position_lower"].__setitem__(1, 5.0), "limits.position_lower[1]", "below"),
        (lambda d: d["limits"]["tracking"].__setitem__(0, "fast"), "limits.tracking[0]", "finite number"),
        (lambda d: d["grippers"]["follower_finger"].update(close=0.0579), "grippers.follower_finger", "differ"),
        (lambda d: d["arms"][1].update(arm_command_topic="relative/topic"), "arms[1].arm_command_topic", "absolute"),
        (lambda d: d["arms"][0].pop("gripper_command_topic"), "arms[0].gripper_command_topic", "missing"),
        (lambda d: d.update(command_interface="servo"), "command_interface", "must be one of"),
        (lambda d: d.pop("interbotix_arm_group"), "interbotix_arm_group", "missing"),
        (lambda d: d["arms"][1].update(name="left"), "arms", "distinct"),
        (lambda d: d["cameras"][0].pop("topic"), "cameras[0].topic", "missing"),
        (lambda d: d.update(start_pose=[0, -3.0, 1.16, 0, -0.3, 0, 0.1]), "start_pose[1]", "outside"),
        (lambda d: d.update(arm_joints=["waist", "waist"]), "arm_joints", "distinct"),
    ],
)
def test_malformed_profile_names_file_key_and_problem(tmp_path, edit, key, problem):
    path = _write_variant(tmp_path, edit)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert err.value.key == key
    assert problem in err.value.problem
    assert str(path) in str(err.value) and key in str(err.value)


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ProfileError, match="file not found"):
        load_profile("no_such_robot")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ProfileError, match="invalid YAML"):
        load_profile(bad)


def test_extends_overrides_top_level_keys(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: aloha_stationary\nname: child\ncontrol_rate_hz: 100\n")
    profile = load_profile(child)
    assert profile.name == "child" and profile.dt == pytest.approx(0.01)
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\nname: loop\n")
    with pytest.raises(ProfileError, match="cycle"):
        load_profile(loop)


def test_bundled_profiles_are_found_without_an_ament_prefix(tmp_path):
    """A pip-installed package run by hand (no AMENT_PREFIX_PATH, as outside make and the CLI)
    still finds its bundled profiles under <prefix>/share/vla_ros."""
    env = {key: value for key, value in os.environ.items() if key != "AMENT_PREFIX_PATH"}
    code = "from vla_ros.robot.profile import load_profile; print(load_profile('aloha_sim').source)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("aloha_sim.yaml")
