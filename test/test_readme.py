"""The README is the operator's reference: it must start with the two commands and document every
parameter every node declares (a new parameter without documentation fails here)."""

import importlib
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
NODES = ["policy_node", "sim_node", "recorder_node", "scripted_leader", "bag_player"]


def test_readme_starts_with_the_two_commands():
    first_block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()[1:]]
    assert commands == ["make demo", "make test"]


@pytest.mark.parametrize("node", NODES)
def test_every_declared_parameter_is_documented(node):
    module = importlib.import_module(f"vla_ros.ros.{node}")
    section = README.split(f"#### {node} parameters")[1].split("####")[0]
    missing = [p.name for p in module.PARAMETERS if f"| `{p.name}` |" not in section]
    assert not missing, f"README does not document {node} parameters {missing}"
