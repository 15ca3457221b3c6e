"""The generic trainer: learning, schedules, EMA, atomic checkpoints and exact resume."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from vla_ros.policy.flow import euler_sample, flow_loss, interpolate, sample_time, velocity_target
from vla_ros.policy.head import ActionHead, HeadConfig
from vla_ros.policy.train import LOG_FILE, TRAINER_STATE, Trainer, TrainConfig, lr_factor

CONDITION_DIM, STATE_DIM, ACTION_DIM, HORIZON = 6, 3, 2, 4


class StandInPolicy(nn.Module):
    """A linear 'backbone' that turns a feature vector into 2 condition tokens, plus an ActionHead."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(CONDITION_DIM, 2 * 16)
        self.head = ActionHead(HeadConfig(condition_dim=16, state_dim=STATE_DIM, action_dim=ACTION_DIM,
                                          horizon=HORIZON, width=32, depth=2, heads=4, mlp_dim=64))

    def condition(self, features):
        return self.encoder(features).view(features.shape[0], 2, 16)

    def compute_loss(self, batch, generator):
        actions = batch["actions"]
        noise = torch.randn(actions.shape, generator=generator, device=actions.device)
        t = sample_time(actions.shape[0], alpha=4.0, generator=generator, device=actions.device)
        velocity = self.head(self.condition(batch["features"]), None, batch["state"], interpolate(actions, noise, t), t)
        return flow_loss(velocity, velocity_target(actions, noise))

    def parameter_groups(self):
        return {"backbone": list(self.encoder.parameters()), "head": list(self.head.parameters())}

    @torch.no_grad()
    def one_step(self, batch):
        condition = self.condition(batch["features"])
        zero = torch.zeros_like(batch["actions"])  # deterministic decoding: e = 0
        return euler_sample(lambda x, t: self.head(condition, None, batch["state"], x, t), zero, 1)


