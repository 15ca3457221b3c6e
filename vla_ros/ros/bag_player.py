"""bag_player: publishes a recorded ROS 2 bag into the live graph, so that the live nodes
(policy_node above all) can be tested on recorded data where the `ros2 bag` CLI does not exist.

Messages go out in bag order with the recorded spacing scaled by ``rate``, or as fast as possible
(``rate`` 0). With ``publish_clock`` the bag's receive time is published on /clock (always when
``rate`` is 0): consumers running with use_sim_time then see the header stamps as fresh, exactly as
they were when the bag was recorded. Topics can be selected and remapped ("from:=to"), the bag
looped, and playback paused/resumed through ~/play (std_srvs/SetBool) or rewound through ~/restart
(std_srvs/Trigger). Publishers are RELIABLE so that a subscriber receives everything in order.

Messages are read with rosbags (vla_ros.data.bags) and published as serialized CDR, as
`ros2 bag play` does; the publisher type is the rclpy message class named by the bag's type
('sensor_msgs/msg/Image' -> sensor_msgs.msg.Image).
"""

from __future__ import annotations

import importlib
import sys
import threading
import time

import rclpy
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from std_srvs.srv import SetBool, Trigger

from vla_ros.data.bags import BagError, BagReader
from vla_ros.ros.params import ParameterError, ParamSpec, declare_parameters
from vla_ros.ros.qos import qos_profile

PARAMETERS = (
    ParamSpec("bag", "", "bag directory or .db3/.mcap file to play (required)"),
    ParamSpec("rate", 1.0, "playback speed relative to the recording; 0 = as fast as possible (with /clock)",
              minimum=0.0, maximum=1000.0),
    ParamSpec("publish_clock", False, "publish the bag time on /clock (consumers with use_sim_time)"),
    ParamSpec("clock_frequency", 100.0, "Hz at which /clock advances between messages in timed playback",
              minimum=1.0, maximum=10000.0),
    ParamSpec("loop", False, "start over at the end of the bag"),
    ParamSpec("start_paused", False, "wait for ~/play (data: true) before publishing"),
    ParamSpec("start_delay", 0.0, "seconds to wait after start-up (discovery) before playing", minimum=0.0),
    ParamSpec("exit_on_end", True, "shut the node down when the bag has been played (not when looping)"),
    ParamSpec("qos_depth", 10, "keep-last depth of the (reliable) publishers", minimum=1, maximum=10000),
    ParamSpec("distro", "kilted", "typestore for message types the bag does not define",
              choices=("humble", "jazzy", "kilted")),
    ParamSpec("publish_commands", False, "also play the bag's motion commands (JointTrajectory, and xs_sdk's "
              "JointGroupCommand, JointSingleCommand and JointTrajectoryCommand); off by default so that a "
              "bag replayed next to live arms never drives them (replayed commands bypass the safety layer)"),
)
# Motion commands: skipped unless publish_commands (a recorded command is not re-checked against
# where the arm is now).
COMMAND_TYPES = ("trajectory_msgs/msg/JointTrajectory", "interbotix_xs_msgs/msg/JointGroupCommand",
                 "interbotix_xs_msgs/msg/JointSingleCommand", "interbotix_xs_msgs/msg/JointTrajectoryCommand")
LIST_PARAMETERS = {
    "topics": "bag topics to play (empty: all)",
    "remap": "topic remappings, each 'from:=to' (bag topic -> published topic)",
}


def parse_remaps(entries) -> dict[str, str]:
    """['/a:=/b', ...] -> {'/a': '/b'}; ValueError naming a malformed entry."""
    remaps = {}
    for entry in entries:
        source, separator, target = str(entry).partition(":=")
        if not separator or not source.strip() or not target.strip():
            raise ValueError(f"remap entry {entry!r} must look like '/from:=/to'")
        remaps[source.strip()] = target.strip()
    return remaps


def message_class(msgtype: str):
    """'pkg/msg/Name' -> the rclpy message class; ImportError/AttributeError if unavailable."""
    package, _, name = msgtype.rpartition("/")
    return getattr(importlib.import_module(package.replace("/", ".")), name)


