"""Parameter specs declare described parameters and validate what a user passes; QoS strings
map to profiles with RELIABLE as the image default."""

import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy

from vla_ros.ros.params import ParameterError, ParamSpec, declare_parameters
from vla_ros.ros.qos import image_qos, qos_profile, state_qos
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