def synthetic_batch(seed, batch=32):
    """A fixed smooth map (features, state) -> action chunk: fully determined by the condition."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, CONDITION_DIM, generator=g)
    state = torch.randn(batch, STATE_DIM, generator=g)
    mixing = torch.Generator().manual_seed(1234)
    w = torch.randn(CONDITION_DIM + STATE_DIM, HORIZON * ACTION_DIM, generator=mixing) / 3.0
    actions = torch.tanh(torch.cat([features, state], 1) @ w).view(batch, HORIZON, ACTION_DIM)
    return {"features": features, "state": state, "actions": actions}


def batches(start=0):
    k = start
    while True:
        yield synthetic_batch(k)
        k += 1


def small_config(**overrides):
    base = dict(lr=1e-2, warmup_steps=10, total_steps=500, min_lr_ratio=0.1, ema_decay=None, backbone_lr_scale=1.0,
                batch_size=32, log_interval=25, checkpoint_interval=0, device="cpu", seed=0)
    return TrainConfig(**{**base, **overrides})


def make_trainer(tmp_path, **overrides):
    torch.manual_seed(0)
    return Trainer(StandInPolicy(), small_config(**overrides), tmp_path)


def one_step_error(model):
    held_out = synthetic_batch(10_000, batch=256)
    return float((model.one_step(held_out) - held_out["actions"]).pow(2).mean())


@pytest.mark.slow
@pytest.mark.timeout(900)  # a shared 2-core CPU can be many times slower than an idle one
def test_training_drives_loss_and_one_step_error_down(tmp_path):
    trainer = make_trainer(tmp_path)
    untrained_error = one_step_error(trainer.model)
    records = trainer.fit(batches(), 500, progress=False)
    trained_error = one_step_error(trainer.model)
    print(f"one-step MSE untrained {untrained_error:.4f}, trained {trained_error:.4f}")
    assert untrained_error > 0.2
    assert trained_error < 0.08
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-3:]) / 3
    assert last < 0.5 * first
    lines = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(25, 501, 25))
    assert {"loss", "lr", "grad_norm", "samples_per_s"} <= set(lines[0])


def test_lr_schedule_warmup_then_cosine_to_floor():
    config = TrainConfig(lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(10, config) == pytest.approx(1.0)
    assert lr_factor(60, config) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert lr_factor(110, config) == pytest.approx(0.1)
    assert lr_factor(10_000, config) == pytest.approx(0.1)
    factors = [lr_factor(s, config) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def test_train_step_uses_the_scheduled_lr_and_backbone_multiplier(tmp_path):
    trainer = make_trainer(tmp_path, lr=1e-3, warmup_steps=4, total_steps=20, backbone_lr_scale=0.1)
    metrics = [trainer.train_step(synthetic_batch(k)) for k in range(6)]
    assert [m["lr"] for m in metrics] == pytest.approx([1e-3 * lr_factor(s, trainer.config) for s in range(6)])
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs["backbone"] == pytest.approx(0.1 * lrs["head"])
    assert all(math.isfinite(m["grad_norm"]) and m["grad_norm"] > 0 for m in metrics)


def test_freeze_backbone_keeps_encoder_fixed(tmp_path):
    trainer = make_trainer(tmp_path, freeze_backbone=True)
    before = trainer.model.encoder.weight.detach().clone()
    for k in range(3):
        trainer.train_step(synthetic_batch(k))
    torch.testing.assert_close(trainer.model.encoder.weight, before, rtol=0, atol=0)
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["head"]


def test_ema_follows_the_exponential_average(tmp_path):
    trainer = make_trainer(tmp_path, ema_decay=0.9)
    weight = trainer.model.head.velocity_out.weight
    expected = weight.detach().clone()
    for k in range(4):
        trainer.train_step(synthetic_batch(k))
        expected = 0.9 * expected + 0.1 * weight.detach()
    torch.testing.assert_close(trainer.ema["head.velocity_out.weight"], expected)
    raw = weight.detach().clone()
    with trainer.ema_weights():
        torch.testing.assert_close(weight.detach(), expected)
    torch.testing.assert_close(weight.detach(), raw, rtol=0, atol=0)


def test_checkpoint_holds_ema_weights_and_resume_is_exact(tmp_path):
    uninterrupted = make_trainer(tmp_path / "a", ema_decay=0.95)
    uninterrupted.fit(batches(), 8, progress=False)
    expected = [uninterrupted.train_step(synthetic_batch(8 + k))["loss"] for k in range(2)]

    first = make_trainer(tmp_path / "b", ema_decay=0.95, checkpoint_interval=4)
    first.fit(batches(), 8, progress=False)
    latest = first.checkpoints()[-1]
    assert latest.name == "step_00000008"
    weights = load_file(latest / "model.safetensors")
    torch.testing.assert_close(weights["head.velocity_out.weight"], first.ema["head.velocity_out.weight"])

    torch.manual_seed(123)  # a fresh process would start from other RNG states
    resumed = Trainer(StandInPolicy(), small_config(ema_decay=0.95, checkpoint_interval=4), tmp_path / "b")
    assert resumed.resume()
    assert resumed.step == 8
    got = [resumed.train_step(synthetic_batch(8 + k))["loss"] for k in range(2)]
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_old_checkpoints_are_pruned_and_resume_without_any_is_false(tmp_path):
    trainer = make_trainer(tmp_path, checkpoint_interval=2, keep_checkpoints=2)
    assert trainer.resume() is False
    trainer.fit(batches(), 7, progress=False)  # saves at 2, 4, 6 and the end (7)
    assert [p.name for p in trainer.checkpoints()] == ["step_00000006", "step_00000007"]


def test_failed_save_leaves_no_partial_checkpoint(tmp_path):
    def failing_save(model, directory):
        (directory / "half_written.bin").write_bytes(b"x")
        raise OSError("disk full")

    torch.manual_seed(0)
    trainer = Trainer(StandInPolicy(), small_config(), tmp_path, save_fn=failing_save)
    trainer.train_step(synthetic_batch(0))
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_custom_save_fn_receives_the_checkpoint_directory(tmp_path):
    seen = []

    def record_save(model, directory):
        seen.append(directory)
        (directory / "config.json").write_text("{}")

    torch.manual_seed(0)
    trainer = Trainer(StandInPolicy(), small_config(), tmp_path, save_fn=record_save)
    path = trainer.save_checkpoint()
    assert (path / "config.json").is_file() and (path / TRAINER_STATE).is_file()
    assert seen[0].parent == path.parent  # written in the staging directory, then renamed


def test_bad_models_and_configs_are_rejected(tmp_path):
    with pytest.raises(TypeError, match="compute_loss"):
        Trainer(nn.Linear(2, 2), small_config(), tmp_path)

    class Incomplete(StandInPolicy):
        def parameter_groups(self):
            return {"backbone": [], "head": list(self.head.parameters())}

    with pytest.raises(ValueError, match="missing from parameter_groups"):
        Trainer(Incomplete(), small_config(), tmp_path)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()


def test_running_out_of_batches_is_a_clear_error(tmp_path):
    trainer = make_trainer(tmp_path)
    with pytest.raises(ValueError, match="ran out"):
        trainer.fit([synthetic_batch(0)], 3, progress=False)


def test_non_finite_loss_stops_training(tmp_path):
    trainer = make_trainer(tmp_path)
    batch = synthetic_batch(0)
    batch["actions"][0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError):
        trainer.train_step(batch)
