"""Typed, described ROS parameters declared from a spec and read back validated.

Every node declares its parameters through :func:`declare_parameters`, so that `ros2 param
describe` documents them and a bad value stops the node with a message naming the parameter,
instead of failing later somewhere else. At run time (`ros2 param set`) a parameter is either
read-only (the change is refused, with the reason) or ``live``: validated like at start-up and
handed to the node's ``on_change``, which applies it at once or refuses it with a reason. Parameters are declared with dynamic typing and
checked here, because rclpy rejects e.g. ``rate:=50`` for a float parameter with an unhelpful
type error; an int given for a float is accepted. Only rclpy API common to Humble..Kilted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult


class ParameterError(ValueError):
    """A node parameter has a bad value."""


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its name, default (whose type is the parameter's type) and description.

    ``choices`` restricts strings; ``minimum``/``maximum`` bound numbers (inclusive); ``live``
    parameters can be changed while the node runs."""

    name: str
    default: bool | int | float | str
    description: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    live: bool = False

    def describe(self) -> str:
        text = self.description
        if not self.live:
            text += " [read-only at run time]"
        if self.choices:
            text += f" (one of: {', '.join(self.choices)})"
        if self.minimum is not None or self.maximum is not None:
            text += f" (range: [{self.minimum}, {self.maximum}])"
        return text

    def validate(self, value: Any) -> bool | int | float | str:
        """``value`` converted to the default's type, or ParameterError naming the parameter."""
        kind = type(self.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise ParameterError(
                f"parameter '{self.name}' must be a {kind.__name__}, got {value!r} ({type(value).__name__})"
            )
        if kind is float and not math.isfinite(value):
            raise ParameterError(f"parameter '{self.name}' must be finite, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ParameterError(f"parameter '{self.name}' must be one of {list(self.choices)}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ParameterError(f"parameter '{self.name}' must be >= {self.minimum}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ParameterError(f"parameter '{self.name}' must be <= {self.maximum}, got {value!r}")
        return value


def declare_parameters(node, specs: Sequence[ParamSpec],
                       on_change: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any]:
    """Declare every spec on ``node`` and return ``{name: validated value}``. Later changes are
    refused for read-only parameters and for every parameter when ``on_change`` is None; live
    ones are validated and passed to ``on_change({name: value})``, which returns None (applied)
    or the reason it refuses them."""
    values = {}
    for spec in specs:
        descriptor = ParameterDescriptor(description=spec.describe(), dynamic_typing=True)
        node.declare_parameter(spec.name, spec.default, descriptor)
        values[spec.name] = spec.validate(node.get_parameter(spec.name).value)
    by_name = {spec.name: spec for spec in specs}
    unknown = unknown_overrides(node)
    if unknown:
        node.get_logger().warning(f"ignoring parameters this node does not have: {', '.join(unknown)} "
                                  f"(misspelt? `ros2 param list {node.get_fully_qualified_name()}` lists its own)")

    def check(parameters) -> SetParametersResult:
        changes = {}
        for parameter in parameters:
            spec = by_name.get(parameter.name)
            if spec is None:
                continue  # rclpy's own (use_sim_time, ...)
            if not spec.live or on_change is None:
                return SetParametersResult(successful=False, reason=f"parameter '{spec.name}' is read-only "
                                                                    f"while the node runs: restart it to change it")
            try:
                changes[spec.name] = spec.validate(parameter.value)
            except ParameterError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        refusal = on_change(changes) if changes else None
        if refusal:
            return SetParametersResult(successful=False, reason=refusal)
        values.update(changes)
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(check)
    return values


def unknown_overrides(node) -> list[str]:
    """Names given to the node (command line, launch, parameter files) that it never declared.
    rclpy ignores them silently, so a misspelt ``noise_corelation:=16.0`` would leave the default in
    force. QoS overrides are rclpy's own. Reads rclpy's override table (the same attribute on
    Humble, Jazzy and Kilted); an rclpy without it yields nothing rather than a failure."""
    overrides = getattr(node, "_parameter_overrides", None) or {}
    return sorted(name for name in overrides
                  if not node.has_parameter(name) and not name.startswith("qos_overrides."))
