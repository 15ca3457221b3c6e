"""Launch arguments, checked before any process starts.

`ros2 launch` hands every argument over as a string, and launch_ros reads parameter strings as
YAML (instruction:=yes would arrive as a bool). The launch files turn each argument into its final
type here; a bad value raises LaunchArgumentError, whose message is the single line `ros2 launch`
prints ("Caught exception in launch ...: <message>"). No launch or rclpy import: the launch
files call these functions, and the tests call them without a ROS installation.
"""

from __future__ import annotations

import re
from pathlib import Path

from vla_ros.robot.profile import ProfileError, load_profile

BOOLEANS = {"true": True, "false": False}
_TOPIC = re.compile(r"^(~/|/)?[A-Za-z_]\w*(/[A-Za-z_]\w*)*$")
_NAMESPACE = re.compile(r"^/?[A-Za-z_]\w*(/[A-Za-z_]\w*)*$")


class LaunchArgumentError(ValueError):
    """A launch argument with a value the nodes cannot use."""

    def __init__(self, name: str, value: str, problem: str):
        super().__init__(f"launch argument {name}:='{value}': {problem}")


def boolean(name: str, value: str) -> bool:
    """'true' or 'false' (any case) -> bool."""
    try:
        return BOOLEANS[value.strip().lower()]
    except KeyError:
        raise LaunchArgumentError(name, value, "must be true or false") from None


def namespace(value: str) -> str:
    """'' (none), 'left' or '/robot1/left': a ROS namespace for the nodes."""
    text = value.strip()
    if text and not _NAMESPACE.match(text):
        raise LaunchArgumentError("namespace", value, "not a ROS namespace (letters, digits, _ and /)")
    return text


def remappings(value: str) -> list[tuple[str, str]]:
    """'from:=to from2:=to2' (separated by spaces or commas) -> [(from, to), ...]."""
    pairs = []
    for rule in re.split(r"[\s,]+", value.strip()):
        if not rule:
            continue
        source, separator, target = rule.partition(":=")
        if not separator or not _TOPIC.match(source) or not _TOPIC.match(target):
            raise LaunchArgumentError("remap", value, f"'{rule}' is not a rule FROM:=TO between two topic names")
        pairs.append((source, target))
    return pairs


def profile(value: str) -> str:
    """A robot profile that loads (a bundled name or a YAML path), returned unchanged."""
    try:
        load_profile(value)
    except ProfileError as exc:
        raise LaunchArgumentError("profile", value, str(exc)) from None
    return value


def checkpoint(value: str) -> str:
    """An existing checkpoint directory, returned unchanged."""
    if not value.strip():
        raise LaunchArgumentError("checkpoint", value, "required: the policy checkpoint directory")
    if not Path(value).expanduser().is_dir():
        raise LaunchArgumentError("checkpoint", value, "no such directory")
    return value