class BagPlayer(Node):
    def __init__(self):
        super().__init__("bag_player")
        self.params = declare_parameters(self, PARAMETERS)
        lists = {}
        for name, description in LIST_PARAMETERS.items():
            self.declare_parameter(name, [""], ParameterDescriptor(description=description, dynamic_typing=True))
            value = self.get_parameter(name).value
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ParameterError(f"parameter '{name}' must be a list of strings, got {value!r}")
            lists[name] = [v for v in value if v]
        if not self.params["bag"]:
            raise ParameterError("parameter 'bag' is empty: give a bag directory or file")
        try:
            self.remaps = parse_remaps(lists["remap"])
        except ValueError as err:
            raise ParameterError(f"parameter 'remap': {err}") from None
        self.rate = self.params["rate"]
        self.publish_clock = self.params["publish_clock"] or self.rate == 0.0
        with BagReader(self.params["bag"], distro=self.params["distro"]) as bag:
            self.bag_topics = dict(bag.topics)
            unresolved = set(bag.unresolved)
            self.start_ns, self.end_ns = bag.start_ns, bag.end_ns
        selected = lists["topics"] or sorted(self.bag_topics)
        missing = [t for t in selected if t not in self.bag_topics]
        if missing:
            raise BagError(f"{self.params['bag']}: topic(s) {missing} not in bag; it has {sorted(self.bag_topics)}")
        qos = qos_profile("reliable", self.params["qos_depth"])
        self.publishers_by_topic = {}
        for topic in selected:
            msgtype = self.bag_topics[topic]
            if msgtype in COMMAND_TYPES and not self.params["publish_commands"]:
                self.get_logger().warn(f"not playing motion commands on {topic} ({msgtype}): "
                                       "set publish_commands:=true to play them (never next to live arms)")
                continue
            try:
                if msgtype in unresolved:
                    raise ImportError(f"the bag does not define {msgtype} and the typestore does not know it")
                cls = message_class(msgtype)
            except (ImportError, AttributeError) as err:
                problem = f"topic {topic}: cannot play message type {msgtype} ({err})"
                if lists["topics"]:
                    raise BagError(problem) from None
                self.get_logger().warn(f"skipping {problem}")
                continue
            self.publishers_by_topic[topic] = self.create_publisher(cls, self.remaps.get(topic, topic), qos)
        self.clock_publisher = self.create_publisher(Clock, "/clock", qos_profile("reliable", 10)) \
            if self.publish_clock else None
        self.published = 0
        self.error = ""
        self.finished = threading.Event()
        self._playing = threading.Event()
        self._restart = threading.Event()
        self._stop = threading.Event()
        self.create_service(SetBool, "~/play", self._on_play)
        self.create_service(Trigger, "~/restart", self._on_restart)
        if not self.params["start_paused"]:
            self._playing.set()
        self._thread = threading.Thread(target=self._run, name="bag_playback", daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"playing {self.params['bag']} ({len(self.publishers_by_topic)} topics, "
            f"{(self.end_ns - self.start_ns) * 1e-9:.2f} s) at rate {self.rate:g}"
            f"{' with /clock' if self.publish_clock else ''}{', paused: call ~/play' if self.params['start_paused'] else ''}")

    # --- services ---------------------------------------------------------------------------

    def _on_play(self, request, response):
        if request.data:
            self._playing.set()
        else:
            self._playing.clear()
        response.success, response.message = True, "playing" if request.data else "paused"
        return response

    def _on_restart(self, request, response):
        self._restart.set()
        self._playing.set()
        response.success, response.message = True, "restarting from the beginning of the bag"
        return response

    # --- playback ---------------------------------------------------------------------------

    def _publish_clock(self, bag_ns: int) -> None:
        if self.clock_publisher is not None:
            self.clock_publisher.publish(Clock(clock=Time(sec=bag_ns // 1_000_000_000, nanosec=bag_ns % 1_000_000_000)))

    def _wait_playing(self) -> float:
        """Block while paused; returns the wall seconds spent paused."""
        if self._playing.is_set():
            return 0.0
        paused_at = time.monotonic()
        while not self._playing.wait(0.05):
            if self._stop.is_set():
                break
        return time.monotonic() - paused_at

    def _run(self) -> None:
        delay = self.params["start_delay"]
        if delay and self._stop.wait(delay):
            return
        try:
            while not self._stop.is_set():
                self._restart.clear()
                self._play_once()
                if self._stop.is_set() or (not self.params["loop"] and not self._restart.is_set()):
                    break
        except BagError as err:
            self.error = str(err)
            self.get_logger().error(self.error)
        self.get_logger().info(f"done: {self.published} messages published")
        self.finished.set()

    def _play_once(self) -> None:
        self._wait_playing()
        wall_start = time.monotonic()
        clock_period = 1.0 / self.params["clock_frequency"]
        with BagReader(self.params["bag"], distro=self.params["distro"]) as bag:
            for message in bag.messages(list(self.publishers_by_topic)):
                if self._stop.is_set() or self._restart.is_set():
                    return
                wall_start += self._wait_playing()
                if self.rate > 0:
                    due = wall_start + (message.timestamp_ns - self.start_ns) * 1e-9 / self.rate
                    while (remaining := due - time.monotonic()) > 0:
                        if self._stop.wait(min(remaining, clock_period)):
                            return
                        if not self._playing.is_set():
                            wall_start += self._wait_playing()
                            due = wall_start + (message.timestamp_ns - self.start_ns) * 1e-9 / self.rate
                        elapsed_ns = int((time.monotonic() - wall_start) * self.rate * 1e9)
                        self._publish_clock(self.start_ns + min(elapsed_ns, message.timestamp_ns - self.start_ns))
                self._publish_clock(message.timestamp_ns)
                data = bag.typestore.serialize_cdr(message.msg, message.msgtype)
                self.publishers_by_topic[message.topic].publish(bytes(data))
                self.published += 1

    def wait_delivered(self, timeout_s: float = 2.0) -> None:
        """Give reliable subscribers the chance to acknowledge the last messages before exiting."""
        for publisher in self.publishers_by_topic.values():
            publisher.wait_for_all_acked(Duration(seconds=timeout_s))

    def shutdown(self) -> None:
        self._stop.set()
        self._playing.set()
        self._thread.join(timeout=5.0)


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=argv if argv is not None else sys.argv)
    try:
        node = BagPlayer()
    except (ParameterError, BagError) as exc:  # configuration errors: say what, not a traceback
        print(f"bag_player: {exc}", file=sys.stderr)
        rclpy.shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
            if node.finished.is_set() and node.params["exit_on_end"] and not node.params["loop"]:
                node.wait_delivered()
                break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    if node.error:
        print(f"bag_player: {node.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
