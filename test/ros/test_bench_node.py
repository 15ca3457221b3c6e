"""`vla-ros bench node` runs end to end and prints the JSON it documents (no timing thresholds:
the numbers depend on the machine; the benchmark itself reports them against the targets)."""

from __future__ import annotations

import json
import math

import pytest

from vla_ros.ros import bench_node

pytestmark = [pytest.mark.ros, pytest.mark.slow]

LATENCY_KEYS = ("bare_predict_ms", "observation_to_chunk_ms", "node_inference_ms",
                "receipt_interval_jitter_ms", "node_timer_jitter_ms")


def test_bench_node_prints_finite_latencies_and_jitter(capsys):
    code = bench_node.main(["--seconds", "3", "--settle", "0.5", "--image-size", "48x64", "--predict-repeats", "5"])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["image_hw"] == [48, 64]
    assert result["trajectories_per_s"] > 0
    assert result["diagnostic_states"].get("running", 0) > 0, result["diagnostic_states"]
    for key in LATENCY_KEYS:
        figures = result[key]
        assert math.isfinite(figures["p50_ms"]) and math.isfinite(figures["p99_ms"]), (key, figures)
        assert figures["p99_ms"] >= figures["p50_ms"], (key, figures)
    # Durations are positive; jitter is an absolute deviation; the chunk-latency proxy is
    # tick-quantised and may be slightly negative, so only finiteness is checked for it.
    for key in ("bare_predict_ms", "node_inference_ms"):
        assert result[key]["p50_ms"] > 0, (key, result[key])
    for key in ("receipt_interval_jitter_ms", "node_timer_jitter_ms"):
        assert result[key]["p50_ms"] >= 0, (key, result[key])
    assert result["observation_to_chunk_ms"]["n"] > 0
    assert math.isfinite(result["node_overhead_ms_p50"])
    assert set(result["meets_targets"]) == set(result["targets_ms"])


@pytest.mark.parametrize("argv", [["--seconds", "0"], ["--image-size", "480"], ["--image-size", "8x8"]])
def test_bench_node_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit) as raised:
        bench_node.main(argv)
    assert raised.value.code == 2


def test_bench_node_reports_an_unknown_profile_without_a_traceback(capsys):
    assert bench_node.main(["--profile", "no_such_profile"]) == 2
    assert "no_such_profile" in capsys.readouterr().err
