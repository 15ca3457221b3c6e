"""The flow-matching action head: a small pre-LayerNorm transformer that predicts a velocity.

One sequence per sample:

    [condition tokens (projected VLM hidden states) | one robot-state token | H noisy action tokens]

Each action token carries its noisy action x_t, a learned chunk-position embedding and the flow
time t (a sinusoidal embedding mixed into the token by an MLP, so the time can modulate every
action feature). t is one time per sample (B,) or one per chunk entry (B, H): entries given as an
action prefix carry t = 1 (flow.py). The head returns one velocity per action token; with the convention of flow.py
(t = 0 noise, t = 1 action) that velocity is d x_t / dt.

Attention layout (HeadConfig.attention, recorded in every checkpoint):
- "block_causal" (the default, as pi0's prefix/suffix blocks): condition tokens attend to the
  condition only, the state token to the condition and itself, action tokens to everything. The
  condition and state rows then do not depend on x_t or t, so their keys and values are computed
  once per observation (`encode_condition` -> HeadCache) and every Euler step (`step`) runs the H
  action tokens only. Self-attention with a mask, rather than cross-attention, keeps the weights of
  both layouts identical, so a layout is a config value and not a different network.
- "bidirectional" (checkpoints written before the field existed): every token attends to every
  token, so the condition rows change with x_t and must be recomputed at every step; such a head
  has no cache (`encode_condition` refuses it) and is only run through `forward`.

forward has no data-dependent Python control flow and fixed shapes (padding is expressed with a
boolean mask handed to scaled_dot_product_attention), so it can be torch.compile'd and
CUDA-graph captured. The output projection starts at zero: an untrained head predicts v = 0, so
the first updates are not dominated by a random velocity field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BIDIRECTIONAL = "bidirectional"
BLOCK_CAUSAL = "block_causal"
ATTENTION_LAYOUTS = (BLOCK_CAUSAL, BIDIRECTIONAL)
# Block ids of the token types: a query sees keys of its own block and of the blocks before it.
_CONDITION_BLOCK, _STATE_BLOCK, _ACTION_BLOCK = 0, 1, 2


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
    attention: str = BLOCK_CAUSAL  # see the module docstring

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "attention":
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HeadConfig.{f.name} must be a positive integer, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"HeadConfig.width ({self.width}) must be divisible by heads ({self.heads})")
        if (self.width // self.heads) % 2:
            raise ValueError(f"HeadConfig head size width/heads = {self.width // self.heads} must be even")
        if self.attention not in ATTENTION_LAYOUTS:
            raise ValueError(f"HeadConfig.attention must be one of {ATTENTION_LAYOUTS}, got {self.attention!r}")

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HeadConfig":
        """Build from a config.json mapping; unknown keys are an error (a typo must not pass).
        A mapping without 'attention' was written before the field existed: its head is
        bidirectional."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown HeadConfig keys: {unknown}")
        return cls(**{"attention": BIDIRECTIONAL, **data})


class HeadCache(NamedTuple):
    """What a block-causal head keeps per observation: every layer's keys and values of the
    condition and state tokens (B, heads, N + 1, head size), and which of them are real."""

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    key_mask: Tensor | None  # (B, 1, 1, N + 1) bool, True = real token; None: all real

    def repeat_interleave(self, draws: int) -> "HeadCache":
        """Each sample's cache `draws` times in a row: several (t, noise) draws per condition."""
        def repeat(tensor: Tensor) -> Tensor:
            return tensor.repeat_interleave(draws, dim=0)

        mask = None if self.key_mask is None else repeat(self.key_mask)
        return HeadCache(tuple(map(repeat, self.keys)), tuple(map(repeat, self.values)), mask)


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """(B,) or (B, H) times in [0, 1] -> (..., dim) sin/cos features; t is scaled by 1000 so that
    the highest frequencies resolve the small time differences near the noise end."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
    frequencies = torch.exp(-math.log(max_period) * exponent)
    angles = (t.float() * 1000.0)[..., None] * frequencies
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def project(self, x: Tensor) -> Tensor:
        """(B, L, width) -> stacked queries, keys, values (3, B, heads, L, head size)."""
        batch, length, width = x.shape
        return self.qkv(x).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)

    def forward(self, x: Tensor, mask: Tensor | None,
                past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x's queries attend to [past keys/values, x's own]; returns the output and x's own keys
        and values (what a cache keeps)."""
        batch, length, width = x.shape
        q, k, v = self.project(x)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2))
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(batch, length, width)), k, v


