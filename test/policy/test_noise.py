"""The initial-noise options (vla_ros.policy.noise) and the runtime that uses them: shapes, unit
marginal variance, the correlation along the horizon, per-episode reuse, and the default path
unchanged (same seed -> the same chunk as drawing plain normal_ noise, the code before the options)."""

import numpy as np
import pytest
import torch

from vla_ros.policy.checkpoint import build_random_policy, save_checkpoint
from vla_ros.policy.noise import InitialNoise, correlation_factor
from vla_ros.policy.runtime import PolicyRuntime
from vla_ros.robot.profile import load_profile

HORIZON, DIMS, DRAWS = 20, 14, 4000


def _draws(noise: InitialNoise, count: int = DRAWS) -> np.ndarray:
    buffer = torch.zeros(1, HORIZON, DIMS)
    out = []
    for _ in range(count):
        noise.fill(buffer)
        out.append(buffer[0].clone())
    return torch.stack(out).double().numpy()  # (draws, horizon, dims)


def test_default_fill_is_plain_normal_noise_from_the_generator():
    noise = InitialNoise(torch.Generator().manual_seed(7))
    reference = torch.Generator().manual_seed(7)
    buffer = torch.zeros(1, HORIZON, DIMS)
    for _ in range(3):
        noise.fill(buffer)
        assert torch.equal(buffer, torch.zeros(1, HORIZON, DIMS).normal_(generator=reference))
    assert noise.is_default


def test_scale_sets_the_standard_deviation_and_zero_gives_zero_noise():
    draws = _draws(InitialNoise(torch.Generator().manual_seed(0), scale=0.5), 500)
    assert draws.shape == (500, HORIZON, DIMS)
    assert abs(draws.std() - 0.5) < 0.01
    assert not _draws(InitialNoise(torch.Generator().manual_seed(0), scale=0.0), 3).any()


@pytest.mark.parametrize("length", [1.0, 3.0, 8.0, 50.0])
def test_correlated_noise_has_unit_marginal_variance_and_the_kernel_along_the_horizon(length):
    draws = _draws(InitialNoise(torch.Generator().manual_seed(1), correlation=length))
    variance = draws.var(axis=0)  # per horizon step and dim
    assert np.abs(variance - 1.0).max() < 0.15 and abs(variance.mean() - 1.0) < 0.03
    along = np.einsum("nhd,nkd->hk", draws, draws) / (DRAWS * DIMS)  # covariance of horizon steps
    steps = np.arange(HORIZON)
    kernel = np.exp(-((steps[:, None] - steps[None, :]) ** 2) / (2 * length ** 2))
    assert np.abs(along - kernel).max() < 0.06
    across = np.einsum("nhd,nhe->de", draws, draws) / (DRAWS * HORIZON)  # covariance of action dims
    assert np.abs(across - np.diag(np.diag(across))).max() < 0.12  # dims stay independent


def test_correlated_noise_is_smoother_than_white_noise():
    white = _draws(InitialNoise(torch.Generator().manual_seed(2)), 200)
    smooth = _draws(InitialNoise(torch.Generator().manual_seed(2), correlation=4.0), 200)
    step = lambda x: np.abs(np.diff(x, axis=1)).mean()  # noqa: E731
    assert step(smooth) < 0.25 * step(white)  # 2 * (1 - exp(-1/32)) vs 2: ratio ~0.18 in variance


def test_correlation_factor_rows_have_unit_norm_even_when_the_kernel_is_singular():
    for length in (0.5, 5.0, 1000.0):
        factor = correlation_factor(HORIZON, length)
        assert factor.shape == (HORIZON, HORIZON)
        assert torch.allclose((factor @ factor.T).diagonal(), torch.ones(HORIZON, dtype=torch.float64))
    with pytest.raises(ValueError, match="positive"):
        correlation_factor(HORIZON, 0.0)


def test_per_episode_noise_is_reused_until_a_new_episode():
    noise = InitialNoise(torch.Generator().manual_seed(3), scale=0.7, correlation=2.0, per_episode=True)
    first = _draws(noise, 3)
    assert np.array_equal(first[0], first[1]) and np.array_equal(first[0], first[2])
    noise.new_episode()
    second = _draws(noise, 2)
    assert np.array_equal(second[0], second[1]) and not np.array_equal(first[0], second[0])
    assert abs(np.abs(np.diff(first[0], axis=0)).mean()) > 0  # the stored draw is a real draw


@pytest.mark.parametrize("options", [{"scale": -1.0}, {"scale": float("nan")}, {"correlation": -2.0},
                                     {"correlation": True}])
def test_bad_options_are_refused(options):
    with pytest.raises(ValueError, match="noise"):
        InitialNoise(torch.Generator(), **options)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    policy = build_random_policy("tiny", load_profile("aloha_sim"), ("cam_high",), seed=4)
    torch.nn.init.normal_(policy.head.velocity_out.weight, std=0.3)  # let the noise reach the chunk
    return save_checkpoint(policy, tmp_path_factory.mktemp("noise") / "ckpt")


