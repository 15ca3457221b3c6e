"""`ros2 launch` cannot run here (launch_ros is not on PyPI), so each launch file is executed with
recording stand-ins for the launch API, its launch_setup() is performed with a fake launch context
(the declared defaults plus command-line overrides), and everything it names is checked against
the package: executables, parameter files, parameter names, argument types and bad arguments."""

import importlib
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

from vla_ros.ros.launch_args import LaunchArgumentError

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
ROS_PARAMETERS = {"use_sim_time"}  # declared by every rclpy node


class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class LaunchDescription(_Recorded):
    pass


class DeclareLaunchArgument(_Recorded):
    pass


class OpaqueFunction(_Recorded):
    pass


class LaunchConfiguration(_Recorded):
    def perform(self, context):
        """Like launch: the configured string, or the declared default (a file in the source tree)."""
        value = context.launch_configurations[self.args[0]]
        return str(_share_path(value)) if isinstance(value, PathJoinSubstitution) else value


class PathJoinSubstitution(_Recorded):
    pass


class Node(_Recorded):
    pass


class FindPackageShare(_Recorded):
    pass


class ParameterValue(_Recorded):
    pass


def _stub_modules():
    modules = {}
    for name, members in {
        "launch": {"LaunchDescription": LaunchDescription},
        "launch.actions": {"DeclareLaunchArgument": DeclareLaunchArgument, "OpaqueFunction": OpaqueFunction},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration, "PathJoinSubstitution": PathJoinSubstitution},
        "launch_ros": {},
        "launch_ros.actions": {"Node": Node},
        "launch_ros.parameter_descriptions": {"ParameterValue": ParameterValue},
        "launch_ros.substitutions": {"FindPackageShare": FindPackageShare},
    }.items():
        module = types.ModuleType(name)
        module.__dict__.update(members)
        modules[name] = module
    return modules


def _describe(path: Path, monkeypatch) -> LaunchDescription:
    for name, module in _stub_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    namespace = {"__name__": "launch_file_under_test"}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace["generate_launch_description"]()


def _declared(description: LaunchDescription) -> dict[str, DeclareLaunchArgument]:
    return {e.args[0]: e for e in description.args[0] if isinstance(e, DeclareLaunchArgument)}


def _launch(path: Path, monkeypatch, checkpoint: Path, **overrides) -> list[Node]:
    """The nodes the launch file starts for `overrides` (ros2 launch ... name:=value)."""
    description = _describe(path, monkeypatch)
    configurations = {name: arg.kwargs["default_value"] for name, arg in _declared(description).items()
                      if "default_value" in arg.kwargs}
    configurations.update(checkpoint=str(checkpoint), **overrides)
    for name, arg in _declared(description).items():
        if "choices" in arg.kwargs and configurations[name] not in arg.kwargs["choices"]:
            raise LaunchArgumentError(name, configurations[name], "not a declared choice")  # as launch does
    context = types.SimpleNamespace(launch_configurations=configurations)
    entities = []
    for entity in description.args[0]:
        entities += entity.kwargs["function"](context) if isinstance(entity, OpaqueFunction) else [entity]
    return [e for e in entities if isinstance(e, Node)]


def _console_scripts() -> dict[str, str]:
    return dict(re.findall(r'"([\w-]+) = ([\w.]+:\w+)"', (ROOT / "setup.py").read_text()))


def _walk(value):
    """Every recorded object inside a launch entity's arguments."""
    if isinstance(value, _Recorded):
        yield value
        for item in (*value.args, *value.kwargs.values()):
            yield from _walk(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)


def _share_path(join: PathJoinSubstitution) -> Path:
    parts = join.args[0]
    assert isinstance(parts[0], FindPackageShare) and parts[0].args == ("vla_ros",)
    return ROOT.joinpath(*parts[1:])


