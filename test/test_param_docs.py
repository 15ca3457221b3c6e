"""docs/parameters.md is exactly what vla_ros.ros.param_docs generates from the nodes' specs, and
the generator covers every node executable. A parameter added to a node without `make docs`
fails here."""

import importlib
import re
from pathlib import Path

from vla_ros.ros import param_docs

ROOT = Path(__file__).resolve().parents[1]


def test_committed_reference_equals_the_generated_one():
    committed = (ROOT / "docs" / "parameters.md").read_text()
    assert committed == param_docs.render(), "docs/parameters.md is out of date: run make docs"


def test_every_node_executable_and_parameter_is_documented():
    documented = {module.__name__ for module in param_docs.node_modules()}
    scripts = re.findall(r'"[\w-]+ = (vla_ros\.ros\.\w+):main"', (ROOT / "setup.py").read_text())
    nodes = {name for name in scripts if hasattr(importlib.import_module(name), "PARAMETERS")}
    assert {"vla_ros.ros.policy_node", "vla_ros.ros.sim_node"} <= nodes <= documented
    text = param_docs.render()
    for module in param_docs.node_modules():
        section = text.split(f"## {module.__name__.rsplit('.', 1)[1]}\n")[1].split("\n## ")[0]
        for spec in module.PARAMETERS:
            assert f"| `{spec.name}` |" in section, f"{module.__name__}: {spec.name} missing"


def test_table_cells_escape_pipes():
    spec = param_docs.ParamSpec("mode", "a", "a | b", choices=("a", "b"))
    module = type(importlib)("vla_ros.ros.fake_node", "fake_node: a node.")
    module.PARAMETERS = (spec,)
    row = param_docs.render_node(module).splitlines()[-1]
    assert row == "| `mode` | string | `a` | `a`, `b` | a \\| b |"
