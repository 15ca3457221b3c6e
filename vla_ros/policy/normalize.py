"""Normalisation of robot state and actions from dataset statistics.

The flow head works in normalised units (noise is N(0, I), so actions must be of order one).
Three modes, chosen per checkpoint:
- "mean_std": x_n = (x - mean) / max(std, eps)
- "min_max":  x_n = (x - (max + min) / 2) / max((max - min) / 2, eps), i.e. [min, max] -> [-1, 1]
- "quantile": the same with the 1st and 99th percentiles, [q01, q99] -> [-1, 1], as openpi's
  quantile normalisation (pi0-FAST, pi0.5): a few outliers do not squash everything else.
eps is a floor on the spread: a dim that never moved in the data (std 0) would otherwise turn
tiny run-time deviations into huge inputs.

The raw statistics (mean, std, min, max, and q01/q99 of state and action, exact) are what is
stored (stats.json, float64 as JSON numbers, which round-trip exactly); the normaliser derives
centre and scale. Statistics saved before the quantiles existed load without them and serve
every mode but "quantile".

Several datasets mixed with weights (vla_ros.policy.batches.MixedSamples) get the statistics of
the mixture the model trains on (mixture_stats): each row of dataset i weighs weights[i] / rows_i,
so a dataset contributes its share of the draws whatever its size; quantiles are weighted
(the inverse of the weighted empirical distribution function).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

MODES = ("mean_std", "min_max", "quantile")
STAT_KEYS = ("mean", "std", "min", "max")
QUANTILE_KEYS = ("q01", "q99")  # LeRobot's names for the 1st and 99th percentiles


class StatsError(ValueError):
    """Statistics that are missing, malformed or inconsistent."""


def _vector_stats(values: np.ndarray, what: str) -> dict[str, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim < 1 or values.size == 0:
        raise StatsError(f"{what}: need a non-empty array (..., D), got shape {values.shape}")
    flat = values.reshape(-1, values.shape[-1])
    if not np.isfinite(flat).all():
        raise StatsError(f"{what}: contains non-finite values")
    return {"mean": flat.mean(0), "std": flat.std(0), "min": flat.min(0), "max": flat.max(0),
            "q01": np.quantile(flat, 0.01, axis=0), "q99": np.quantile(flat, 0.99, axis=0)}


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs: Sequence[float]) -> list[float]:
    """For each q, the smallest value whose cumulative weight reaches q of the total (inverted CDF)."""
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    positions = np.minimum(np.searchsorted(cumulative, np.asarray(qs) * cumulative[-1], side="left"), len(values) - 1)
    return [float(values[order[position]]) for position in positions]


def mixture_stats(parts: Sequence[np.ndarray], weights: Sequence[float], what: str) -> dict[str, np.ndarray]:
    """Statistics of rows drawn from parts[i] (each (N_i, D)) with probability weights[i]
    (normalised), uniformly within a part. Computed one column at a time in float64, so a large
    float32 table is never copied whole. One part: unweighted, as _vector_stats computes them."""
    weights = np.asarray(weights, dtype=np.float64)
    kept = [(np.asarray(part), float(w)) for part, w in zip(parts, weights) if w > 0 and len(part)]
    if not kept or len({part.shape[1:] for part, _ in kept}) != 1 or kept[0][0].ndim != 2:
        raise StatsError(f"{what}: need non-empty (N, D) tables of one width with a positive weight, got shapes "
                         f"{[np.shape(p) for p in parts]} and weights {weights.tolist()}")
    dims = kept[0][0].shape[1]
    row_weights = np.concatenate([np.full(len(part), w / len(part)) for part, w in kept]) if len(kept) > 1 else None
    columns = []
    for j in range(dims):
        if len(kept) == 1:
            columns.append(_vector_stats(kept[0][0][:, j:j + 1], f"{what}[{j}]"))
            continue
        values = np.concatenate([part[:, j].astype(np.float64) for part, _ in kept])
        if not np.isfinite(values).all():
            raise StatsError(f"{what}: contains non-finite values")
        mean = np.average(values, weights=row_weights)
        q01, q99 = _weighted_quantiles(values, row_weights, (0.01, 0.99))
        columns.append({"mean": mean, "std": np.sqrt(np.average((values - mean) ** 2, weights=row_weights)),
                        "min": values.min(), "max": values.max(), "q01": q01, "q99": q99})
    return {key: np.array([np.asarray(column[key]).reshape(-1)[0] for column in columns], dtype=np.float64)
            for key in STAT_KEYS + QUANTILE_KEYS}


@dataclass
class NormStats:
    """Per-dim statistics of state and action and how to normalise with them."""

    state: dict[str, np.ndarray]
    action: dict[str, np.ndarray]
    mode: str = "mean_std"
    eps: float = 1e-2
    extra: dict = field(default_factory=dict)  # provenance, e.g. {"source": "profile limits"}

    def __post_init__(self):
        if self.mode not in MODES:
            raise StatsError(f"normalisation mode must be one of {MODES}, got '{self.mode}'")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise StatsError(f"eps must be a positive number, got {self.eps!r}")
        needed = STAT_KEYS + (QUANTILE_KEYS if self.mode == "quantile" else ())
        for name, stats in (("state", self.state), ("action", self.action)):
            missing = [k for k in needed if k not in stats]
            if missing:
                raise StatsError(f"{name} statistics lack {missing}" + (
                    " (quantile normalisation needs q01 and q99)" if set(missing) <= set(QUANTILE_KEYS) else ""))
            arrays = {k: np.asarray(stats[k], dtype=np.float64) for k in STAT_KEYS + QUANTILE_KEYS if k in stats}
            dims = {a.shape for a in arrays.values()}
            if len(dims) != 1 or len(next(iter(dims))) != 1:
                raise StatsError(f"{name} statistics must be 1-D vectors of one length, got shapes {dims}")
            if not all(np.isfinite(a).all() for a in arrays.values()):
                raise StatsError(f"{name} statistics contain non-finite values")
            stats.update(arrays)

    @property
    def state_dim(self) -> int:
        return int(self.state["mean"].shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.action["mean"].shape[0])

    @classmethod
    def from_arrays(cls, states: np.ndarray, actions: np.ndarray, mode: str = "mean_std",
                    eps: float = 1e-2) -> "NormStats":
        """Statistics of states (..., Ds) and actions (..., Da), e.g. a whole dataset in memory."""
        return cls(_vector_stats(states, "states"), _vector_stats(actions, "actions"), mode, eps)

    def center_scale(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        stats = self.state if which == "state" else self.action
        if self.mode == "mean_std":
            center, spread = stats["mean"], stats["std"]
        else:
            low, high = ("min", "max") if self.mode == "min_max" else QUANTILE_KEYS
            center, spread = (stats[high] + stats[low]) / 2.0, (stats[high] - stats[low]) / 2.0
        return center, np.maximum(spread, self.eps)

    def to_json(self) -> dict:
        return {
            "mode": self.mode,
            "eps": self.eps,
            "state": {k: v.tolist() for k, v in self.state.items() if k in STAT_KEYS + QUANTILE_KEYS},
            "action": {k: v.tolist() for k, v in self.action.items() if k in STAT_KEYS + QUANTILE_KEYS},
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: dict) -> "NormStats":
        try:
            return cls(
                state={k: np.asarray(v, dtype=np.float64) for k, v in data["state"].items()
                       if k in STAT_KEYS + QUANTILE_KEYS},
                action={k: np.asarray(v, dtype=np.float64) for k, v in data["action"].items()
                        if k in STAT_KEYS + QUANTILE_KEYS},
                mode=data["mode"], eps=data["eps"], extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise StatsError(f"malformed statistics: missing or invalid {error}") from error
        except ValueError as error:
            raise StatsError(f"malformed statistics: {error}") from error

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NormStats":
        path = Path(path)
        if not path.is_file():
            raise StatsError(f"{path}: statistics file is missing")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise StatsError(f"{path}: not valid JSON ({error})") from error
        try:
            return cls.from_json(data)
        except StatsError as error:
            raise StatsError(f"{path}: {error}") from error


class Normalizer(nn.Module):
    """Applies NormStats on the model's device; centre/scale are buffers saved with the weights."""

    def __init__(self, stats: NormStats):
        super().__init__()
        self.mode = stats.mode
        for which in ("state", "action"):
            center, scale = stats.center_scale(which)
            self.register_buffer(f"{which}_center", torch.tensor(center, dtype=torch.float32))
            self.register_buffer(f"{which}_scale", torch.tensor(scale, dtype=torch.float32))

    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        return (state - self.state_center) / self.state_scale

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return (action - self.action_center) / self.action_scale

    def denormalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return action * self.action_scale + self.action_center