class _Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, width: int, heads: int, mlp_dim: int):
        super().__init__()
        self.attention_norm = nn.LayerNorm(width)
        self.attention = _Attention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_dim), nn.GELU(approximate="tanh"), nn.Linear(mlp_dim, width))

    def forward(self, x: Tensor, mask: Tensor | None,
                past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        attended, k, v = self.attention(self.attention_norm(x), mask, past)
        x = x + attended
        return x + self.mlp(self.mlp_norm(x)), (k, v)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """This layer's keys and values of x, without the rest of the block."""
        _, k, v = self.attention.project(self.attention_norm(x))
        return k, v


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

    @property
    def cacheable(self) -> bool:
        """Whether the condition's keys and values can be computed once for every Euler step."""
        return self.config.attention == BLOCK_CAUSAL

    # ---- checks (shapes only: no values are read, so compiled graphs keep static guards) ------
    def _check_condition(self, condition: Tensor, condition_mask: Tensor | None, state: Tensor) -> None:
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

    def _check_actions(self, batch: int, noisy_actions: Tensor, t: Tensor) -> None:
        c = self.config
        if noisy_actions.shape != (batch, c.horizon, c.action_dim):
            raise ValueError(f"noisy_actions must be {(batch, c.horizon, c.action_dim)}, got {tuple(noisy_actions.shape)}")
        if t.shape not in ((batch,), (batch, c.horizon)):
            raise ValueError(f"t must be ({batch},) or ({batch}, {c.horizon}), got {tuple(t.shape)}")

    # ---- tokens and masks --------------------------------------------------------------------
    def _condition_and_state_tokens(self, condition: Tensor, state: Tensor) -> Tensor:
        dtype = self.action_in.weight.dtype
        condition_tokens = self.condition_in(condition.to(dtype)) + self.token_type[0]
        state_token = (self.state_in(state.to(dtype)) + self.token_type[1]).unsqueeze(1)
        return torch.cat([condition_tokens, state_token], dim=1)

    def _action_tokens(self, noisy_actions: Tensor, t: Tensor) -> Tensor:
        dtype = self.action_in.weight.dtype
        action_tokens = self.action_in(noisy_actions.to(dtype)) + self.action_position + self.token_type[2]
        time = sinusoidal_embedding(t, self.config.width).to(dtype)
        if t.dim() == 1:
            time = time.unsqueeze(1).expand(-1, self.config.horizon, -1)
        return self.time_mix(torch.cat([action_tokens, time], dim=-1))

    @staticmethod
    def _real_keys(condition_mask: Tensor | None, batch: int, others: int, device) -> Tensor | None:
        """(B, 1, 1, N + others) True for real keys (state and action tokens always are)."""
        if condition_mask is None:
            return None
        always = torch.ones(batch, others, dtype=torch.bool, device=device)
        return torch.cat([condition_mask, always], dim=1)[:, None, None, :]

    def _block_causal_mask(self, tokens: int, with_actions: bool, real_keys: Tensor | None, device) -> Tensor:
        """(L, L) or (B, 1, L, L): a query sees keys of its own block and earlier blocks."""
        parts = [torch.full((tokens,), _CONDITION_BLOCK, device=device), torch.full((1,), _STATE_BLOCK, device=device)]
        if with_actions:
            parts.append(torch.full((self.config.horizon,), _ACTION_BLOCK, device=device))
        block = torch.cat(parts)
        allowed = block[:, None] >= block[None, :]
        return allowed if real_keys is None else allowed[None, None] & real_keys

    # ---- the head ----------------------------------------------------------------------------
    def forward(self, condition: Tensor, condition_mask: Tensor | None, state: Tensor,
                noisy_actions: Tensor, t: Tensor) -> Tensor:
        """condition (B, N, condition_dim), condition_mask (B, N) bool (True = real token) or None,
        state (B, state_dim) normalised, noisy_actions (B, horizon, action_dim) = x_t, t (B,) or
        (B, horizon) in [0, 1] -> velocity (B, horizon, action_dim). The whole sequence in one pass (training)."""
        self._check_condition(condition, condition_mask, state)
        batch, tokens = condition.shape[:2]
        self._check_actions(batch, noisy_actions, t)
        x = torch.cat([self._condition_and_state_tokens(condition, state), self._action_tokens(noisy_actions, t)], dim=1)
        real_keys = self._real_keys(condition_mask, batch, 1 + self.config.horizon, x.device)
        if self.cacheable:
            mask = self._block_causal_mask(tokens, True, real_keys, x.device)
        else:
            mask = real_keys  # (B, 1, 1, L): every query may attend to the real keys only
        for block in self.blocks:
            x, _ = block(x, mask)
        return self.velocity_out(self.final_norm(x[:, -self.config.horizon:]))

    def encode_condition(self, condition: Tensor, condition_mask: Tensor | None, state: Tensor) -> HeadCache:
        """Every layer's keys and values of the condition and state tokens, once per observation
        (block-causal heads only: a bidirectional head's condition depends on x_t)."""
        if not self.cacheable:
            raise ValueError(f"a head with attention '{self.config.attention}' cannot cache its condition "
                             f"(its condition tokens attend to the noisy actions); run it through forward()")
        self._check_condition(condition, condition_mask, state)
        batch, tokens = condition.shape[:2]
        x = self._condition_and_state_tokens(condition, state)
        real_keys = self._real_keys(condition_mask, batch, 1, x.device)
        mask = self._block_causal_mask(tokens, False, real_keys, x.device)
        keys, values = [], []
        for index, block in enumerate(self.blocks):
            if index + 1 < len(self.blocks):
                x, (k, v) = block(x, mask)
            else:  # the last layer's condition outputs feed nothing: its keys and values suffice
                k, v = block.keys_values(x)
            keys.append(k)
            values.append(v)
        return HeadCache(tuple(keys), tuple(values), real_keys)

    def step(self, cache: HeadCache, noisy_actions: Tensor, t: Tensor) -> Tensor:
        """The velocity from a cached condition: only the H action tokens run through the layers."""
        batch = cache.keys[0].shape[0]
        self._check_actions(batch, noisy_actions, t)
        x = self._action_tokens(noisy_actions, t)
        mask = None
        if cache.key_mask is not None:
            always = torch.ones(batch, 1, 1, self.config.horizon, dtype=torch.bool, device=x.device)
            mask = torch.cat([cache.key_mask, always], dim=-1)
        for block, k, v in zip(self.blocks, cache.keys, cache.values):
            x, _ = block(x, mask, past=(k, v))
        return self.velocity_out(self.final_norm(x))
