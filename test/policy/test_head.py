"""The action head: shapes, masking, inputs that must matter, config round trip, compilability."""

import pytest
import torch

from vla_ros.policy.head import ActionHead, HeadConfig, sinusoidal_embedding

SMALL = dict(condition_dim=24, state_dim=5, action_dim=3, horizon=4, width=32, depth=2, heads=4, mlp_dim=64)


def _inputs(config: HeadConfig, batch: int = 3, tokens: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    condition = torch.randn(batch, tokens, config.condition_dim, generator=g)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    mask[0, tokens // 2:] = False
    state = torch.randn(batch, config.state_dim, generator=g)
    noisy = torch.randn(batch, config.horizon, config.action_dim, generator=g)
    t = torch.rand(batch, generator=g)
    return condition, mask, state, noisy, t


def _trained_looking_head(config: HeadConfig) -> ActionHead:
    """A head whose zero-initialised output layer is randomised, so inputs can show in the output."""
    torch.manual_seed(0)
    head = ActionHead(config).eval()
    torch.nn.init.normal_(head.velocity_out.weight, std=0.5)
    return head


def test_default_head_has_about_30m_parameters():
    # VLM width 2048 (Gemma-2B): 31,741,454 parameters; 28.3M of them are the 4 blocks.
    head = ActionHead(HeadConfig(condition_dim=2048))
    count = sum(p.numel() for p in head.parameters())
    assert count == 31_741_454
    assert 28e6 < count < 34e6


def test_output_shape_and_zero_initial_velocity():
    config = HeadConfig(**SMALL)
    velocity = ActionHead(config)(*_inputs(config))
    assert velocity.shape == (3, config.horizon, config.action_dim)
    assert torch.count_nonzero(velocity) == 0


@pytest.mark.parametrize("attention", ["block_causal", "bidirectional"])
def test_padded_condition_tokens_do_not_change_the_output(attention):
    config = HeadConfig(**SMALL, attention=attention)
    head = _trained_looking_head(config)
    condition, mask, state, noisy, t = _inputs(config)
    before = head(condition, mask, state, noisy, t)
    scrambled = condition.clone()
    scrambled[0, mask.shape[1] // 2:] = 100.0 * torch.randn_like(scrambled[0, mask.shape[1] // 2:])
    after = head(scrambled, mask, state, noisy, t)
    torch.testing.assert_close(before, after)
    # ...while a real token does matter.
    scrambled[0, 0] += 1.0
    assert not torch.allclose(before[0], head(scrambled, mask, state, noisy, t)[0])


def test_no_mask_equals_an_all_true_mask():
    config = HeadConfig(**SMALL)
    head = _trained_looking_head(config)
    condition, mask, state, noisy, t = _inputs(config)
    all_real = torch.ones_like(mask)
    torch.testing.assert_close(head(condition, None, state, noisy, t), head(condition, all_real, state, noisy, t))


@pytest.mark.parametrize("attention", ["block_causal", "bidirectional"])
@pytest.mark.parametrize("which", ["state", "noisy", "t", "condition"])
def test_every_input_reaches_the_velocity(which, attention):
    config = HeadConfig(**SMALL, attention=attention)
    head = _trained_looking_head(config)
    args = dict(zip(["condition", "mask", "state", "noisy", "t"], _inputs(config)))
    before = head(args["condition"], args["mask"], args["state"], args["noisy"], args["t"])
    args[which] = args[which] + 0.3
    after = head(args["condition"], args["mask"], args["state"], args["noisy"], args["t"])
    assert (before - after).abs().amax(dim=(1, 2)).min() > 1e-4


def test_samples_in_a_batch_are_independent():
    config = HeadConfig(**SMALL)
    head = _trained_looking_head(config)
    condition, mask, state, noisy, t = _inputs(config)
    full = head(condition, mask, state, noisy, t)
    single = head(condition[1:2], mask[1:2], state[1:2], noisy[1:2], t[1:2])
    torch.testing.assert_close(full[1:2], single)


def test_sinusoidal_embedding_separates_nearby_times():
    embedding = sinusoidal_embedding(torch.tensor([0.0, 0.001, 1.0]), 64)
    assert embedding.shape == (3, 64)
    assert (embedding[0] - embedding[1]).norm() > 0.1


def test_config_round_trip_and_validation():
    config = HeadConfig(**SMALL)
    assert HeadConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        HeadConfig.from_dict({**config.to_dict(), "widht": 3})
    with pytest.raises(ValueError, match="divisible"):
        HeadConfig(condition_dim=8, width=30, heads=4)
    with pytest.raises(ValueError, match="positive"):
        HeadConfig(condition_dim=0)


@pytest.mark.parametrize(
    "field,shape",
    [("condition", (3, 6, 7)), ("mask", (3, 5)), ("state", (3, 4)), ("noisy", (3, 5, 3)), ("t", (3, 1))],
)
def test_wrong_input_shapes_raise_clear_errors(field, shape):
    config = HeadConfig(**SMALL)
    args = dict(zip(["condition", "mask", "state", "noisy", "t"], _inputs(config)))
    args[field] = torch.zeros(shape, dtype=torch.bool if field == "mask" else torch.float32)
    with pytest.raises(ValueError, match="must be"):
        ActionHead(config)(args["condition"], args["mask"], args["state"], args["noisy"], args["t"])


def test_float_mask_is_rejected():
    config = HeadConfig(**SMALL)
    condition, mask, state, noisy, t = _inputs(config)
    with pytest.raises(ValueError, match="bool"):
        ActionHead(config)(condition, mask.float(), state, noisy, t)


def test_forward_compiles_as_one_graph():
    """fullgraph=True fails on any graph break, i.e. on data-dependent Python control flow."""
    config = HeadConfig(**SMALL)
    head = _trained_looking_head(config)
    inputs = _inputs(config)
    compiled = torch.compile(head, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*inputs), head(*inputs))


# ---- attention layouts and the condition cache ---------------------------------------------------
BIDIRECTIONAL_SMALL = dict(SMALL, attention="bidirectional")


def test_new_heads_are_block_causal_and_configs_without_the_field_are_bidirectional():
    assert HeadConfig(condition_dim=8).attention == "block_causal"
    written_before_the_field = {k: v for k, v in SMALL.items()}
    assert HeadConfig.from_dict(written_before_the_field).attention == "bidirectional"
    assert HeadConfig.from_dict(HeadConfig(**SMALL).to_dict()).attention == "block_causal"
    with pytest.raises(ValueError, match="attention"):
        HeadConfig(condition_dim=8, attention="causal")


def test_both_layouts_have_the_same_weights():
    block_causal, bidirectional = ActionHead(HeadConfig(**SMALL)), ActionHead(HeadConfig(**BIDIRECTIONAL_SMALL))
    bidirectional.load_state_dict(block_causal.state_dict())  # strict: same names and shapes


@pytest.mark.parametrize("use_mask", [True, False])
def test_condition_keys_and_values_ignore_the_state_and_action_tokens(use_mask):
    """(a) The condition rows never see the state or the actions: the cache of the condition
    tokens is the same whatever the state, and the velocity's dependence on x_t and t goes only
    through the action rows (the cached step reproduces forward for any x_t and t)."""
    config = HeadConfig(**SMALL)
    head = _trained_looking_head(config)
    condition, mask, state, noisy, t = _inputs(config)
    mask = mask if use_mask else None
    tokens = condition.shape[1]
    with torch.no_grad():
        cache = head.encode_condition(condition, mask, state)
        other = head.encode_condition(condition, mask, state + 5.0 * torch.randn_like(state))
        for k, v, k_other, v_other in zip(cache.keys, cache.values, other.keys, other.values):
            torch.testing.assert_close(k[:, :, :tokens], k_other[:, :, :tokens], rtol=0, atol=0)
            torch.testing.assert_close(v[:, :, :tokens], v_other[:, :, :tokens], rtol=0, atol=0)
            assert not torch.allclose(k[:, :, tokens:], k_other[:, :, tokens:])  # the state row does change
        for _ in range(3):  # new actions and times, one cache
            noisy, t = 10.0 * torch.randn_like(noisy), torch.rand_like(t)
            torch.testing.assert_close(head.step(cache, noisy, t), head(condition, mask, state, noisy, t),
                                       rtol=1e-5, atol=1e-5)


def test_condition_rows_of_forward_ignore_the_state_and_actions():
    """(a) on forward itself: the last block's condition rows, for other states, actions and times."""
    config = HeadConfig(**SMALL)
    head = _trained_looking_head(config)
    condition, mask, state, noisy, t = _inputs(config)
    rows = []
    hook = head.blocks[-1].register_forward_hook(lambda module, args, out: rows.append(out[0][:, :condition.shape[1]]))
    with torch.no_grad():
        head(condition, mask, state, noisy, t)
        head(condition, mask, state + 1.0, 3.0 * noisy, 1.0 - t)
    hook.remove()
    torch.testing.assert_close(rows[0], rows[1], rtol=0, atol=0)
    bidirectional = ActionHead(HeadConfig(**BIDIRECTIONAL_SMALL)).eval()
    bidirectional.load_state_dict(head.state_dict())
    rows.clear()
    hook = bidirectional.blocks[-1].register_forward_hook(lambda module, args, out: rows.append(out[0][:, :condition.shape[1]]))
    with torch.no_grad():
        bidirectional(condition, mask, state, noisy, t)
        bidirectional(condition, mask, state + 1.0, 3.0 * noisy, 1.0 - t)
    hook.remove()
    assert not torch.allclose(rows[0], rows[1])  # the old layout's condition rows do move


@pytest.mark.parametrize("steps", [1, 10])
def test_cached_decoding_equals_uncached_decoding(steps):
    """(b) Euler decoding through the cache equals decoding through forward at every step."""
    from vla_ros.policy.flow import euler_sample

    config = HeadConfig(**SMALL)
    head = _trained_looking_head(config)
    condition, mask, state, noise, _ = _inputs(config)
    with torch.no_grad():
        cache = head.encode_condition(condition, mask, state)
        cached = euler_sample(lambda x, t: head.step(cache, x, t), noise, steps)
        uncached = euler_sample(lambda x, t: head(condition, mask, state, x, t), noise, steps)
    torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cached, noise)


def test_a_bidirectional_head_refuses_to_cache():
    """(c) The old layout's condition depends on x_t: caching it would silently change results."""
    config = HeadConfig(**BIDIRECTIONAL_SMALL)
    condition, mask, state, _, _ = _inputs(config)
    head = ActionHead(config)
    assert not head.cacheable
    with pytest.raises(ValueError, match="'bidirectional' cannot cache its condition"):
        head.encode_condition(condition, mask, state)


def test_cache_repeats_per_draw_and_gradients_reach_the_condition():
    """Several (t, noise) draws per condition share one cache; training backpropagates through it."""
    config = HeadConfig(**SMALL)
    head = _trained_looking_head(config).train()
    condition, mask, state, noisy, t = _inputs(config)
    condition.requires_grad_(True)
    draws = 3
    cache = head.encode_condition(condition, mask, state).repeat_interleave(draws)
    noisy, t = noisy.repeat_interleave(draws, 0), t.repeat_interleave(draws, 0)
    velocity = head.step(cache, noisy, t)
    expected = head(condition.repeat_interleave(draws, 0), mask.repeat_interleave(draws, 0),
                    state.repeat_interleave(draws, 0), noisy, t)
    torch.testing.assert_close(velocity, expected, rtol=1e-5, atol=1e-5)
    velocity.square().sum().backward()
    assert condition.grad is not None and condition.grad.abs().sum() > 0


def test_cached_step_compiles_as_one_graph():
    config = HeadConfig(**SMALL)
    head = _trained_looking_head(config)
    condition, mask, state, noisy, t = _inputs(config)
    with torch.no_grad():
        cache = head.encode_condition(condition, mask, state)
        compiled = torch.compile(head.step, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(cache, noisy, t), head.step(cache, noisy, t))


def test_one_time_per_entry_equals_the_shared_time_and_caching_holds_with_it():
    """A (B, H) time that repeats each sample's time gives the (B,) result, through forward and
    through the cache; a prefix entry at t = 1 changes the velocity of the others (they attend to it)."""
    config = HeadConfig(**SMALL)
    head = _trained_looking_head(config)
    condition, mask, state, noisy, t = _inputs(config)
    per_entry = t[:, None].expand(-1, config.horizon)
    with torch.no_grad():
        shared = head(condition, mask, state, noisy, t)
        torch.testing.assert_close(head(condition, mask, state, noisy, per_entry), shared)
        cache = head.encode_condition(condition, mask, state)
        torch.testing.assert_close(head.step(cache, noisy, per_entry), shared, rtol=1e-5, atol=1e-5)
        with_prefix = per_entry.clone()
        with_prefix[:, 0] = 1.0
        moved = head.step(cache, noisy, with_prefix)
        torch.testing.assert_close(moved, head(condition, mask, state, noisy, with_prefix), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(moved[:, 1:], shared[:, 1:])
    with pytest.raises(ValueError, match="t must be"):
        head(condition, mask, state, noisy, torch.rand(3, config.horizon + 1))
