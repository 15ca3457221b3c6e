"""VLAPolicy (loss, sampling, parameter groups), PolicyConfig and the normaliser."""

import json

import numpy as np
import pytest
import torch

from vla_ros.policy.checkpoint import build_random_policy, profile_stats
from vla_ros.policy.flow import euler_sample
from vla_ros.policy.model import ConfigError, PolicyConfig, VLAPolicy, default_config
from vla_ros.policy.normalize import Normalizer, NormStats, StatsError
from vla_ros.robot.profile import load_profile


@pytest.fixture(scope="module")
def profile():
    return load_profile("aloha_stationary")


def _policy(profile, config="tiny", cameras=("cam_high", "cam_low")):
    policy = build_random_policy(config, profile, cameras, seed=0)
    # The head starts with a zero output layer (v = 0); make it input-dependent for these tests.
    torch.nn.init.normal_(policy.head.velocity_out.weight, std=0.3)
    return policy


def _batch(policy, batch_size=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    cameras = len(policy.config.camera_keys)
    return {
        "images": torch.randint(0, 256, (batch_size, cameras, 24, 32, 3), dtype=torch.uint8, generator=generator),
        "instruction": ["pick up the cube", "open the drawer"] * (batch_size // 2),
        "state": torch.randn(batch_size, policy.config.real_state_dim, generator=generator),
        "actions": torch.randn(batch_size, policy.config.horizon, policy.config.real_action_dim, generator=generator),
    }


@pytest.mark.parametrize("config", ["tiny", "tiny-smolvlm"])
def test_loss_is_finite_and_backpropagates_into_head_and_backbone(profile, config):
    policy = _policy(profile, config)
    loss = policy.compute_loss(_batch(policy), torch.Generator().manual_seed(1))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    groups = policy.parameter_groups()
    assert set(groups) == {"backbone", "head"}
    for name, params in groups.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name
    ids = [{id(p) for p in params} for params in groups.values()]
    assert not ids[0] & ids[1]
    assert ids[0] | ids[1] == {id(p) for p in policy.parameters()}


def test_batches_of_the_wrong_shape_are_rejected(profile):
    policy = _policy(profile)
    batch = _batch(policy)
    with pytest.raises(ValueError, match=r"state must be \(B, 14\), got \(4, 13\)"):
        policy.compute_loss({**batch, "state": batch["state"][:, :13]})
    with pytest.raises(ValueError, match=r"actions must be \(B, 10, 14\), got \(4, 5, 14\)"):
        policy.compute_loss({**batch, "actions": batch["actions"][:, :5]})
    with pytest.raises(ValueError, match="2 cameras"):
        policy.compute_loss({**batch, "images": batch["images"][:, :1]})


def test_loss_is_reproducible_with_a_generator_and_accepts_pre_tokenized_text(profile):
    policy = _policy(profile)
    batch = _batch(policy)
    first = policy.compute_loss(batch, torch.Generator().manual_seed(5))
    ids, mask = policy.tokenize(batch["instruction"])
    tokenized = {**{k: v for k, v in batch.items() if k != "instruction"}, "text_ids": ids, "text_mask": mask}
    assert torch.equal(first, policy.compute_loss(tokenized, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, policy.compute_loss(batch, torch.Generator().manual_seed(6)))


def test_padded_steps_and_padded_dims_do_not_enter_the_loss(profile):
    policy = build_random_policy("tiny", profile, ("cam_high",))
    wide = default_config(policy.backbone, ("cam_high",), profile.vector_names, profile.vector_names,
                          action_dim=16, normalization="min_max", head=dict(width=32, depth=1, heads=2, mlp_dim=64))
    policy = VLAPolicy(wide, policy.backbone, profile_stats(profile))
    torch.nn.init.normal_(policy.head.velocity_out.weight, std=0.3)
    batch = _batch(policy)
    batch["action_is_pad"] = torch.zeros(4, 10, dtype=torch.bool)
    batch["action_is_pad"][:, 6:] = True
    reference = policy.compute_loss(batch, torch.Generator().manual_seed(2))
    forward = policy.head.forward
    error_in_padding = torch.zeros(10, 16)
    error_in_padding[6:] = 50.0  # wrong velocities on padded steps ...
    error_in_padding[:, 14:] = -50.0  # ... and on padded dims
    policy.head.forward = lambda *args: forward(*args) + error_in_padding
    torch.testing.assert_close(policy.compute_loss(batch, torch.Generator().manual_seed(2)), reference)
    batch.pop("action_is_pad")
    assert not torch.allclose(policy.compute_loss(batch, torch.Generator().manual_seed(2)), reference)


def _bidirectional(policy):
    """The same weights with the attention layout of checkpoints written before the field."""
    values = policy.config.to_dict()
    values["head"]["attention"] = "bidirectional"
    old = VLAPolicy(PolicyConfig.from_dict(values), policy.backbone, policy.stats).eval()
    old.head.load_state_dict(policy.head.state_dict())
    return old


def _sampling_inputs(policy):
    batch = _batch(policy, batch_size=2)
    with torch.no_grad():
        prefix = policy.encode(batch["images"], *policy.tokenize(batch["instruction"]))
    state = policy.prepare_state(batch["state"])
    noise = torch.randn(2, policy.config.horizon, policy.config.action_dim, generator=torch.Generator().manual_seed(1))
    return prefix, state, noise


def test_sample_caches_the_condition_once_and_one_step_is_noise_plus_velocity_at_t0(profile):
    policy = _policy(profile).eval()
    assert policy.config.head.attention == "block_causal"
    prefix, state, noise = _sampling_inputs(policy)
    with torch.no_grad():
        policy.backbone.forward = None  # sampling must not touch the VLM again
        encodes, steps = [], []
        encode_condition, step = policy.head.encode_condition, policy.head.step
        policy.head.encode_condition = lambda *args: encodes.append(1) or encode_condition(*args)
        policy.head.step = lambda cache, x, t: steps.append(t) or step(cache, x, t)
        ten = policy.sample(prefix, state, 10, noise)
        assert len(encodes) == 1 and [float(t[0]) for t in steps] == pytest.approx([k / 10 for k in range(10)])
        one = policy.sample(prefix, state, 1, noise)
        # velocity() runs the whole uncached sequence: the cache changes nothing
        torch.testing.assert_close(one, noise + policy.velocity(prefix, noise, torch.zeros(2), state),
                                   rtol=1e-5, atol=1e-5)
    assert not torch.allclose(one, ten)


@pytest.mark.parametrize("steps", [1, 10])
def test_cached_sampling_equals_sampling_through_the_whole_sequence(profile, steps):
    policy = _policy(profile).eval()
    prefix, state, noise = _sampling_inputs(policy)
    with torch.no_grad():
        cached = policy.sample(prefix, state, steps, noise)
        uncached = euler_sample(lambda x, t: policy.velocity(prefix, x, t, state), noise, steps)
    torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-5)


def test_a_bidirectional_policy_falls_back_to_the_whole_sequence_at_every_step(profile):
    policy = _bidirectional(_policy(profile))
    prefix, state, noise = _sampling_inputs(policy)
    with torch.no_grad():
        calls = []
        velocity = policy.velocity
        policy.velocity = lambda *args: calls.append(args[2]) or velocity(*args)
        ten = policy.sample(prefix, state, 10, noise)
        assert len(calls) == 10
        del policy.velocity
        torch.testing.assert_close(ten, euler_sample(lambda x, t: policy.velocity(prefix, x, t, state), noise, 10),
                                   rtol=0, atol=0)


def test_both_layouts_train_a_step_on_the_tiny_config(profile):
    """One optimizer step through compute_loss for each layout: finite loss, the head moves."""
    for policy in (_policy(profile), _bidirectional(_policy(profile)).train()):
        batch = _batch(policy)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
        before = policy.head.blocks[0].attention.qkv.weight.detach().clone()
        loss = policy.compute_loss(batch, torch.Generator().manual_seed(0))
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss) and not torch.equal(before, policy.head.blocks[0].attention.qkv.weight)


def test_a_few_optimizer_steps_reduce_the_loss_on_a_fixed_batch(profile):
    torch.manual_seed(0)
    policy = _policy(profile, cameras=("cam_high",))
    batch = _batch(policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)

    def loss_at(seed):
        return policy.compute_loss(batch, torch.Generator().manual_seed(seed))

    with torch.no_grad():
        before = float(sum(loss_at(s) for s in range(4)) / 4)
    for step in range(30):
        optimizer.zero_grad()
        loss_at(step % 4).backward()
        optimizer.step()
    with torch.no_grad():
        after = float(sum(loss_at(s) for s in range(4)) / 4)
    assert after < 0.7 * before


def test_config_round_trips_through_json_and_validates(profile):
    config = _policy(profile).config
    data = json.loads(json.dumps(config.to_dict()))
    assert PolicyConfig.from_dict(data) == config
    assert data["alpha"] == 4.0 and data["recommended_steps"] == 1 and data["camera_keys"] == ["cam_high", "cam_low"]
    with pytest.raises(ConfigError, match="alpha"):
        PolicyConfig.from_dict({**data, "alpha": 0.5})
    with pytest.raises(ConfigError, match="unknown policy config keys"):
        PolicyConfig.from_dict({**data, "horizn": 3})
    with pytest.raises(ConfigError, match=r"head.horizon \(10\) != horizon \(12\)"):
        PolicyConfig.from_dict({**data, "horizon": 12})
    with pytest.raises(ConfigError, match="camera_keys"):
        PolicyConfig.from_dict({**data, "camera_keys": ["cam_high", "cam_high"]})


def test_statistics_round_trip_exactly_and_normalise_as_documented():
    rng = np.random.default_rng(0)
    states = rng.normal(3.0, 2.0, size=(500, 14))
    actions = rng.uniform(-1.5, 0.5, size=(50, 10, 14))
    actions[..., 6] = 0.25  # a dim that never moves: its spread is floored at eps
    for mode in ("mean_std", "min_max"):
        stats = NormStats.from_arrays(states, actions, mode=mode)
        again = NormStats.from_json(json.loads(json.dumps(stats.to_json())))
        for which in ("state", "action"):
            for key in ("mean", "std", "min", "max"):
                assert np.array_equal(getattr(stats, which)[key], getattr(again, which)[key])
        normalizer = Normalizer(stats)
        raw = torch.tensor(actions, dtype=torch.float32)
        normalised = normalizer.normalize_action(raw)
        torch.testing.assert_close(normalizer.denormalize_action(normalised), raw, rtol=0, atol=1e-5)
        assert torch.isfinite(normalised).all() and float(normalised[..., 6].abs().max()) == 0.0
        if mode == "min_max":
            real = normalised[..., :6]
            assert float(real.min()) == pytest.approx(-1.0, abs=1e-5) and float(real.max()) == pytest.approx(1.0, abs=1e-5)
        else:
            flat = normalizer.normalize_state(torch.tensor(states, dtype=torch.float32))
            assert flat.mean(0).abs().max() < 1e-4 and (flat.std(0, unbiased=False) - 1).abs().max() < 1e-4


def test_bad_statistics_fail_clearly(tmp_path):
    with pytest.raises(StatsError, match="non-finite"):
        NormStats.from_arrays(np.array([[np.nan, 1.0]]), np.zeros((1, 2)))
    with pytest.raises(StatsError, match="mode"):
        NormStats.from_arrays(np.zeros((2, 2)), np.zeros((2, 2)), mode="zscore")
    (tmp_path / "stats.json").write_text('{"mode": "mean_std"}')
    with pytest.raises(StatsError, match="stats.json"):
        NormStats.load(tmp_path / "stats.json")
    with pytest.raises(StatsError, match="missing"):
        NormStats.load(tmp_path / "absent.json")


def test_checkpoints_record_the_attention_layout_and_old_ones_load_as_bidirectional(profile, tmp_path):
    from pathlib import Path

    from vla_ros.policy.checkpoint import load_checkpoint, load_config, save_checkpoint

    path = save_checkpoint(_policy(profile), tmp_path / "new")
    assert json.loads((path / "config.json").read_text())["head"]["attention"] == "block_causal"
    assert load_checkpoint(path).head.cacheable
    before = Path(__file__).resolve().parents[1] / "assets" / "checkpoint_bidirectional_wordlevel"
    assert "attention" not in json.loads((before / "config.json").read_text())["head"]
    assert load_config(before).head.attention == "bidirectional"


def _with_action_prefix(policy, steps):
    values = policy.config.to_dict()
    values["action_prefix_steps"] = steps
    rebuilt = VLAPolicy(PolicyConfig.from_dict(values), policy.backbone, policy.stats)
    rebuilt.head.load_state_dict(policy.head.state_dict())
    return rebuilt


def test_an_action_prefix_is_given_clean_at_time_one_and_not_scored(profile):
    """Training with action_prefix_steps = 4: each sample's first 0..4 entries enter the head as
    the clean (normalised) actions at t = 1, the rest at the sample's time; wrong velocities on the
    given entries do not change the loss, wrong ones elsewhere do."""
    policy = _with_action_prefix(_policy(profile), 4)
    batch = _batch(policy, batch_size=16)
    forward, seen = policy.head.forward, []

    def spy(condition, mask, state, noisy, t):
        seen.append((noisy.detach(), t.detach()))
        return forward(condition, mask, state, noisy, t)

    policy.head.forward = spy
    reference = policy.compute_loss(batch, torch.Generator().manual_seed(3))
    noisy, t = seen[-1]
    given = t == 1.0
    lengths = given.sum(dim=1)
    assert t.shape == (16, policy.config.horizon)
    assert all(given[i, :n].all() and not given[i, n:].any() for i, n in enumerate(lengths.tolist()))
    assert lengths.max() <= 4 and len(set(lengths.tolist())) > 2
    clean = policy.prepare_actions(batch["actions"])
    torch.testing.assert_close(noisy[given], clean[given])
    policy.head.forward = lambda *args: spy(*args) + 50.0 * given[:, :, None]
    torch.testing.assert_close(policy.compute_loss(batch, torch.Generator().manual_seed(3)), reference)
    policy.head.forward = lambda *args: spy(*args) + 50.0 * ~given[:, :, None]
    assert policy.compute_loss(batch, torch.Generator().manual_seed(3)) > reference + 100


def test_sampling_keeps_the_given_prefix_and_only_prefix_policies_take_one(profile):
    base = _policy(profile).eval()
    policy = _with_action_prefix(base, 4).eval()
    prefix, state, noise = _sampling_inputs(policy)
    given = torch.zeros(2, policy.config.horizon, dtype=torch.bool)
    given[0, :3] = True
    values = torch.randn(noise.shape)
    with torch.no_grad():
        chunk = policy.sample(prefix, state, 1, noise, given, values)
        torch.testing.assert_close(chunk[0, :3], values[0, :3])
        # the entries after it depend on the prefix; a sample without one is decoded as before
        assert not torch.allclose(chunk[0, 3:], policy.sample(prefix, state, 1, noise)[0, 3:])
        torch.testing.assert_close(chunk[1], policy.sample(prefix, state, 1, noise)[1], rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="not trained with an action prefix"):
            base.sample(prefix, state, 1, noise, given, values)


@pytest.mark.parametrize("steps", [-1, 10, True, 2.5])
def test_action_prefix_steps_must_leave_part_of_the_chunk_to_predict(profile, steps):
    values = _policy(profile).config.to_dict()
    values["action_prefix_steps"] = steps
    with pytest.raises(ConfigError, match="action_prefix_steps"):
        PolicyConfig.from_dict(values)


def test_a_noisy_prefix_is_shifted_by_one_offset_per_sample_and_the_rest_is_untouched(profile):
    """action_prefix_noise: each sample's given entries enter as the clean actions plus one offset
    per action dim (the same for every given entry: a plan that drifted), the others as without it."""
    policy = _with_action_prefix(_policy(profile), 4)
    values = policy.config.to_dict()
    values["action_prefix_noise"] = 0.5
    noisy_policy = VLAPolicy(PolicyConfig.from_dict(values), policy.backbone, policy.stats)
    noisy_policy.head.load_state_dict(policy.head.state_dict())
    batch = _batch(policy, batch_size=16)
    seen = []
    for model in (policy, noisy_policy):
        forward = model.head.forward
        model.head.forward = lambda c, m, s, x, t, forward=forward: seen.append((x.detach(), t.detach())) or forward(c, m, s, x, t)
        model.compute_loss(batch, torch.Generator().manual_seed(3))
    (clean_x, t), (noisy_x, noisy_t) = seen
    torch.testing.assert_close(noisy_t, t)
    given = t == 1.0
    torch.testing.assert_close(noisy_x[~given], clean_x[~given])
    shift = noisy_x - clean_x
    for sample in range(16):
        rows = shift[sample][given[sample]]
        if len(rows) > 1:
            torch.testing.assert_close(rows, rows[:1].expand_as(rows))
    assert shift[given].abs().mean() > 0.1
    values["action_prefix_noise"] = -1.0
    with pytest.raises(ConfigError, match="action_prefix_noise"):
        PolicyConfig.from_dict(values)
