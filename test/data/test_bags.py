"""ROS 2 bags through rosbags: both storage formats round trip, definitions from the bag, and
BagError (never a bare traceback) for truncated, empty, unknown-type and missing-topic bags."""

import shutil

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from vla_ros.data.bags import BagError, BagReader, BagWriter, image_to_rgb, joint_positions, stamp_ns

STORAGES = ["sqlite3", "mcap"]
T0 = 1_700_000_000_000_000_000
PERIOD = 20_000_000
JOINTS = ["waist", "shoulder", "elbow", "gripper"]


def smooth_rgb(i: int) -> np.ndarray:
    y, x = np.mgrid[0:24, 0:32]
    return np.stack([40 + 3 * x + i, 60 + 4 * y, np.full_like(x, 90 + 5 * i)], axis=-1).astype(np.uint8)


def positions(i: int) -> np.ndarray:
    return np.array([0.1, -0.2, 0.3, 0.5]) + 0.01 * i


def build_bag(path, storage: str, frames: int = 4, distro: str = "jazzy"):
    with BagWriter(path, storage, distro=distro) as bag:
        for i in range(frames):
            t = T0 + i * PERIOD
            bag.write("/cam_rgb", t, bag.image(smooth_rgb(i), t))
            bag.write("/cam_bgr", t + 1, bag.image(smooth_rgb(i), t, encoding="bgr8"))
            bag.write("/cam_jpeg", t + 2, bag.compressed_image(smooth_rgb(i), t, quality=95))
            reordered = [JOINTS[k] for k in (3, 1, 0, 2)]
            bag.write("/joint_states", t + 3, bag.joint_state(reordered, positions(i)[[3, 1, 0, 2]], t))
            bag.write("/command", t + 4, bag.joint_trajectory(JOINTS, [positions(i), positions(i + 1)], [0.02, 0.04], t))
        bag.write("/episode_start", T0 - 1, bag.bool_msg(True))
        bag.write("/task", T0 - 2, bag.string_msg("pick the cube"))
    return path


@pytest.mark.parametrize("storage", STORAGES)
def test_round_trip(tmp_path, storage):
    path = build_bag(tmp_path / "bag", storage)
    with BagReader(path) as bag:
        assert bag.storage == storage
        assert bag.topics["/cam_jpeg"] == "sensor_msgs/msg/CompressedImage"
        assert bag.topics["/command"] == "trajectory_msgs/msg/JointTrajectory"
        assert bag.message_counts["/joint_states"] == 4
        messages = list(bag.messages())
        stamps = [m.timestamp_ns for m in messages]
        assert stamps == sorted(stamps) and len(messages) == 4 * 5 + 2
        assert [m.msg.data for m in messages[:2]] == ["pick the cube", True]
        seen = {}
        for m in bag.messages(["/cam_rgb", "/cam_bgr", "/cam_jpeg", "/joint_states", "/command"]):
            i = (m.timestamp_ns - T0) // PERIOD
            seen[m.topic] = seen.get(m.topic, 0) + 1
            if m.topic in ("/cam_rgb", "/cam_bgr"):
                np.testing.assert_array_equal(image_to_rgb(m.msg), smooth_rgb(i))
            elif m.topic == "/cam_jpeg":
                assert np.abs(image_to_rgb(m.msg).astype(int) - smooth_rgb(i)).mean() < 3.0
            elif m.topic == "/joint_states":
                np.testing.assert_array_equal(joint_positions(m.msg, JOINTS), positions(i))
                assert stamp_ns(m.msg.header) == T0 + i * PERIOD
            else:
                assert list(m.msg.joint_names) == JOINTS
                np.testing.assert_array_equal(m.msg.points[1].positions, positions(i + 1))
                assert m.msg.points[1].time_from_start.nanosec == 40_000_000
        assert seen == dict.fromkeys(["/cam_rgb", "/cam_bgr", "/cam_jpeg", "/joint_states", "/command"], 4)


