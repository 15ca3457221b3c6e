"""The glyph-grid toy: task construction, decoding, and a --quick end-to-end run."""

import json

import pytest
import torch

from vla_ros.policy import toy


def test_task_images_and_targets_agree():
    task = toy.GlyphTask.create(num_glyphs=5, code_dim=3, pixel_noise=0.0, seed=1)
    batch = task.sample(4, torch.Generator().manual_seed(0))
    assert batch["images"].shape == (4, 1, 32, 32)
    assert batch["ids"].shape == (4, 16) and batch["actions"].shape == (4, 16, 3)
    # Row order: id k sits in grid row k // 4, column k % 4.
    cell = batch["images"][2, 0, 8:16, 24:32] + 0.5
    torch.testing.assert_close(cell, task.glyphs[batch["ids"][2, 7]])
    torch.testing.assert_close(task.decode(batch["actions"]), batch["ids"], rtol=0, atol=0)
    torch.testing.assert_close(task.decode(batch["actions"] + 0.01), batch["ids"], rtol=0, atol=0)


def test_task_rejects_bad_settings():
    with pytest.raises(ValueError, match="glyphs"):
        toy.GlyphTask.create(num_glyphs=1, code_dim=2, pixel_noise=0.1, seed=0)
    with pytest.raises(ValueError, match="pixel_noise"):
        toy.GlyphTask.create(num_glyphs=4, code_dim=2, pixel_noise=-1.0, seed=0)


def test_decoders_add_the_alpha_matched_grid_for_multi_step_only():
    assert toy.decoders([1, 10], 1.0) == {"1": (1, 1.0), "10": (10, 1.0)}
    assert toy.decoders([1, 10], 8.0) == {"1": (1, 1.0), "10": (10, 1.0), "10@alpha": (10, 8.0)}


def test_draws_share_one_condition_and_zero_time_draws_sit_at_t0():
    task = toy.GlyphTask.create(num_glyphs=4, code_dim=2, pixel_noise=0.1, seed=0)
    batch = task.sample(5, torch.Generator().manual_seed(0))
    head = dict(width=16, depth=1, heads=2, mlp_dim=32)
    model = toy.GlyphPolicy(2, 8, head, alpha=4.0, draws=3, zero_time_fraction=0.5)
    encodes, times = [], []
    encode_condition, step = model.head.encode_condition, model.head.step
    model.head.encode_condition = lambda *a: encodes.append(a[0].shape[0]) or encode_condition(*a)
    model.head.step = lambda cache, x, t: times.append(t) or step(cache, x, t)
    loss = model.compute_loss(batch, torch.Generator().manual_seed(1))
    assert torch.isfinite(loss)
    assert encodes == [5] and times[0].shape == (15,)  # one condition per image, 3 draws each
    zero = int((times[0] == 0).sum())
    assert 2 <= zero <= 13 and (times[0] > 0).any()  # about half, drawn with the generator
    model.zero_time_fraction = 1.0
    model.compute_loss(batch, torch.Generator().manual_seed(1))
    assert bool((times[1] == 0).all())


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        toy.main(["--alphas", "0.5", "--output-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        toy.main(["--steps", "0", "--output-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        toy.main(["--zero-time-fraction", "1.5", "--output-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        toy.main(["--variants", "magic", "--output-dir", str(tmp_path)])


@pytest.mark.slow
@pytest.mark.timeout(900)  # a shared 2-core CPU can be many times slower than an idle one
def test_quick_run_learns_and_writes_report(tmp_path):
    assert toy.main(["--quick", "--no-progress", "--output-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "toy_report.json").read_text())
    assert (tmp_path / "toy_report.png").stat().st_size > 1000
    assert [r["alpha"] for r in report["results"]] == [1.0, 4.0]
    chance = report["chance"]["glyph_accuracy"]
    decoded_with = [{"1", "10"}, {"1", "10", "10@alpha"}]  # alpha = 1's shifted grid is the uniform one
    for result, names in zip(report["results"], decoded_with):
        assert result["variant"] == "baseline"
        assert set(result["exact_match"]) == set(result["glyph_accuracy"]) == names
        assert all(0.0 <= v <= 1.0 for v in result["exact_match"].values())
    shifted = report["results"][1]
    # Chance is 10 % per glyph; the shifted model decodes most glyphs right in one step.
    assert shifted["glyph_accuracy"]["1"] > chance + 0.4
    assert not list(tmp_path.glob("tmp*")), "per-alpha training logs must be cleaned up"
