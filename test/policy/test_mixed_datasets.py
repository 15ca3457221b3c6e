"""Several datasets mixed with weights in one `vla-ros train` run (issue 19, item 4): the CLI and
YAML forms, draws in proportion to the weights, the mixture's statistics, mismatch errors."""

import argparse
import json

import numpy as np
import pytest

from test_finetune import PROFILE, train, write_config, write_dataset
from vla_ros.data.lerobot import LeRobotDataset
from vla_ros.policy import finetune
from vla_ros.policy.checkpoint import load_checkpoint
from vla_ros.policy.evaluate import evaluate
from vla_ros.policy.normalize import mixture_stats


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two datasets of different sizes and tasks: 'big' (6 episodes) and 'small' (2)."""
    root = tmp_path_factory.mktemp("mix")
    return (write_dataset(root / "big", episodes=6, frames=16, seed=1, task="big task"),
            write_dataset(root / "small", episodes=2, frames=16, seed=2, task="small task"))


def _prepared(paths, weights, model=None, **data):
    config = finetune.load_train_config("tiny")
    config["data"].update(held_out_episodes=0, **data)
    config["model"].update(model or {})
    args = argparse.Namespace(dataset=[str(p) for p in paths] if paths else None, dataset_weight=weights,
                              init=None, profile_given=False)
    return finetune.Prepared(args, config)


def test_mixed_training_batches_come_from_each_dataset_in_proportion_to_its_weight(pair):
    """small holds 1/4 of the frames but weighs 0.7: a size-proportional draw would give 0.25."""
    prepared = _prepared(pair, [0.3, 0.7])
    assert prepared.samples.num_frames == 8 * 16
    tasks = [t for step in range(50) for t in prepared.samples.batch_for_step(step, 16, seed=0)["instruction"]]
    share = tasks.count("small task") / len(tasks)
    # 800 draws: the binomial standard deviation is 0.016, so 0.05 is three of them
    assert abs(share - 0.7) < 0.05, share
    assert set(tasks) == {"big task", "small task"}


def test_mixture_statistics_weigh_each_dataset_by_its_weight_not_its_size(pair):
    prepared = _prepared(pair, [1, 3])
    big, small = (np.concatenate([LeRobotDataset(p).episode(i).state for i in range(n)])
                  for p, n in zip(pair, (6, 2)))
    stats = prepared.policy.stats
    np.testing.assert_allclose(stats.state["mean"], 0.25 * big.mean(0) + 0.75 * small.mean(0), atol=1e-6)
    second_moment = 0.25 * (big.astype(np.float64) ** 2).mean(0) + 0.75 * (small.astype(np.float64) ** 2).mean(0)
    np.testing.assert_allclose(stats.state["std"], np.sqrt(second_moment - stats.state["mean"] ** 2), atol=1e-6)
    np.testing.assert_allclose(stats.state["min"], np.minimum(big.min(0), small.min(0)))
    assert "(weight 3)" in stats.extra["source"] and len(stats.extra["datasets"]) == 2


def test_delta_action_statistics_of_a_mixture_weigh_each_dataset_by_its_weight(pair):
    prepared = _prepared(pair, [1, 3], model={"delta_actions": True})
    policy = prepared.policy
    parts = prepared.samples.parts
    offsets = [part.delta_targets(policy.delta_source.tolist(), policy.delta_mask.tolist()).astype(np.float64)
               for part in parts]
    per_episode = sum(min(10, 16 - t) for t in range(16))  # horizon 10, 16 frames: chunks end with the episode
    assert [len(o) for o in offsets] == [6 * per_episode, 2 * per_episode]
    np.testing.assert_allclose(policy.stats.action["mean"], 0.25 * offsets[0].mean(0) + 0.75 * offsets[1].mean(0),
                               atol=1e-6)
    assert policy.config.delta_actions and policy.stats.extra["action_targets"].startswith("offsets")


def test_weighted_quantiles_are_those_of_the_mixture():
    """Parts [0..99] (weight 0.4) and [1000] (weight 0.6): each of 0..99 is drawn with probability
    0.004, so the 1% quantile is 2 (0.004 x 3 >= 0.01) and the 99% one is 1000."""
    stats = mixture_stats([np.arange(100.0)[:, None], np.array([[1000.0]])], [0.4, 0.6], "x")
    assert stats["q01"].tolist() == [2.0] and stats["q99"].tolist() == [1000.0]
    assert stats["mean"][0] == pytest.approx(0.4 * 49.5 + 0.6 * 1000.0)
    assert stats["min"].tolist() == [0.0] and stats["max"].tolist() == [1000.0]
    alone = mixture_stats([np.arange(100.0)[:, None]], [1.0], "x")  # one part: numpy's own quantiles
    assert alone["q01"].tolist() == [np.quantile(np.arange(100.0), 0.01)]


def test_one_training_step_on_two_datasets_from_the_yaml_records_each_split(pair, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", data={
        "datasets": [{"path": str(pair[0]), "weight": 0.7}, {"path": str(pair[1]), "weight": 0.3}],
        "held_out_episodes": 1}, train={"batch_size": 4})
    assert finetune.main(["--output", str(tmp_path / "run"), "--config", config, "--steps", "1",
                          "--threads", "1", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 1
    training = load_checkpoint(tmp_path / "run" / "policy", profile=PROFILE).config.extra["training"]
    entries = training["datasets"]
    assert [e["weight"] for e in entries] == [0.7, 0.3]
    assert [len(e["held_out_episodes"]) for e in entries] == [1, 1]
    assert [len(e["train_episodes"]) for e in entries] == [5, 1]
    assert training["instructions"] == ["big task", "small task"]
    # `vla-ros eval` on the second dataset finds that dataset's own held-out episode
    report = evaluate(pair[1], tmp_path / "run" / "policy", [1])
    assert report["episodes"] == entries[1]["held_out_episodes"]


def test_cli_mixing_flags(pair, tmp_path, capsys):
    assert train(pair[0], tmp_path / "run", "--dataset", str(pair[1]), "--dataset-weight", "2",
                 "--dataset-weight", "1", "--steps", "1", "--batch-size", "2") == 0
    entries = load_checkpoint(tmp_path / "run" / "policy").config.extra["training"]["datasets"]
    assert [(e["path"], e["weight"]) for e in entries] == [(str(pair[0].resolve()), 2.0),
                                                          (str(pair[1].resolve()), 1.0)]
    capsys.readouterr()
    for extra, message in (
            (["--dataset", str(pair[1]), "--dataset-weight", "1"], "--dataset-weight given 1 times for 2 --dataset"),
            (["--dataset", str(pair[1]), "--dataset-weight", "1", "--dataset-weight", "-1"], "positive number"),
            (["--dataset", str(pair[0])], "listed twice")):
        assert train(pair[0], tmp_path / "bad", *extra, "--steps", "1") == 1
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1, error
        assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("kind, message", [
    ("names", "mixed datasets disagree on observation.state names"),
    ("fps", "mixed datasets disagree on fps"),
    ("size", "different sizes"),
])
def test_datasets_that_do_not_agree_are_refused_in_one_line(pair, tmp_path, capsys, kind, message):
    if kind == "names":
        names = list(PROFILE.vector_names)
        names[1], names[2] = names[2], names[1]
        other = write_dataset(tmp_path / "other", episodes=1, frames=8, names=names)
    elif kind == "fps":
        other = write_dataset(tmp_path / "other", episodes=1, frames=8, fps=30)
    else:  # padded to the model's square input, 1:2 frames fit at another size than square ones
        other = write_dataset(tmp_path / "other", episodes=1, frames=8, size=(32, 64))
    config = write_config(tmp_path / "c.yaml", model={"image_fit": "pad"})
    capsys.readouterr()
    assert train(pair[0], tmp_path / "run", "--dataset", str(other), "--config", config, "--steps", "1") == 1
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1, error
    assert str(other) in error or kind == "size"
    assert not (tmp_path / "run").exists()


def test_without_any_dataset_the_error_says_how_to_give_one(tmp_path, capsys):
    assert finetune.main(["--output", str(tmp_path / "run"), "--steps", "1"]) == 1
    assert "no dataset: give --dataset DIR" in capsys.readouterr().err
