"""docs/parameters.md, generated from the nodes' PARAMETERS specs, so the reference cannot drift
from what the nodes declare (test/test_param_docs.py compares the committed file with this output).

Regenerate: make docs  (or: python -m vla_ros.ros.param_docs --output docs/parameters.md)
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

import vla_ros.ros
from vla_ros.ros.params import ParamSpec

TYPE_NAMES = {bool: "bool", int: "int", float: "double", str: "string"}
HEADER = """# Node parameters

Generated from the nodes' parameter specs (`PARAMETERS` in vla_ros/ros/<node>.py) by `make docs`;
do not edit by hand. Set them with `--ros-args -p name:=value`, a params file
(`--params-file config/<node>.yaml`), or a launch file. `ros2 param describe <node> <name>` prints
the same description on a running node. A value of the wrong type or out of range stops the node
with a message naming the parameter.
"""


def node_modules() -> list[ModuleType]:
    """Every module of vla_ros.ros that declares node parameters, in name order."""
    modules = []
    for info in sorted(pkgutil.iter_modules(vla_ros.ros.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"vla_ros.ros.{info.name}")
        specs = getattr(module, "PARAMETERS", None)
        if specs and all(isinstance(spec, ParamSpec) for spec in specs):
            modules.append(module)
    return modules


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(spec: ParamSpec) -> str:
    if isinstance(spec.default, bool):
        return f"`{str(spec.default).lower()}`"
    return f"`{spec.default}`" if spec.default != "" else "`''`"


def _allowed(spec: ParamSpec) -> str:
    if spec.choices:
        return ", ".join(f"`{choice}`" for choice in spec.choices)
    if spec.minimum is not None or spec.maximum is not None:
        low = "" if spec.minimum is None else f"{spec.minimum:g} <= "
        high = "" if spec.maximum is None else f" <= {spec.maximum:g}"
        return f"{low}value{high}"
    return ""


def render_node(module: ModuleType) -> str:
    name = module.__name__.rsplit(".", 1)[1]
    summary = (module.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    lines = [f"## {name}", "", summary, "", "| parameter | type | default | allowed | description |",
             "|---|---|---|---|---|"]
    for spec in module.PARAMETERS:
        lines.append(f"| `{spec.name}` | {TYPE_NAMES[type(spec.default)]} | {_cell(_default(spec))} | "
                     f"{_cell(_allowed(spec))} | {_cell(spec.description)} |")
    return "\n".join(lines) + "\n"


def render() -> str:
    return "\n".join([HEADER, *(render_node(module) for module in node_modules())])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the node parameter reference (Markdown).")
    parser.add_argument("--output", type=Path, help="file to write; default: standard output")
    args = parser.parse_args(argv)
    text = render()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
