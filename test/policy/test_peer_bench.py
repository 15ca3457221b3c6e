"""`vla-ros bench peer`: the driver's side of the SmolVLA comparison.

The real peer needs `make peer-venv` (LeRobot 0.4.4 with transformers < 5); these tests drive a
stand-in worker that speaks the same protocol, and the real worker only where that interpreter
exists.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from vla_ros.policy import peer_bench

PEER_PYTHON = Path(".venv-peer/bin/python")


def _stand_in(tmp_path: Path, body: str) -> Path:
    """A worker script that records its arguments and runs `body` as its protocol loop."""
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""\
        import json, sys
        json.dump(sys.argv[1:], open({str(tmp_path / 'argv.json')!r}, "w"))
        """) + textwrap.dedent(body))
    return script


def test_the_driver_times_both_sides_in_turn_and_gives_the_peer_the_same_vlm(tmp_path):
    calls = tmp_path / "calls.txt"
    worker = _stand_in(tmp_path, f"""\
        print("ready " + json.dumps({{"parameters": 1}}), flush=True)
        for line in sys.stdin:
            if line.startswith("quit"):
                break
            open({str(calls)!r}, "a").write(line)
            print("done", flush=True)
        """)
    report = peer_bench.run(sys.executable, preset="tiny-smolvlm2", lm_layers=2, threads=1, warmup=1, repeats=2,
                            worker=worker)
    # one warm-up and two timed calls of each kind, alternating 1 and 10 steps
    assert calls.read_text().split("\n")[:-1] == ["call 1"] * 1 + ["call 10"] * 1 + ["call 1", "call 10"] * 2
    argv = json.loads((tmp_path / "argv.json").read_text())
    dims = json.loads(argv[argv.index("--dims") + 1])
    assert dims == report["vlm_dimensions"]
    assert dims["text"]["num_hidden_layers"] == 3 and dims["vision"]["image_size"] == 32  # the preset's own
    assert argv[argv.index("--num-vlm-layers") + 1] == "2"
    assert int(argv[argv.index("--text-tokens") + 1]) == report["instruction_tokens"] > 1
    for side, kinds in (("vla_ros", ("prefix_only", "steps_1", "steps_10")), ("smolvla", ("steps_1", "steps_10"))):
        for kind in kinds:
            assert report[side][kind]["n"] == 2 and report[side][kind]["p50_ms"] > 0
    ratios = report["ratios"]
    assert ratios["smolvla_default_over_vla_ros_one_step"] == round(
        report["smolvla"]["steps_10"]["p50_ms"] / report["vla_ros"]["steps_1"]["p50_ms"], 3)
    assert report["vla_ros"]["horizon"] == 50  # SmolVLA's chunk size
    assert report["vla_ros"]["head_dtype"] == report["dtype"] == "float32"


def test_the_head_can_stay_float32_beside_a_bfloat16_vlm_as_smolvlas_expert_does(tmp_path):
    worker = _stand_in(tmp_path, """\
        print("ready " + json.dumps({"parameters": 1}), flush=True)
        for line in sys.stdin:
            if line.startswith("quit"):
                break
            print("done", flush=True)
        """)
    report = peer_bench.run(sys.executable, preset="tiny-smolvlm2", lm_layers=2, threads=1, dtype="bfloat16",
                            warmup=0, repeats=1, worker=worker, head_float32=True)
    assert report["dtype"] == "bfloat16" and report["vla_ros"]["head_dtype"] == "float32"
    assert report["vla_ros"]["steps_1"]["n"] == 1  # the float32 head decodes from the bfloat16 prefix


def test_a_worker_that_dies_is_a_clear_error_naming_its_last_words(tmp_path):
    worker = _stand_in(tmp_path, """\
        print("ImportError: no module named lerobot", file=sys.stderr)
        sys.exit(1)
        """)
    with pytest.raises(peer_bench.PeerError, match="exited with 1 before 'ready': ImportError: no module named lerobot"):
        peer_bench.run(sys.executable, preset="tiny-smolvlm2", lm_layers=2, threads=1, warmup=0, repeats=1,
                       worker=worker)


def test_without_the_peer_interpreter_the_command_says_how_to_build_it(tmp_path, capsys):
    assert peer_bench.main(["--peer-python", str(tmp_path / "missing" / "python"), "--preset", "tiny-smolvlm2",
                            "--language-layers", "2"]) == 2
    error = capsys.readouterr().err
    assert "make peer-venv" in error and "Traceback" not in error and len(error.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(not PEER_PYTHON.exists(), reason="no peer interpreter: `make peer-venv`")
def test_the_real_smolvla_worker_answers_with_the_same_vlm():
    report = peer_bench.run(str(PEER_PYTHON), preset="tiny-smolvlm2", lm_layers=2, threads=1, warmup=0, repeats=1)
    assert report["smolvla"]["lerobot"] == "0.4.4" and report["smolvla"]["num_vlm_layers"] == 2
    assert report["smolvla"]["chunk_size"] == 50 and report["smolvla"]["steps_10"]["n"] == 1
