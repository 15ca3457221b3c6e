"""ROS 2 bags (sqlite3 .db3 and mcap) on rosbags: no rclpy, no ros2 CLI needed.

Reading resolves message types from the definitions stored in the bag where there are any
(Jazzy+ and mcap bags carry them) and falls back to a distro typestore (Humble bags written by
ros2 bag carry none). Every failure a user can cause with a bad bag (missing or truncated file,
empty bag, unknown message type, missing topic) raises BagError with the path and the problem.

Writing uses rosbags' own typestore and CDR serializer: rclpy-serialized bytes carry trailing
bytes that rosbags' strict reader refuses, so bags for tests and replay output are built here.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, TypesysError, get_types_from_idl, get_types_from_msg, get_typestore

from vla_ros.robot import decode

DISTROS = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY, "kilted": Stores.ROS2_KILTED}
STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
DEFAULT_DISTRO = "jazzy"
# rosbags writes bag format 8 or 9; 8 is the oldest (closest to what Humble's rosbag2 expects).
BAG_VERSIONS = {"humble": 8, "jazzy": 9, "kilted": 9}
IDL_SEPARATOR = "=" * 80 + "\n"


class BagError(RuntimeError):
    """A bag is missing, unreadable, empty or lacks what was asked of it."""


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    timestamp_ns: int  # receive/record time stored in the bag
    msg: object


def _typestore(distro: str):
    try:
        return get_typestore(DISTROS[distro])
    except KeyError:
        raise ValueError(f"unknown ROS distro {distro!r}; expected one of {sorted(DISTROS)}") from None


def _bag_types(connection) -> dict:
    """Parse the message definition a bag stores for one connection (empty dict if none)."""
    msgdef = connection.msgdef
    if not msgdef.data:
        return {}
    if msgdef.data.startswith(IDL_SEPARATOR + "IDL: "):
        types = {}
        for block in msgdef.data.split(IDL_SEPARATOR)[1:]:
            types.update(get_types_from_idl(block.split("\n", 1)[1]))
        return types
    if getattr(msgdef.format, "name", "") == "IDL":
        return get_types_from_idl(msgdef.data)
    return get_types_from_msg(msgdef.data, connection.msgtype)


class BagReader:
    """Open a bag (its directory, or a single .db3/.mcap file) for time-ordered reading.

    Use as a context manager, or call close(). ``distro`` picks the fallback typestore for
    types the bag carries no definition of.
    """

    def __init__(self, path: str | os.PathLike, distro: str = "kilted"):
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"{self.path}: bag does not exist")
        fallback = _typestore(distro)
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except (ReaderError, sqlite3.Error, OSError, ValueError, KeyError, EOFError) as err:
            raise BagError(f"{self.path}: cannot open bag, truncated or not a ROS 2 bag ({type(err).__name__}: {err})") from None
        except Exception as err:  # noqa: BLE001 - storage plugins raise assorted errors on corrupt files
            raise BagError(f"{self.path}: cannot open bag, truncated or corrupt ({type(err).__name__}: {err})") from None
        try:
            self.typestore, self.unresolved = self._resolve_types(fallback)
            self.topics: dict[str, str] = {c.topic: c.msgtype for c in self._reader.connections}
            self.message_counts: dict[str, int] = {}
            for c in self._reader.connections:
                self.message_counts[c.topic] = self.message_counts.get(c.topic, 0) + c.msgcount
            if not self.topics or self._reader.message_count == 0:
                raise BagError(f"{self.path}: bag is empty (no messages)")
        except BaseException:
            self.close()
            raise

    def _resolve_types(self, fallback):
        """Typestore = distro types overridden by the bag's own definitions; and the message types
        of this bag that neither provides."""
        types = dict(fallback.fielddefs)
        for connection in self._reader.connections:
            try:
                types.update(_bag_types(connection))
            except TypesysError as err:
                raise BagError(f"{self.path}: topic {connection.topic}: bad message definition for "
                               f"{connection.msgtype} stored in the bag ({err})") from None
        store = get_typestore(Stores.EMPTY)
        try:
            store.register(types)
        except TypesysError as err:
            raise BagError(f"{self.path}: inconsistent message definitions ({err})") from None
        unresolved = {c.msgtype for c in self._reader.connections if c.msgtype not in store.types}
        return store, unresolved

    @property
    def start_ns(self) -> int:
        return self._reader.start_time

    @property
    def end_ns(self) -> int:
        return self._reader.end_time

    @property
    def storage(self) -> str:
        files = list(self.path.glob("*.mcap")) if self.path.is_dir() else [self.path]
        return "mcap" if any(f.suffix == ".mcap" for f in files) else "sqlite3"

    def require_topics(self, topics: Iterable[str]) -> None:
        missing = [t for t in topics if t not in self.topics]
        if missing:
            raise BagError(f"{self.path}: topic(s) {missing} not in bag; it has {sorted(self.topics)}")

    def messages(self, topics: Sequence[str] | None = None) -> Iterator[BagMessage]:
        """Deserialised messages in timestamp order, restricted to ``topics`` when given."""
        if topics is not None:
            self.require_topics(topics)
        connections = [c for c in self._reader.connections if topics is None or c.topic in topics]
        for c in connections:
            if c.msgtype in self.unresolved:
                raise BagError(f"{self.path}: topic {c.topic} has message type {c.msgtype}, which the bag "
                               f"does not define and the ROS 2 typestore does not know")
        try:
            for connection, timestamp, raw in self._reader.messages(connections=connections):
                try:
                    msg = self.typestore.deserialize_cdr(raw, connection.msgtype)
                except Exception as err:  # noqa: BLE001 - the CDR decoder raises assorted errors
                    raise BagError(f"{self.path}: topic {connection.topic} at t={timestamp} ns: cannot "
                                   f"deserialise {connection.msgtype} ({type(err).__name__}: {err})") from None
                yield BagMessage(connection.topic, connection.msgtype, timestamp, msg)
        except BagError:
            raise
        except Exception as err:  # noqa: BLE001 - truncated storage surfaces while iterating
            raise BagError(f"{self.path}: bag data unreadable, truncated or corrupt "
                           f"({type(err).__name__}: {err})") from None

    def close(self) -> None:
        reader, self._reader = getattr(self, "_reader", None), None
        if reader is not None and reader.is_open:
            try:
                reader.close()
            except Exception:  # noqa: BLE001 - nothing useful to do with a failing close of a bad bag
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def image_to_rgb(msg) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a sensor_msgs Image or CompressedImage, decoded by
    :mod:`vla_ros.robot.decode` so that bags and live topics can never be decoded differently."""
    if getattr(msg, "__msgtype__", "").endswith("CompressedImage"):
        image = decode.compressed_to_array(msg)
    else:
        image = decode.image_to_array(msg)
    if image.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit image, got {image.dtype} (encoding {getattr(msg, 'encoding', '?')!r})")
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image


