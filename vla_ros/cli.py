"""`vla-ros`: one command that wires the layers together (train, eval, replay, bench, demo, ...).

Each subcommand lives in the module that owns the work, as `main(argv) -> int`; this file only
dispatches, so that `vla-ros --help` stays fast (nothing heavy is imported until it is needed).
"""

from __future__ import annotations

import importlib
import os
import sys

# subcommand -> ("module:function", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("vla_ros.ros.demo:main", "run the policy node on the simulated ALOHA through ROS topics"),
    "init-checkpoint": ("vla_ros.policy.checkpoint:init_checkpoint_main", "create a randomly initialised checkpoint"),
    "train": ("vla_ros.policy.finetune:main", "fine-tune the one-step policy on a LeRobot v3 dataset"),
    "eval": ("vla_ros.policy.evaluate:main", "offline action error of a checkpoint on held-out episodes"),
    "toy": ("vla_ros.policy.toy:main", "the paper's controlled experiment: 1 vs 10 steps by time distribution"),
    "convert": ("vla_ros.data.convert:main", "convert a ROS 2 bag into a LeRobot v3 dataset"),
    "replay": ("vla_ros.replay:main", "evaluate a checkpoint offline on a ROS 2 bag"),
    "collect-sim": ("vla_ros.sim.collect:main", "record scripted simulated demonstrations"),
    "sim-eval": ("vla_ros.ros.sim_eval:main", "closed-loop success rate in simulation, through ROS"),
    "rollout": ("vla_ros.policy.rollout:main", "closed-loop episodes in process (no ROS): success, smoothness, "
                "safety interventions"),
    "bench": ("vla_ros.bench:main", "benchmarks that print JSON (policy, control, sim, node, ..., train, memory)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: vla-ros COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`vla-ros COMMAND --help` for the options of a command."]
    return "\n".join(lines)


def _prepare_environment() -> None:
    """Defaults every vla-ros process needs: no hub lookups (models load from local directories)
    and DDS discovery on this machine only unless the user chose otherwise."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vla-ros: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    _prepare_environment()
    module_name, function_name = COMMANDS[name][0].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    return int(function(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
