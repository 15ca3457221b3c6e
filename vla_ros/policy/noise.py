"""The initial noise of the Euler integration, and the sampling options that shape it.

One-step decoding returns a_hat = e + v(e, 0, c). A perfect model would cancel e entirely (at t = 0
the best velocity is E[a | c] - e), but a trained one lets part of it through, and white noise
along the chunk's time axis leaks through as tick-to-tick jitter (docs/experiments.md, "Smoothness
of one-step chunks"). Three options change what the head starts from; a checkpoint may recommend a
correlation (PolicyConfig.recommended_noise_correlation), which runtimes use unless told otherwise:

- scale (temperature): e = scale * z. 1 is the training distribution, 0 is deterministic decoding.
- correlation (horizon steps): z is smooth along the horizon, with a squared-exponential kernel
  k(i, j) = exp(-(i - j)^2 / (2 * correlation^2)) and unit marginal variance, independent across
  action dims. 0 is white noise.
- per_episode: one draw per episode, reused by every chunk until new_episode() (the node's enable),
  so consecutive chunks start from the same noise.

With the defaults (1, 0, False) every call draws `normal_` into the buffer with the runtime's
generator, exactly as before these options existed, so seeded chunks are unchanged.
"""

from __future__ import annotations

import math

import torch


def correlation_factor(horizon: int, correlation: float) -> torch.Tensor:
    """A (horizon, horizon) float64 matrix F with F @ z ~ N(0, K) for white z: K the squared-
    exponential kernel with length `correlation` (horizon steps), rescaled to a unit diagonal.

    The symmetric square root of K (eigenvalues clipped at 0) exists for any length, where a
    Cholesky factor fails once K is numerically singular (long lengths)."""
    if not (math.isfinite(correlation) and correlation > 0):
        raise ValueError(f"noise correlation must be a positive number of horizon steps, got {correlation!r}")
    steps = torch.arange(horizon, dtype=torch.float64)
    kernel = torch.exp(-((steps[:, None] - steps[None, :]) ** 2) / (2.0 * correlation ** 2))
    values, vectors = torch.linalg.eigh(kernel)
    root = vectors @ torch.diag(values.clamp_min(0.0).sqrt()) @ vectors.T
    return root / root.norm(dim=1, keepdim=True)  # each row of unit norm: unit marginal variance


class InitialNoise:
    """Fills the runtime's noise buffer (B, horizon, dims) once per predict; see the module docstring."""

    def __init__(self, generator: torch.Generator, scale: float = 1.0, correlation: float = 0.0,
                 per_episode: bool = False):
        for name, value in (("noise scale", scale), ("noise correlation", correlation)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.generator = generator
        self.scale = float(scale)
        self.correlation = float(correlation)
        self.per_episode = bool(per_episode)
        self._factor: torch.Tensor | None = None
        self._episode_noise: torch.Tensor | None = None

    @property
    def is_default(self) -> bool:
        return self.scale == 1.0 and self.correlation == 0.0 and not self.per_episode

    def describe(self) -> dict:
        return {"noise_scale": self.scale, "noise_correlation": self.correlation,
                "noise_per_episode": self.per_episode}

    def new_episode(self) -> None:
        """The next fill draws again (per-episode noise); a no-op for the other modes."""
        self._episode_noise = None

    def fill(self, buffer: torch.Tensor) -> None:
        """Write the noise for one predict into `buffer` in place."""
        if self.per_episode and self._episode_noise is not None and self._episode_noise.shape == buffer.shape:
            buffer.copy_(self._episode_noise)
            return
        buffer.normal_(generator=self.generator)
        if self.correlation > 0.0:
            if self._factor is None or self._factor.shape[0] != buffer.shape[1]:
                self._factor = correlation_factor(buffer.shape[1], self.correlation).to(buffer.device, buffer.dtype)
            buffer.copy_(torch.einsum("hk,bkd->bhd", self._factor, buffer))
        if self.scale != 1.0:
            buffer.mul_(self.scale)
        if self.per_episode:
            self._episode_noise = buffer.clone()
