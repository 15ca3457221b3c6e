"""Pin the flow convention (t = 0 noise, t = 1 action), the high-noise shift and the sampler."""

import pytest
import torch

from vla_ros.policy import flow


def test_interpolation_endpoints_follow_the_convention():
    action, noise = torch.randn(4, 10, 14), torch.randn(4, 10, 14)
    assert torch.equal(flow.interpolate(action, noise, torch.zeros(4)), noise)
    assert torch.equal(flow.interpolate(action, noise, torch.ones(4)), action)


def test_velocity_target_is_the_path_derivative():
    action, noise = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    t0, t1 = torch.full((2,), 0.3), torch.full((2,), 0.7)
    finite_difference = (flow.interpolate(action, noise, t1) - flow.interpolate(action, noise, t0)) / 0.4
    torch.testing.assert_close(finite_difference, flow.velocity_target(action, noise))


def test_one_step_with_a_perfect_velocity_field_recovers_the_target_exactly():
    action, noise = torch.randn(3, 10, 14), torch.randn(3, 10, 14)

    def perfect(x, t):  # the true velocity towards `action` from anywhere on the path
        return flow.velocity_target(action, noise)

    torch.testing.assert_close(flow.euler_sample(perfect, noise, steps=1), action)
    torch.testing.assert_close(flow.euler_sample(perfect, noise, steps=10), action)


def test_euler_grid_starts_at_noise_and_uses_uniform_steps():
    seen = []

    def record(x, t):
        seen.append(float(t[0]))
        return torch.ones_like(x)

    out = flow.euler_sample(record, torch.zeros(1, 2), steps=4)
    assert seen == [0.0, 0.25, 0.5, 0.75]
    torch.testing.assert_close(out, torch.ones(1, 2))
    with pytest.raises(ValueError, match="steps"):
        flow.euler_sample(record, torch.zeros(1, 2), steps=0)


def test_alpha_matched_grid_is_the_shifted_uniform_grid_and_one_step_ignores_it():
    assert flow.time_grid(4) == [0.0, 0.25, 0.5, 0.75, 1.0]
    shifted = flow.time_grid(4, alpha=4.0)
    assert shifted[0] == 0.0 and shifted[-1] == 1.0 and shifted[2] == pytest.approx(0.2)  # shift(0.5) = 0.2
    assert all(a < b for a, b in zip(shifted, shifted[1:]))
    seen = []

    def record(x, t):
        seen.append(float(t[0]))
        return torch.ones_like(x)

    out = flow.euler_sample(record, torch.zeros(1, 2), steps=4, alpha=4.0)
    assert seen == pytest.approx(shifted[:-1])
    torch.testing.assert_close(out, torch.ones(1, 2))  # the step sizes still add up to 1
    seen.clear()
    flow.euler_sample(record, torch.zeros(1, 2), steps=1, alpha=8.0)
    assert seen == [0.0]
    with pytest.raises(ValueError, match="alpha"):
        flow.time_grid(3, alpha=0.5)


def test_shift_moves_mass_towards_noise():
    assert float(flow.shift_time(torch.tensor(0.5), 4.0)) == pytest.approx(0.2)
    u = torch.linspace(0, 1, 101)
    torch.testing.assert_close(flow.shift_time(u, 1.0), u)
    assert torch.all(flow.shift_time(u, 4.0) <= u + 1e-7)
    assert flow.shift_time(torch.tensor([0.0, 1.0]), 8.0).tolist() == [0.0, 1.0]
    # The recipe's mean noise levels E[1 - t].
    for alpha, expected in [(1, 0.50), (3, 0.68), (4, 0.72), (8, 0.80)]:
        assert flow.mean_noise_level(alpha) == pytest.approx(expected, abs=0.01)
    with pytest.raises(ValueError, match="alpha"):
        flow.shift_time(u, 0.5)


