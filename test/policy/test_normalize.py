"""Quantile normalisation (issue 19, item 4): [q01, q99] -> [-1, 1] as openpi does, exact
percentiles stored with the checkpoint, older statistics still loading."""

import json

import numpy as np
import pytest
import torch

from vla_ros.policy.normalize import Normalizer, NormStats, StatsError


def test_quantile_mode_maps_the_1st_and_99th_percentiles_to_plus_minus_one():
    rng = np.random.default_rng(0)
    states = rng.normal(0, 1, (1000, 3))
    actions = np.concatenate([rng.normal(2, 0.5, (999, 2)), [[500.0, -500.0]]])  # one wild outlier
    stats = NormStats.from_arrays(states, actions, mode="quantile", eps=1e-6)
    np.testing.assert_array_equal(stats.action["q01"], np.quantile(actions, 0.01, axis=0))
    np.testing.assert_array_equal(stats.action["q99"], np.quantile(actions, 0.99, axis=0))
    normalizer = Normalizer(stats)
    ends = torch.tensor(np.stack([stats.action["q01"], stats.action["q99"]]), dtype=torch.float32)
    torch.testing.assert_close(normalizer.normalize_action(ends), torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    torch.testing.assert_close(normalizer.denormalize_action(normalizer.normalize_action(ends)), ends)
    # the outlier squeezes min_max, not quantile: the bulk keeps its spread
    bulk = torch.tensor(actions[:999], dtype=torch.float32)
    spread = {mode: Normalizer(NormStats.from_arrays(states, actions, mode=mode)).normalize_action(bulk).std(0)
              for mode in ("min_max", "quantile")}
    assert (spread["quantile"] > 50 * spread["min_max"]).all()
    again = NormStats.from_json(json.loads(json.dumps(stats.to_json())))
    np.testing.assert_array_equal(again.state["q99"], stats.state["q99"])


def test_statistics_without_quantiles_load_but_cannot_serve_quantile_mode():
    stats = NormStats.from_arrays(np.eye(3), np.eye(3))
    old = stats.to_json()
    for part in ("state", "action"):
        for key in ("q01", "q99"):
            del old[part][key]
    assert NormStats.from_json(old).mode == "mean_std"
    with pytest.raises(StatsError, match="quantile normalisation needs q01 and q99"):
        NormStats.from_json({**old, "mode": "quantile"})


def test_training_with_quantile_normalisation(tmp_path):
    from test_finetune import TASK, train, write_config, write_dataset

    from vla_ros.policy.runtime import PolicyRuntime

    dataset = write_dataset(tmp_path / "ds", episodes=2, frames=12)
    config = write_config(tmp_path / "c.yaml", model={"normalization": "quantile"}, data={"held_out_episodes": 0},
                          train={"batch_size": 2})
    assert train(dataset, tmp_path / "run", "--config", config, "--steps", "1") == 0
    runtime = PolicyRuntime(tmp_path / "run" / "policy", deterministic=True)
    assert runtime.config.normalization == "quantile"
    stats = json.loads((tmp_path / "run" / "policy" / "stats.json").read_text())
    assert stats["mode"] == "quantile" and len(stats["action"]["q99"]) == 14
    runtime.set_instruction(TASK)
    assert np.isfinite(runtime.predict({"cam_high": np.zeros((32, 32, 3), np.uint8)},
                                       np.zeros(14))).all()