def joint_positions(msg, names: Sequence[str]) -> np.ndarray:
    """Positions of a JointState in the order of ``names`` (the message may order them any way)."""
    return decode.joint_positions_by_name(msg, names)


class BagWriter:
    """Create a new bag with rosbags' serializer; topics are registered on first write.

    ``storage`` is "sqlite3" or "mcap"; ``distro`` picks message definitions and bag version.
    """

    def __init__(self, path: str | os.PathLike, storage: str = "sqlite3", distro: str = DEFAULT_DISTRO):
        if storage not in STORAGES:
            raise ValueError(f"unknown bag storage {storage!r}; expected one of {sorted(STORAGES)}")
        self.path = Path(path)
        self.typestore = _typestore(distro)
        self._types = self.typestore.types
        try:
            self._writer = Writer(self.path, version=BAG_VERSIONS[distro], storage_plugin=STORAGES[storage])
            self._writer.open()
        except WriterError as err:
            raise BagError(f"{self.path}: cannot create bag ({err})") from None
        self._connections: dict[str, object] = {}

    def register_types(self, msg_definition: str, msgtype: str) -> None:
        """Add a custom .msg type (its definition is stored in the bag)."""
        self.typestore.register(get_types_from_msg(msg_definition, msgtype))

    def write(self, topic: str, timestamp_ns: int, msg) -> None:
        msgtype = msg.__msgtype__
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._connections[topic] = connection
        elif connection.msgtype != msgtype:
            raise ValueError(f"topic {topic} already carries {connection.msgtype}, not {msgtype}")
        self._writer.write(connection, int(timestamp_ns), self.typestore.serialize_cdr(msg, msgtype))

    # -- message builders (stamps in ns) -------------------------------------------------------

    def header(self, stamp: int, frame_id: str = ""):
        time_type = self._types["builtin_interfaces/msg/Time"]
        return self._types["std_msgs/msg/Header"](
            stamp=time_type(sec=int(stamp // 1_000_000_000), nanosec=int(stamp % 1_000_000_000)), frame_id=frame_id)

    def image(self, rgb: np.ndarray, stamp: int, encoding: str = "rgb8", frame_id: str = ""):
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image, got shape {rgb.shape}")
        if encoding == "bgr8":
            rgb = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        elif encoding != "rgb8":
            raise ValueError(f"image encoding {encoding!r} not supported for writing (rgb8, bgr8)")
        h, w, _ = rgb.shape
        return self._types["sensor_msgs/msg/Image"](
            header=self.header(stamp, frame_id), height=h, width=w, encoding=encoding, is_bigendian=0,
            step=w * 3, data=rgb.reshape(-1))

    def compressed_image(self, rgb: np.ndarray, stamp: int, quality: int = 90, frame_id: str = ""):
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(np.asarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return self._types["sensor_msgs/msg/CompressedImage"](
            header=self.header(stamp, frame_id), format="rgb8; jpeg compressed bgr8", data=jpeg.reshape(-1))

    def joint_state(self, names: Sequence[str], positions, stamp: int, velocities=(), efforts=()):
        if len(names) != len(positions):
            raise ValueError(f"{len(names)} joint names but {len(positions)} positions")
        return self._types["sensor_msgs/msg/JointState"](
            header=self.header(stamp), name=list(names), position=np.asarray(positions, dtype=np.float64),
            velocity=np.asarray(velocities, dtype=np.float64), effort=np.asarray(efforts, dtype=np.float64))

    def joint_trajectory(self, joint_names: Sequence[str], positions, times_from_start_s, stamp: int):
        """A JointTrajectory with one point per row of ``positions`` (K, n_joints)."""
        positions = np.atleast_2d(np.asarray(positions, dtype=np.float64))
        if positions.shape[1] != len(joint_names) or len(times_from_start_s) != len(positions):
            raise ValueError(f"positions {positions.shape} do not match {len(joint_names)} joints "
                             f"and {len(times_from_start_s)} times")
        point_type = self._types["trajectory_msgs/msg/JointTrajectoryPoint"]
        duration = self._types["builtin_interfaces/msg/Duration"]
        empty = np.zeros(0, dtype=np.float64)
        points = [point_type(positions=row, velocities=empty, accelerations=empty, effort=empty,
                             time_from_start=duration(sec=int(t), nanosec=int(round((t - int(t)) * 1e9))))
                  for row, t in zip(positions, times_from_start_s)]
        return self._types["trajectory_msgs/msg/JointTrajectory"](
            header=self.header(stamp), joint_names=list(joint_names), points=points)

    def bool_msg(self, value: bool):
        return self._types["std_msgs/msg/Bool"](data=bool(value))

    def string_msg(self, text: str):
        return self._types["std_msgs/msg/String"](data=str(text))

    def close(self) -> None:
        writer, self._writer = getattr(self, "_writer", None), None
        if writer is not None:
            writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