@pytest.mark.parametrize("storage", STORAGES)
def test_open_storage_file_directly_and_humble_definitions(tmp_path, storage):
    path = build_bag(tmp_path / "bag", storage, frames=2, distro="humble")
    (storage_file,) = [p for p in path.iterdir() if p.suffix in (".db3", ".mcap")]
    with BagReader(storage_file, distro="humble") as bag:
        assert len(list(bag.messages(["/joint_states"]))) == 2


@pytest.mark.parametrize("storage", STORAGES)
def test_custom_type_resolved_from_bag_definition(tmp_path, storage):
    with BagWriter(tmp_path / "bag", storage) as bag:
        bag.register_types("int32 count\nstring label\n", "acme_msgs/msg/Tally")
        bag.write("/tally", T0, bag.typestore.types["acme_msgs/msg/Tally"](count=7, label="seven"))
    with BagReader(tmp_path / "bag") as bag:
        (message,) = bag.messages(["/tally"])
        assert (message.msg.count, message.msg.label) == (7, "seven")


def test_missing_joint_in_joint_state(tmp_path):
    with BagReader(build_bag(tmp_path / "bag", "mcap", frames=1)) as bag:
        (message,) = bag.messages(["/joint_states"])
        with pytest.raises(ValueError, match=r"lacks joints \['wrist'\]"):
            joint_positions(message.msg, [*JOINTS, "wrist"])


# -- bad bags -----------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", STORAGES)
def test_truncated_bag(tmp_path, storage):
    path = build_bag(tmp_path / "bag", storage, frames=20)
    (storage_file,) = [p for p in path.iterdir() if p.suffix in (".db3", ".mcap")]
    with open(storage_file, "r+b") as f:
        f.truncate(storage_file.stat().st_size // 2)
    with pytest.raises(BagError, match="truncated"):
        with BagReader(path) as bag:
            list(bag.messages())


@pytest.mark.parametrize("storage", STORAGES)
def test_empty_bag(tmp_path, storage):
    with BagWriter(tmp_path / "bag", storage):
        pass
    with pytest.raises(BagError, match="bag is empty"):
        BagReader(tmp_path / "bag")


@pytest.mark.parametrize("storage", STORAGES)
def test_unknown_message_type(tmp_path, storage):
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(tmp_path / "bag", version=9, storage_plugin=plugin) as writer:
        connection = writer.add_connection("/mystery", "acme_msgs/msg/Unknown", msgdef="", rihs01="RIHS01_" + "0" * 64)
        writer.write(connection, T0, b"\x00\x01\x00\x00\x07\x00\x00\x00")
    with BagReader(tmp_path / "bag") as bag:
        assert bag.topics == {"/mystery": "acme_msgs/msg/Unknown"}  # listing still works
        with pytest.raises(BagError, match="/mystery has message type acme_msgs/msg/Unknown"):
            list(bag.messages())


def test_missing_topic_and_path(tmp_path):
    with BagReader(build_bag(tmp_path / "bag", "sqlite3", frames=1)) as bag:
        with pytest.raises(BagError, match=r"\['/cam_high'\] not in bag"):
            list(bag.messages(["/cam_rgb", "/cam_high"]))
    with pytest.raises(BagError, match="does not exist"):
        BagReader(tmp_path / "nothing")
    not_a_bag = tmp_path / "notabag"
    not_a_bag.mkdir()
    with pytest.raises(BagError, match="cannot open bag"):
        BagReader(not_a_bag)


def test_writer_refuses_existing_path_and_bad_storage(tmp_path):
    path = build_bag(tmp_path / "bag", "mcap", frames=1)
    with pytest.raises(BagError, match="cannot create bag"):
        BagWriter(path, "mcap")
    with pytest.raises(ValueError, match="unknown bag storage"):
        BagWriter(tmp_path / "other", "rosbag1")
    shutil.rmtree(path)
