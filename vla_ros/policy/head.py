"""The flow-matching action head: a small pre-LayerNorm transformer that predicts a velocity.

One sequence per sample is processed with full self-attention:

    [condition tokens (projected VLM hidden states) | one robot-state token | H noisy action tokens]

Each action token carries its noisy action x_t, a learned chunk-position embedding and the flow
time t (a sinusoidal embedding mixed into the token by an MLP, so the time can modulate every
action feature). The head returns one velocity per action token; with the convention of flow.py
(t = 0 noise, t = 1 action) that velocity is d x_t / dt.

forward has no data-dependent Python control flow and fixed shapes (padding is expressed with a
boolean key mask handed to scaled_dot_product_attention), so it can be torch.compile'd and
CUDA-graph captured. The output projection starts at zero: an untrained head predicts v = 0, so
the first updates are not dominated by a random velocity field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class HeadConfig:
    """Shape of the action head; stored in a checkpoint's config.json."""

    condition_dim: int  # width of incoming condition tokens (VLM hidden size)
    state_dim: int = 14
    action_dim: int = 14
    horizon: int = 10
    width: int = 768
    depth: int = 4
    heads: int = 12
    mlp_dim: int = 3072

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HeadConfig.{f.name} must be a positive integer, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"HeadConfig.width ({self.width}) must be divisible by heads ({self.heads})")
        if (self.width // self.heads) % 2:
            raise ValueError(f"HeadConfig head size width/heads = {self.width // self.heads} must be even")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HeadConfig":
        """Build from a config.json mapping; unknown keys are an error (a typo must not pass)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown HeadConfig keys: {unknown}")
        return cls(**data)


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """(B,) times in [0, 1] -> (B, dim) sin/cos features; t is scaled by 1000 so that the
    highest frequencies resolve the small time differences near the noise end."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
    frequencies = torch.exp(-math.log(max_period) * exponent)
    angles = (t.float() * 1000.0)[:, None] * frequencies[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class _Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, width: int, heads: int, mlp_dim: int):
        super().__init__()
        self.attention_norm = nn.LayerNorm(width)
        self.attention = _Attention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_dim), nn.GELU(approximate="tanh"), nn.Linear(mlp_dim, width))

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), key_mask)
        return x + self.mlp(self.mlp_norm(x))


class ActionHead(nn.Module):
    """v_theta(x_t, t, state, condition): the velocity of every action in the chunk."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        width = config.width
        self.condition_in = nn.Linear(config.condition_dim, width)
        self.state_in = nn.Linear(config.state_dim, width)
        self.action_in = nn.Linear(config.action_dim, width)
        self.action_position = nn.Parameter(torch.zeros(1, config.horizon, width))
        # Token-type embeddings let attention tell condition, state and actions apart cheaply.
        self.token_type = nn.Parameter(torch.zeros(3, width))
        self.time_mix = nn.Sequential(nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(_Block(width, config.heads, config.mlp_dim) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(width)
        self.velocity_out = nn.Linear(width, config.action_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """PyTorch's fan-in scaled default for the linears (a fixed std such as 0.02 is far too
        small for narrow heads and stalls them); only the output projection starts at zero."""
        nn.init.normal_(self.action_position, std=1.0)
        nn.init.normal_(self.token_type, std=0.1)
        nn.init.zeros_(self.velocity_out.weight)
        nn.init.zeros_(self.velocity_out.bias)

    def _check_inputs(self, condition: Tensor, condition_mask: Tensor | None, state: Tensor,
                      noisy_actions: Tensor, t: Tensor) -> None:
        """Shape checks only (no values are read), so compiled graphs keep static guards."""
        c = self.config
        if condition.dim() != 3 or condition.shape[-1] != c.condition_dim:
            raise ValueError(f"condition must be (B, N, {c.condition_dim}), got {tuple(condition.shape)}")
        batch, tokens = condition.shape[:2]
        if condition_mask is not None and (condition_mask.shape != (batch, tokens) or condition_mask.dtype != torch.bool):
            raise ValueError(
                f"condition_mask must be a bool tensor of shape {(batch, tokens)}, got "
                f"{condition_mask.dtype} {tuple(condition_mask.shape)}"
            )
        if state.shape != (batch, c.state_dim):
            raise ValueError(f"state must be {(batch, c.state_dim)}, got {tuple(state.shape)}")
        if noisy_actions.shape != (batch, c.horizon, c.action_dim):
            raise ValueError(f"noisy_actions must be {(batch, c.horizon, c.action_dim)}, got {tuple(noisy_actions.shape)}")
        if t.shape != (batch,):
            raise ValueError(f"t must be ({batch},), got {tuple(t.shape)}")

    def forward(self, condition: Tensor, condition_mask: Tensor | None, state: Tensor,
                noisy_actions: Tensor, t: Tensor) -> Tensor:
        """condition (B, N, condition_dim), condition_mask (B, N) bool (True = real token) or None,
        state (B, state_dim) normalised, noisy_actions (B, horizon, action_dim) = x_t, t (B,) in
        [0, 1] -> velocity (B, horizon, action_dim)."""
        self._check_inputs(condition, condition_mask, state, noisy_actions, t)
        dtype = self.action_in.weight.dtype
        condition_tokens = self.condition_in(condition.to(dtype)) + self.token_type[0]
        state_token = (self.state_in(state.to(dtype)) + self.token_type[1]).unsqueeze(1)
        action_tokens = self.action_in(noisy_actions.to(dtype)) + self.action_position + self.token_type[2]
        time = sinusoidal_embedding(t, self.config.width).to(dtype)
        time = time.unsqueeze(1).expand(-1, self.config.horizon, -1)
        action_tokens = self.time_mix(torch.cat([action_tokens, time], dim=-1))

        x = torch.cat([condition_tokens, state_token, action_tokens], dim=1)
        key_mask = None
        if condition_mask is not None:
            always = torch.ones(x.shape[0], 1 + self.config.horizon, dtype=torch.bool, device=x.device)
            # (B, 1, 1, L): every query may attend to the real keys only.
            key_mask = torch.cat([condition_mask, always], dim=1)[:, None, None, :]
        for block in self.blocks:
            x = block(x, key_mask)
        action_out = self.final_norm(x[:, -self.config.horizon:])
        return self.velocity_out(action_out)
