"""`vla-ros eval`: offline action error on held-out episodes, report structure and consistency."""

import json

import numpy as np
import pytest
import yaml

from test_finetune import write_dataset  # the recorder-format synthetic dataset
from vla_ros.policy import evaluate, finetune
from vla_ros.policy.checkpoint import build_random_policy, save_checkpoint
from vla_ros.robot.profile import load_profile

FRAMES = 24


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(dataset, checkpoint) from a short run that held one of three episodes out."""
    root = tmp_path_factory.mktemp("eval")
    dataset = write_dataset(root / "ds", episodes=3, frames=FRAMES)
    config = root / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"held_out_episodes": 1}, "train": {"batch_size": 4}}))
    assert finetune.main(["--dataset", str(dataset), "--output", str(root / "run"), "--config", str(config),
                          "--steps", "2", "--threads", "1", "--quiet"]) == 0
    return dataset, root / "run" / "policy"


def run_eval(dataset, checkpoint, report, *extra):
    return evaluate.main(["--dataset", str(dataset), "--checkpoint", str(checkpoint), "--report", str(report),
                          *extra])


def test_report_covers_the_held_out_episodes_per_joint_and_horizon_step(trained, tmp_path, capsys):
    dataset, checkpoint = trained
    assert run_eval(dataset, checkpoint, tmp_path / "r.json", "--steps", "1,10") == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((tmp_path / "r.json").read_text())
    held_out = json.loads((checkpoint / "config.json").read_text())["extra"]["training"]["held_out_episodes"]
    assert report["episodes"] == held_out and report["episodes_seen_in_training"] == []
    assert report["frames"] == FRAMES and report["horizon"] == 10 and len(report["joint_names"]) == 14
    # the last frames' chunks run past the episode end: fewer targets at later horizon steps
    assert report["targets_per_horizon_step"] == [FRAMES - h for h in range(10)]
    assert set(report["steps"]) == {"1", "10"}
    counts = np.array(report["targets_per_horizon_step"])
    for steps, result in report["steps"].items():
        assert printed[f"mae_{steps}_steps"] == result["mae"]
        per_joint, per_step = np.array(result["mae_per_joint"]), np.array(result["mae_per_horizon_step"])
        assert per_joint.shape == (14,) and per_step.shape == (10,)
        assert np.isfinite(per_joint).all() and (per_joint >= 0).all()
        # every summary is the same set of errors averaged a different way
        assert per_joint.mean() == pytest.approx(result["mae"], rel=1e-9)
        assert np.average(per_step, weights=counts) == pytest.approx(result["mae"], rel=1e-9)
        assert result["rmse"] >= result["mae"]
        assert np.sqrt(np.mean(np.square(result["rmse_per_joint"]))) == pytest.approx(result["rmse"], rel=1e-9)
    assert report["steps"]["1"]["mae"] != report["steps"]["10"]["mae"]
    png = (tmp_path / "r.png").read_bytes()
    assert png.startswith(b"\x89PNG") and report["plot"] == str(tmp_path / "r.png")


def test_report_is_reproducible_for_a_seed_and_stride(trained, tmp_path):
    dataset, checkpoint = trained
    reports = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert run_eval(dataset, checkpoint, tmp_path / f"{name}.json", "--steps", "1", "--episodes", "0,2",
                        "--stride", "4", "--seed", str(seed)) == 0
        reports.append(json.loads((tmp_path / f"{name}.json").read_text()))
    assert reports[0]["frames"] == 2 * FRAMES // 4
    assert reports[0]["steps"] == reports[1]["steps"]
    assert reports[0]["steps"]["1"]["mae"] != reports[2]["steps"]["1"]["mae"]


def test_bad_requests_are_clear_errors(trained, tmp_path, capsys):
    dataset, checkpoint = trained
    assert run_eval(dataset, checkpoint, tmp_path / "r.json", "--episodes", "7") == 1
    assert "not in the dataset" in capsys.readouterr().err
    assert run_eval(dataset, checkpoint, tmp_path / "r.json", "--steps", "0") == 1
    assert "step counts must be >= 1" in capsys.readouterr().err
    untrained = tmp_path / "untrained"
    save_checkpoint(build_random_policy("tiny", load_profile("aloha_sim")), untrained)
    assert run_eval(dataset, untrained, tmp_path / "r.json") == 1
    assert "no held-out episodes" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()