def _observation():
    rng = np.random.default_rng(0)
    return {"cam_high": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)}, rng.uniform(-0.5, 0.5, 14)


def _runtime(checkpoint, **options):
    runtime = PolicyRuntime(checkpoint, seed=11, **options)
    runtime.set_instruction("transfer the cube")
    return runtime


def test_default_runtime_decodes_from_plain_seeded_noise(checkpoint):
    """The code before the options: normal_ into a (1, H, D) buffer with the runtime's seeded
    generator, handed to the decoder; so the same seed gives the same chunks as before."""
    images, state = _observation()
    runtime = _runtime(checkpoint)
    explicit = _runtime(checkpoint, noise_scale=1.0, noise_correlation=0.0, noise_per_episode=False)
    decode, seen = runtime._core, []

    def recording(pixels, ids, mask, state_tensor, noise, steps, given):
        seen.append(noise.clone())
        return decode(pixels, ids, mask, state_tensor, noise, steps, given)

    runtime._core = recording
    generator = torch.Generator().manual_seed(11)
    shape = (1, runtime.config.horizon, runtime.config.action_dim)
    for _ in range(3):
        assert np.array_equal(runtime.predict(images, state), explicit.predict(images, state))
        assert torch.equal(seen[-1], torch.zeros(shape).normal_(generator=generator))


def test_per_episode_runtime_repeats_its_chunk_until_new_episode(checkpoint):
    images, state = _observation()
    runtime = _runtime(checkpoint, noise_per_episode=True)
    first = [runtime.predict(images, state) for _ in range(2)]
    assert np.array_equal(first[0], first[1])
    runtime.new_episode()
    again = runtime.predict(images, state)
    assert not np.array_equal(first[0], again)
    assert np.array_equal(again, runtime.predict(images, state))


def test_noise_options_change_the_chunk_and_deterministic_mode_ignores_them(checkpoint):
    images, state = _observation()
    plain = _runtime(checkpoint).predict(images, state)
    cooler = _runtime(checkpoint, noise_scale=0.5).predict(images, state)
    zero = _runtime(checkpoint, deterministic=True).predict(images, state)
    assert not np.array_equal(plain, cooler)
    assert np.array_equal(_runtime(checkpoint, noise_scale=0.0).predict(images, state), zero)
    assert np.array_equal(_runtime(checkpoint, deterministic=True, noise_scale=3.0, noise_correlation=4.0,
                                   noise_per_episode=True).predict(images, state), zero)


def test_a_runtime_uses_the_correlation_its_checkpoint_recommends_unless_told_otherwise(tmp_path):
    """A checkpoint's recommended_noise_correlation is the runtime's default; an explicit value
    (0 included: white noise) overrides it, and a bad recommendation is refused at load."""
    policy = build_random_policy("tiny", load_profile("aloha_sim"), ("cam_high",), seed=4)
    policy.config.recommended_noise_correlation = 8.0
    checkpoint = save_checkpoint(policy, tmp_path / "recommends")
    assert _runtime(checkpoint).initial_noise.correlation == 8.0
    assert _runtime(checkpoint, noise_correlation=0.0).initial_noise.correlation == 0.0
    assert _runtime(checkpoint, noise_correlation=3.0).initial_noise.correlation == 3.0
    images, state = _observation()
    assert np.array_equal(_runtime(checkpoint).predict(images, state),
                          _runtime(checkpoint, noise_correlation=8.0).predict(images, state))
    config = tmp_path / "recommends" / "config.json"
    config.write_text(config.read_text().replace('"recommended_noise_correlation": 8.0',
                                                 '"recommended_noise_correlation": -2.0'))
    with pytest.raises(Exception, match="recommended_noise_correlation must be"):
        PolicyRuntime(checkpoint)


def test_a_runtime_uses_the_temperature_its_checkpoint_recommends_unless_told_otherwise(tmp_path):
    policy = build_random_policy("tiny", load_profile("aloha_sim"), ("cam_high",), seed=4)
    policy.config.recommended_noise_scale = 0.5
    checkpoint = save_checkpoint(policy, tmp_path / "recommends")
    assert _runtime(checkpoint).initial_noise.scale == 0.5
    assert _runtime(checkpoint, noise_scale=1.0).initial_noise.scale == 1.0
    images, state = _observation()
    assert np.array_equal(_runtime(checkpoint).predict(images, state),
                          _runtime(checkpoint, noise_scale=0.5).predict(images, state))
    config = tmp_path / "recommends" / "config.json"
    config.write_text(config.read_text().replace('"recommended_noise_scale": 0.5', '"recommended_noise_scale": -1'))
    with pytest.raises(Exception, match="recommended_noise_scale must be"):
        PolicyRuntime(checkpoint)
