"""The flow-matching recipe of the one-step policy, in ONE convention.

Convention (the paper's): t = 0 is pure noise, t = 1 is the clean action chunk.

    x_t = t * a + (1 - t) * e          e ~ N(0, I), a = normalised action chunk
    v*  = a - e                        constant along the straight path
    loss = masked MSE(v_theta(x_t, t, c), v*)

High-noise training warps a base sample u in [0, 1] with a shift alpha >= 1,

    t = u / (1 + (alpha - 1) * (1 - u)),

which moves mass toward t = 0 (noise), where the one-step decoder starts. openpi uses the opposite
convention (t = 1 is noise); mixing the two makes the shift favour CLEAN samples, which is why the
tests pin this one.

Decoding integrates dx/dt = v from t = 0 to t = 1 with Euler steps, on a uniform grid by default or
on the training distribution's grid (`time_grid(steps, alpha)`: the shift applied to the uniform
grid, so the steps are dense where training put its samples); one step is a_hat = e + v(e, 0, c)
on either grid.

Action prefix (training-time action conditioning, the one-step form of real-time chunking, Black
et al. 2025): the first d entries of a chunk may be GIVEN, the actions the robot will execute
anyway while the chunk is being computed. Given entries carry t = 1 (clean) and their true values,
the head predicts the rest at the sampled time, and the loss skips them; at run time the given
entries stay fixed through every step. The time is then per entry, (B, H) instead of (B,).
`join_prefix` then makes the decoded part leave the prefix with the prefix's own position and
velocity: a one-step decode starts a little off the prefix (its noise residue), and a step there
would be a spike of acceleration at every chunk.
"""

from __future__ import annotations

from typing import Callable

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a (B,) time, or a (B, H) time per chunk entry, over the trailing dims of `like`."""
    return t.reshape(*t.shape, *([1] * (like.dim() - t.dim()))).to(like.dtype)


def interpolate(action: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Point on the straight path from noise (t = 0) to action (t = 1)."""
    tt = _per_sample(t, action)
    return tt * action + (1.0 - tt) * noise


def velocity_target(action: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The constant velocity of the straight path: d x_t / dt."""
    return action - noise


def flow_loss(predicted: torch.Tensor, target: torch.Tensor, dim_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared velocity error over the real action dims.

    dim_mask: (D,) or broadcastable to `predicted`, 1 for dims that exist on this robot and 0 for
    padding, so that padded dims neither train nor dilute the loss.
    """
    squared = (predicted - target).pow(2)
    if dim_mask is None:
        return squared.mean()
    mask = dim_mask.to(squared.dtype).expand_as(squared)
    return (squared * mask).sum() / mask.sum().clamp_min(1.0)


def shift_time(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """Warp u in [0, 1] toward the noise end (t = 0) for alpha > 1; identity for alpha = 1."""
    if alpha < 1.0:
        raise ValueError(f"time shift alpha must be >= 1, got {alpha}")
    return u / (1.0 + (alpha - 1.0) * (1.0 - u))


def sample_time(
    batch: int,
    alpha: float = 1.0,
    beta: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training times t (B,): a uniform (or Beta(a, b)) base sample, shifted by alpha."""
    if beta is None:
        u = torch.rand(batch, generator=generator, device=device)
    else:
        a, b = beta
        # Beta via two Gamma draws keeps the generator (and so the seed) in control.
        ga = torch._standard_gamma(torch.full((batch,), float(a), device=device), generator=generator)
        gb = torch._standard_gamma(torch.full((batch,), float(b), device=device), generator=generator)
        u = ga / (ga + gb)
    return shift_time(u, alpha)


def mean_noise_level(alpha: float, samples: int = 200_001) -> float:
    """E[1 - t] under the shifted uniform distribution (0.5 for alpha = 1)."""
    u = torch.linspace(0.0, 1.0, samples, dtype=torch.float64)
    return float((1.0 - shift_time(u, alpha)).mean())


def time_grid(steps: int, alpha: float = 1.0) -> list[float]:
    """The steps + 1 decoding times from 0 (noise) to 1: the uniform grid shifted by alpha."""
    if steps < 1:
        raise ValueError(f"number of decoding steps must be >= 1, got {steps}")
    uniform = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    return [float(t) for t in shift_time(uniform, alpha)]


def prefix_times(t: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """(B,) times -> (B, H) times per entry: 1 (clean) where `given` (B, H) bool, else t."""
    return torch.where(given, torch.ones_like(t)[:, None], t[:, None].expand(given.shape))


def euler_sample(velocity: VelocityFn, noise: torch.Tensor, steps: int, alpha: float = 1.0,
                 given: torch.Tensor | None = None, given_values: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate from noise (t = 0) to an action (t = 1) with `steps` Euler steps on
    time_grid(steps, alpha) (alpha = 1: uniform).

    velocity(x, t) gets t as a (B,) tensor, or (B, H) with an action prefix; the condition is
    closed over by the caller so that it is computed once per observation and reused by every step.
    given (B, H) bool and given_values (like noise): entries that are fixed to their values (t = 1
    for them at every step); None: no prefix, as every checkpoint before prefixes existed.
    """
    grid = time_grid(steps, alpha)
    batch = noise.shape[0]
    if given is None:
        x = noise
        for start, end in zip(grid[:-1], grid[1:]):
            t = torch.full((batch,), start, dtype=noise.dtype, device=noise.device)
            x = x + (end - start) * velocity(x, t)
        return x
    fixed = given[..., None]
    x = torch.where(fixed, given_values, noise)
    for start, end in zip(grid[:-1], grid[1:]):
        t = prefix_times(torch.full((batch,), start, dtype=noise.dtype, device=noise.device), given)
        x = torch.where(fixed, x, x + (end - start) * velocity(x, t))
    return x


def join_prefix(chunk: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """chunk (B, H, D) whose first k entries (given (B, H) bool, a leading block) are a prefix:
    the decoded entries after it, bent by a cubic Hermite correction that is largest at the
    junction and gone (with its slope) at the chunk's end, so that they start where the prefix's
    last velocity leads and at that velocity. Rows with fewer than 2 given entries, or fewer than 2
    decoded ones, are returned as they are. Fixed shapes, no data-dependent branches (compilable)."""
    batch, horizon, dims = chunk.shape
    given_steps = given.sum(dim=1)
    usable = (given_steps >= 2) & (given_steps <= horizon - 2)
    first = given_steps.clamp(2, max(horizon - 2, 2))  # the first decoded entry

    def entry(offset: int) -> torch.Tensor:
        index = (first + offset).clamp(0, horizon - 1)
        return chunk.gather(1, index[:, None, None].expand(-1, 1, dims))

    velocity = entry(-1) - entry(-2)
    position_error = entry(0) - (entry(-1) + velocity)
    velocity_error = (entry(1) - entry(0)) - velocity
    span = (horizon - 1 - first).to(chunk.dtype)[:, None]  # the last entry keeps its value
    after = torch.arange(horizon, device=chunk.device)[None, :] - first[:, None]
    s = (after.to(chunk.dtype) / span).clamp(0.0, 1.0)
    h_position = 2 * s ** 3 - 3 * s ** 2 + 1  # 1 -> 0, flat at both ends
    h_velocity = span * (s ** 3 - 2 * s ** 2 + s)  # slope 1 -> 0, zero at both ends
    correction = position_error * h_position[..., None] + velocity_error * h_velocity[..., None]
    bend = (after >= 0) & usable[:, None]
    return torch.where(bend[..., None], chunk - correction, chunk)
