"""`ros2 launch` cannot run here (launch_ros is not on PyPI), so each launch file is executed with
recording stand-ins for the launch API, and everything it names is checked against the package:
executables, parameter files, parameter names and launch arguments."""

import importlib
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))


class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class LaunchDescription(_Recorded):
    pass


class DeclareLaunchArgument(_Recorded):
    pass


class LaunchConfiguration(_Recorded):
    pass


class PathJoinSubstitution(_Recorded):
    pass


class Node(_Recorded):
    pass


class FindPackageShare(_Recorded):
    pass


def _stub_modules():
    modules = {}
    for name, members in {
        "launch": {"LaunchDescription": LaunchDescription},
        "launch.actions": {"DeclareLaunchArgument": DeclareLaunchArgument},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration, "PathJoinSubstitution": PathJoinSubstitution},
        "launch_ros": {},
        "launch_ros.actions": {"Node": Node},
        "launch_ros.substitutions": {"FindPackageShare": FindPackageShare},
    }.items():
        module = types.ModuleType(name)
        module.__dict__.update(members)
        modules[name] = module
    return modules


def _run_launch_file(path: Path, monkeypatch) -> LaunchDescription:
    for name, module in _stub_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    namespace = {"__name__": "launch_file_under_test"}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace["generate_launch_description"]()


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
    return {spec.name for spec in importlib.import_module(module_name).PARAMETERS}


def test_there_are_launch_files():
    assert {p.name for p in LAUNCH_FILES} >= {"robot.launch.py", "sim.launch.py"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_names_only_what_exists(path, monkeypatch):
    description = _run_launch_file(path, monkeypatch)
    entities = description.args[0]
    declared = {e.args[0] for e in entities if isinstance(e, DeclareLaunchArgument)}
    nodes = [e for e in entities if isinstance(e, Node)]
    assert nodes, "a launch file that starts no node"
    scripts = _console_scripts()
    for node in nodes:
        executable = node.kwargs["executable"]
        assert node.kwargs["package"] == "vla_ros"
        assert executable in scripts, f"{path.name}: executable '{executable}' is not a console script"
        module_name, function = scripts[executable].split(":")
        assert callable(getattr(importlib.import_module(module_name), function))
        known = _node_parameters(executable)
        for entry in node.kwargs.get("parameters", []):
            if isinstance(entry, dict):
                unknown = set(entry) - known
                assert not unknown, f"{path.name}: {executable} has no parameters {unknown}"
            elif isinstance(entry, PathJoinSubstitution):
                assert _share_path(entry).is_file(), f"{path.name}: missing {_share_path(entry)}"
    for item in _walk(entities):
        if isinstance(item, LaunchConfiguration):
            assert item.args[0] in declared, f"{path.name}: LaunchConfiguration('{item.args[0]}') is not declared"
        if isinstance(item, PathJoinSubstitution):
            assert _share_path(item).is_file(), f"{path.name}: missing {_share_path(item)}"


@pytest.mark.parametrize("executable", ["policy_node", "sim_node"])
def test_params_files_use_declared_parameters_with_valid_values(executable):
    module = importlib.import_module(_console_scripts()[executable].split(":")[0])
    specs = {spec.name: spec for spec in module.PARAMETERS}
    data = yaml.safe_load((ROOT / "config" / f"{executable}.yaml").read_text())
    values = data[executable]["ros__parameters"]
    assert set(values) <= set(specs), f"undeclared: {set(values) - set(specs)}"
    for name, value in values.items():
        specs[name].validate(value)