def test_sample_time_is_seeded_and_shifted():
    a = flow.sample_time(20_000, alpha=4.0, generator=torch.Generator().manual_seed(1))
    b = flow.sample_time(20_000, alpha=4.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert float((1 - a).mean()) == pytest.approx(0.72, abs=0.01)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    beta = flow.sample_time(20_000, alpha=1.0, beta=(1.5, 1.0), generator=torch.Generator().manual_seed(2))
    assert float(beta.mean()) == pytest.approx(1.5 / 2.5, abs=0.01)


def test_loss_is_masked_to_real_dims():
    target = torch.zeros(2, 4, 3)
    predicted = torch.zeros(2, 4, 3)
    predicted[..., 2] = 100.0  # error only in a padded dim
    mask = torch.tensor([1.0, 1.0, 0.0])
    assert float(flow.flow_loss(predicted, target, mask)) == 0.0
    predicted[..., 0] = 2.0
    assert float(flow.flow_loss(predicted, target, mask)) == pytest.approx(2.0)  # 4 / 2 real dims
    assert float(flow.flow_loss(predicted, target)) == pytest.approx((4 + 10_000) / 3)


def test_per_entry_times_interpolate_each_entry_on_its_own_path():
    action, noise = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    t = torch.tensor([[1.0, 1.0, 0.3, 0.3], [0.0, 0.5, 0.5, 0.5]])
    mixed = flow.interpolate(action, noise, t)
    torch.testing.assert_close(mixed[0, :2], action[0, :2])
    torch.testing.assert_close(mixed[0, 2:], 0.3 * action[0, 2:] + 0.7 * noise[0, 2:])
    torch.testing.assert_close(mixed[1, 0], noise[1, 0])
    given = torch.tensor([[True, True, False, False], [False] * 4])
    torch.testing.assert_close(flow.prefix_times(torch.tensor([0.3, 0.5]), given),
                               torch.tensor([[1.0, 1.0, 0.3, 0.3], [0.5] * 4]))


@pytest.mark.parametrize("steps", [1, 4])
def test_an_action_prefix_is_kept_at_every_step_and_seen_at_time_one(steps):
    """Given entries start at their values and stay there; the velocity sees t = 1 for them and the
    grid's time for the others, and the rest of the chunk moves as without a prefix."""
    noise, values = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    given = torch.tensor([[True, True, False, False, False], [False] * 5])
    seen = []

    def velocity(x, t):
        seen.append(t.clone())
        return torch.ones_like(x)

    out = flow.euler_sample(velocity, noise, steps, given=given, given_values=values)
    torch.testing.assert_close(out[0, :2], values[0, :2])
    torch.testing.assert_close(out[0, 2:], noise[0, 2:] + 1.0)
    torch.testing.assert_close(out[1], noise[1] + 1.0)
    assert all(t.shape == (2, 5) and (t[0, :2] == 1).all() for t in seen)
    assert seen[0][1].eq(0).all() and seen[0][0, 2:].eq(0).all()
    plain = flow.euler_sample(lambda x, t: torch.ones_like(x), noise, steps)
    torch.testing.assert_close(out[1], plain[1])


def test_join_prefix_leaves_the_prefix_with_its_position_and_velocity():
    """A decoded part that starts off the prefix is bent to start where the prefix's velocity
    leads and at that velocity; the prefix and the chunk's last entry stay; a decoded part that
    already continues the prefix, and rows with fewer than 2 given entries, are unchanged."""
    horizon = 12
    line = torch.arange(horizon, dtype=torch.float64)[None, :, None] * torch.tensor([0.1, -0.2])  # (1, 12, 2)
    given = torch.arange(horizon)[None, :] < 5
    torch.testing.assert_close(flow.join_prefix(line, given), line)
    off = line.clone()
    off[:, 5:] += torch.tensor([0.3, 0.1]) + 0.05 * torch.arange(7, dtype=torch.float64)[None, :, None]
    joined = flow.join_prefix(off, given)
    torch.testing.assert_close(joined[:, :5], line[:, :5])
    torch.testing.assert_close(joined[:, -1], off[:, -1])
    torch.testing.assert_close(joined[:, 5], line[:, 5])  # where the prefix's velocity leads
    torch.testing.assert_close(joined[:, 6] - joined[:, 5], line[:, 6] - line[:, 5], atol=0.04, rtol=0)  # was 0.3 off
    assert (joined[:, 2:] - 2 * joined[:, 1:-1] + joined[:, :-2]).abs().max() < 0.1  # no spike
    assert (off[:, 2:] - 2 * off[:, 1:-1] + off[:, :-2]).abs().max() > 0.3
    one = torch.arange(horizon)[None, :] < 1
    torch.testing.assert_close(flow.join_prefix(off, one), off)