def _node_parameters(executable: str) -> set[str]:
    module_name = _console_scripts()[executable].split(":")[0]
    return {spec.name for spec in importlib.import_module(module_name).PARAMETERS} | ROS_PARAMETERS


def _overrides(node: Node) -> dict:
    return {k: v for entry in node.kwargs["parameters"] if isinstance(entry, dict) for k, v in entry.items()}


def _node(nodes: list[Node], executable: str) -> Node:
    return next(node for node in nodes if node.kwargs["executable"] == executable)


def test_there_are_launch_files():
    assert {p.name for p in LAUNCH_FILES} >= {"robot.launch.py", "sim.launch.py"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_names_only_what_exists(path, monkeypatch, tmp_path):
    nodes = _launch(path, monkeypatch, tmp_path)
    assert nodes, "a launch file that starts no node"
    declared = _declared(_describe(path, monkeypatch))
    scripts = _console_scripts()
    for node in nodes:
        executable = node.kwargs["executable"]
        assert node.kwargs["package"] == "vla_ros"
        assert executable in scripts, f"{path.name}: executable '{executable}' is not a console script"
        module_name, function = scripts[executable].split(":")
        assert callable(getattr(importlib.import_module(module_name), function))
        unknown = set(_overrides(node)) - _node_parameters(executable)
        assert not unknown, f"{path.name}: {executable} has no parameters {unknown}"
        for entry in node.kwargs["parameters"]:
            if isinstance(entry, str):
                assert Path(entry).is_file(), f"{path.name}: missing {entry}"
    for item in _walk(_describe(path, monkeypatch).args[0]):
        if isinstance(item, LaunchConfiguration):
            assert item.args[0] in declared, f"{path.name}: LaunchConfiguration('{item.args[0]}') is not declared"
        if isinstance(item, PathJoinSubstitution):
            assert _share_path(item).is_file(), f"{path.name}: missing {_share_path(item)}"
    for item in _walk(nodes):
        if isinstance(item, PathJoinSubstitution):
            assert _share_path(item).is_file(), f"{path.name}: missing {_share_path(item)}"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_namespace_and_remap_reach_every_node(path, monkeypatch, tmp_path):
    nodes = _launch(path, monkeypatch, tmp_path, namespace="/robot1",
                    remap="/cam_high/image_raw:=/camera_high/image_raw, /diagnostics:=/robot1/diagnostics")
    for node in nodes:
        assert node.kwargs["namespace"] == "/robot1"
        assert node.kwargs["remappings"] == [("/cam_high/image_raw", "/camera_high/image_raw"),
                                             ("/diagnostics", "/robot1/diagnostics")]


@pytest.mark.parametrize("namespace, expected", [("", "/arm_guard/in"), ("/robot1", "/robot1/arm_guard/in"),
                                                 ("robot1", "/robot1/arm_guard/in")])
def test_policy_node_commands_go_to_the_guard_of_its_own_namespace(namespace, expected, monkeypatch, tmp_path):
    nodes = _launch(ROOT / "launch" / "robot.launch.py", monkeypatch, tmp_path, namespace=namespace)
    assert _overrides(_node(nodes, "policy_node"))["command_namespace"] == expected
    assert _overrides(_node(nodes, "arm_guard"))["input_namespace"] == expected


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("instruction", ["yes", "1", "null", "[a, b]", "fold the towel"])
def test_instruction_reaches_policy_node_as_a_string(path, instruction, monkeypatch, tmp_path):
    value = _overrides(_node(_launch(path, monkeypatch, tmp_path, instruction=instruction), "policy_node"))["instruction"]
    assert isinstance(value, ParameterValue)
    assert value.args == (instruction,) and value.kwargs == {"value_type": str}


def test_robot_use_sim_time_is_an_argument(monkeypatch, tmp_path):
    path = ROOT / "launch" / "robot.launch.py"
    assert _overrides(_node(_launch(path, monkeypatch, tmp_path), "policy_node"))["use_sim_time"] is False
    nodes = _launch(path, monkeypatch, tmp_path, use_sim_time="true")
    assert _overrides(_node(nodes, "policy_node"))["use_sim_time"] is True
    # a bag's /clock on a robot: the guard's timeouts stay on the monotonic clock
    assert not _overrides(_node(nodes, "arm_guard")).get("simulation_clock", False)


@pytest.mark.parametrize("real_time", ["true", "false"])
def test_sim_nodes_run_on_the_clock_sim_node_publishes(real_time, monkeypatch, tmp_path):
    nodes = _launch(ROOT / "launch" / "sim.launch.py", monkeypatch, tmp_path, real_time=real_time)
    sim = _overrides(_node(nodes, "sim_node"))
    assert sim["real_time"] is (real_time == "true")
    assert sim["publish_clock"] is True  # real time or not: /clock carries the simulation time
    assert sim["lockstep_timeout"] > 0, "each step waits for the goal computed for it"
    for name in ("policy_node", "arm_guard"):
        assert _overrides(_node(nodes, name))["use_sim_time"] is True, name
    assert _overrides(_node(nodes, "arm_guard"))["simulation_clock"] is True
    assert "use_sim_time" not in sim, "the clock's source must not wait for its own /clock"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("name, value, expected", [
    ("remap", "/a/b", "is not a rule FROM:=TO"),
    ("remap", "/a:=b c", "is not a rule FROM:=TO"),
    ("namespace", "robot 1", "not a ROS namespace"),
    ("profile", "no_such_profile", "file not found"),
    ("checkpoint", "/no/such/checkpoint", "no such directory"),
])
def test_a_bad_argument_stops_the_launch_with_one_line(path, name, value, expected, monkeypatch, tmp_path):
    overrides = {name: value}
    if name == "checkpoint":
        overrides = {}
        tmp_path = Path(value)
    with pytest.raises(LaunchArgumentError) as raised:
        _launch(path, monkeypatch, tmp_path, **overrides)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"launch argument {name}:=") and expected in message


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_boolean_and_enumerated_arguments_declare_their_choices(path, monkeypatch):
    declared = _declared(_describe(path, monkeypatch))
    for name in {"dry_run", "use_sim_time", "real_time"} & set(declared):
        assert declared[name].kwargs["choices"] == ("true", "false"), name
    if "task" in declared:
        assert set(declared["task"].kwargs["choices"]) == {"transfer_cube", "insertion"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_arm_guard_is_the_last_hop_before_the_drivers(path, monkeypatch, tmp_path):
    nodes = _launch(path, monkeypatch, tmp_path)
    policy, guard = _overrides(_node(nodes, "policy_node")), _overrides(_node(nodes, "arm_guard"))
    assert policy["command_namespace"] == guard["input_namespace"] != ""
    assert guard["profile"] == policy["profile"]
    assert guard["use_sim_time"] is policy["use_sim_time"]


@pytest.mark.parametrize("executable", ["policy_node", "sim_node", "arm_guard"])
def test_params_files_use_declared_parameters_with_valid_values(executable):
    module = importlib.import_module(_console_scripts()[executable].split(":")[0])
    specs = {spec.name: spec for spec in module.PARAMETERS}
    data = yaml.safe_load((ROOT / "config" / f"{executable}.yaml").read_text())
    values = data[executable]["ros__parameters"]
    assert set(values) <= set(specs), f"undeclared: {set(values) - set(specs)}"
    for name, value in values.items():
        specs[name].validate(value)
    # The file documents the node's defaults: a value that differs would change what the launch
    # files run without anyone asking (noise_scale 1.0 once overrode the checkpoint's recommended
    # 0.5). Only settings for tests may be left out.
    assert {name: value for name, value in values.items() if value != specs[name].default} == {}
    assert {name for name, spec in specs.items() if not spec.description.startswith("testing only")} <= set(values)
