"""Parameter specs declare described parameters and validate what a user passes; QoS strings
map to profiles with RELIABLE as the image default; an 'auto' camera subscription matches a
best-effort or a reliable publisher in another DDS participant and receives its messages."""

import time
from contextlib import ExitStack

import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSPresetProfiles, ReliabilityPolicy
from std_msgs.msg import String

from vla_ros.ros.params import ParameterError, ParamSpec, declare_parameters, unknown_overrides
from vla_ros.ros.qos import MatchedSubscription, image_qos, publisher_reliability, qos_profile, state_qos
from vla_ros.ros.processes import ros_context

SPECS = (
    ParamSpec("rate", 50.0, "steps per second", minimum=0.1, maximum=1000.0),
    ParamSpec("mode", "raw", "image format", choices=("raw", "jpeg")),
    ParamSpec("real_time", True, "run in real time"),
    ParamSpec("width", 640, "pixels", minimum=16),
)


@pytest.fixture
def context(ros_domain):
    with ros_context(ros_domain) as ctx:
        yield ctx


def declare(context, **overrides):
    node = Node("params_under_test", context=context,
                parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    try:
        return declare_parameters(node, SPECS), node.describe_parameters(["rate", "mode"])
    finally:
        node.destroy_node()


@pytest.mark.ros
def test_defaults_and_descriptions(context):
    values, descriptors = declare(context)
    assert values == {"rate": 50.0, "mode": "raw", "real_time": True, "width": 640}
    assert descriptors[0].description.startswith("steps per second")
    assert "raw, jpeg" in descriptors[1].description


@pytest.mark.ros
def test_misspelt_overrides_are_named(context):
    """rclpy drops overrides of undeclared names silently; the node names them (and warns)."""
    node = Node("params_under_test", context=context,
                parameter_overrides=[Parameter("rate", value=20.0), Parameter("rtae", value=5.0),
                                     Parameter("use_sim_time", value=False)])
    try:
        values = declare_parameters(node, SPECS)
        assert values["rate"] == 20.0
        assert unknown_overrides(node) == ["rtae"]
    finally:
        node.destroy_node()


def test_int_accepted_for_float(context):
    values, _ = declare(context, rate=20)
    assert values["rate"] == 20.0 and isinstance(values["rate"], float)


@pytest.mark.ros
@pytest.mark.parametrize("overrides, message", [
    ({"mode": "png"}, "'mode' must be one of"),
    ({"rate": 0.0}, "'rate' must be >= 0.1"),
    ({"width": "wide"}, "'width' must be a int"),
    ({"real_time": 1}, "'real_time' must be a bool"),
    ({"width": 8}, "'width' must be >= 16"),
])
def test_bad_values_name_the_parameter(context, overrides, message):
    with pytest.raises(ParameterError, match=message):
        declare(context, **overrides)


def test_qos_profiles():
    assert image_qos().reliability == ReliabilityPolicy.RELIABLE
    assert qos_profile("best_effort", 3).reliability == ReliabilityPolicy.BEST_EFFORT
    assert qos_profile("BEST_EFFORT", 3).depth == 3
    assert state_qos().reliability == ReliabilityPolicy.RELIABLE
    with pytest.raises(ValueError, match="unknown QoS reliability"):
        qos_profile("sometimes", 1)
    with pytest.raises(ValueError, match="depth"):
        qos_profile("reliable", 0)


class _Peers:
    """A publisher and a subscriber in two contexts (two DDS participants) on one domain."""

    def __init__(self, domain: int):
        self._stack = ExitStack()
        publisher_context, subscriber_context = (self._stack.enter_context(ros_context(domain)) for _ in range(2))
        self.camera = Node("camera_driver", context=publisher_context)
        self.policy = Node("policy_under_test", context=subscriber_context)
        self.executors = []
        for node, context in ((self.camera, publisher_context), (self.policy, subscriber_context)):
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            self.executors.append(executor)
        self.received = []

    def spin_until(self, condition, timeout: float = 10.0, publish=None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if publish is not None:
                publish.publish(String(data="frame"))
            for executor in self.executors:
                executor.spin_once(timeout_sec=0.02)
            if condition():
                return True
        return False

    def close(self):
        for executor in self.executors:
            executor.shutdown()
        self.camera.destroy_node()
        self.policy.destroy_node()
        self._stack.close()


@pytest.fixture
def peers(ros_domain):
    pair = _Peers(ros_domain)
    yield pair
    pair.close()


def _subscribe(peers, reliability):
    return MatchedSubscription(peers.policy, String, "/camera/image", peers.received.append, reliability, depth=2,
                               recheck_period=0.05)


@pytest.mark.ros
@pytest.mark.parametrize("offered, expected", [
    (QoSPresetProfiles.SENSOR_DATA.value, ReliabilityPolicy.BEST_EFFORT),  # what many camera drivers use
    (image_qos("reliable"), ReliabilityPolicy.RELIABLE),
])
def test_auto_matches_the_publisher_and_receives(peers, offered, expected):
    publisher = peers.camera.create_publisher(String, "/camera/image", offered)
    matched = _subscribe(peers, "auto")
    assert peers.spin_until(lambda: matched.subscription is not None), "no publisher was discovered"
    assert matched.subscription.qos_profile.reliability == expected
    assert peers.spin_until(lambda: len(peers.received) >= 3, publish=publisher), "no message arrived"


@pytest.mark.ros
def test_auto_waits_for_a_publisher_that_starts_later(peers):
    matched = _subscribe(peers, "auto")
    assert not peers.spin_until(lambda: matched.subscription is not None, timeout=0.3)
    assert matched.reliability is None
    publisher = peers.camera.create_publisher(String, "/camera/image", QoSPresetProfiles.SENSOR_DATA.value)
    assert peers.spin_until(lambda: matched.subscription is not None)
    assert matched.reliability == "best_effort"
    assert peers.spin_until(lambda: len(peers.received) >= 3, publish=publisher)


@pytest.mark.ros
def test_one_best_effort_publisher_makes_auto_best_effort(peers):
    peers.camera.create_publisher(String, "/camera/image", image_qos("reliable"))
    peers.camera.create_publisher(String, "/camera/image", image_qos("best_effort"))
    assert peers.spin_until(lambda: len(peers.policy.get_publishers_info_by_topic("/camera/image")) == 2)
    assert publisher_reliability(peers.policy, "/camera/image") == "best_effort"


@pytest.mark.ros
def test_a_fixed_reliability_subscribes_at_once_and_a_reliable_one_misses_best_effort(peers):
    publisher = peers.camera.create_publisher(String, "/camera/image", QoSPresetProfiles.SENSOR_DATA.value)
    matched = _subscribe(peers, "reliable")
    assert matched.reliability == "reliable" and matched.subscription is not None
    # the failure 'auto' exists for: a reliable subscription never hears a best-effort publisher
    assert not peers.spin_until(lambda: peers.received, timeout=1.0, publish=publisher)
