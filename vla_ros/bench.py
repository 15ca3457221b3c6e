"""`vla-ros bench NAME`: every performance target is checked by a benchmark that prints JSON.

Benchmarks live beside the code they measure; this module only names them. `vla-ros bench all`
runs each in turn with its defaults (all but `peer`) and prints one JSON object keyed by name.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys

BENCHMARKS: dict[str, tuple[str, str]] = {
    "policy": ("vla_ros.policy.bench:main", "predict latency, 1 vs 10 steps, per camera count"),
    "control": ("vla_ros.control.bench:main", "per-tick cost of gating + chunk executor + safety"),
    "sim": ("vla_ros.ros.bench_sim:main", "sim_node publish rates and image latency between processes"),
    "node": ("vla_ros.ros.bench_node:main", "policy_node end-to-end latency and timer jitter"),
    "record": ("vla_ros.data.bench_record:main", "recording throughput: dropped frames, save time"),
    "replay": ("vla_ros.bench_replay:main", "bag replay throughput relative to real time"),
    "train": ("vla_ros.policy.bench_train:main", "training samples per second"),
    "memory": ("vla_ros.policy.bench_memory:main", "parameters and optimiser/EMA bytes per way of training (meta)"),
    "peer": ("vla_ros.policy.peer_bench:main", "against LeRobot's SmolVLA, same VLM, calls in turn (make peer-venv)"),
}


# Not run by `all`: it needs the separate interpreter `make peer-venv` builds.
NOT_IN_ALL = {"peer"}


def _run(name: str, argv: list[str]) -> int:
    module_name, function_name = BENCHMARKS[name][0].split(":")
    return int(getattr(importlib.import_module(module_name), function_name)(argv) or 0)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: vla-ros bench NAME [ARGS...] | all\n")
        for name, (_, text) in BENCHMARKS.items():
            print(f"  {name:8s} {text}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "all":
        results, status = {}, 0
        for each in (benchmark for benchmark in BENCHMARKS if benchmark not in NOT_IN_ALL):
            captured = io.StringIO()
            with contextlib.redirect_stdout(captured):
                code = _run(each, [])
            status = status or code
            try:
                results[each] = json.loads(captured.getvalue())
            except json.JSONDecodeError:
                results[each] = {"error": f"exit {code}", "output": captured.getvalue()[-2000:]}
        print(json.dumps(results, indent=2))
        return status
    if name not in BENCHMARKS:
        print(f"vla-ros bench: unknown benchmark '{name}' (one of: {', '.join(BENCHMARKS)}, all)", file=sys.stderr)
        return 2
    return _run(name, rest)
