"""Latency-aware execution of action chunks.

A chunk (H x D) predicted from an observation captured at t0 holds in entry k the target for
t0 + k*dt. Targets are looked up by absolute time, interpolated linearly between entries, so a
chunk that arrives late (inference latency) starts at the entry for "now" and the part already in
the past is skipped by construction; nothing is aligned to the arrival time.

Overlapping chunks are blended so that the target sequence has no jump when a chunk arrives:
- 'ensemble': ACT-style temporal ensembling, weights exp(-ensemble_weight * i) with i = 0 for the
  oldest live chunk (positive weights favour older predictions, as in ACT). A new chunk's weight
  ramps in over `crossfade_ticks` and a chunk that ran out ramps out over the same time, which is
  what keeps the blend continuous when chunks come and go.
- 'crossfade': each new chunk takes over from the current blend over `crossfade_ticks` ticks
  (weight of chunk j: a_j * prod_{k>j} (1 - a_k)).
- 'replace': the newest chunk alone (a jump at each arrival; the safety filter bounds it).
While a chunk that ran out fades out it is extrapolated along its last segment, so chunks from a
consistent policy blend into exactly its plan even when the horizon is shorter than
latency + replan period + fade.

`plan(start, count)` tells a policy what will run from an observation's capture on (the targets
already handed out, then those the live chunks will give if no new chunk comes): the action prefix
that a policy trained with one continues, so that consecutive chunks agree (real-time chunking).
"""

from __future__ import annotations

import copy
import math
from collections import deque

import numpy as np

BLEND_MODES = ("ensemble", "crossfade", "replace")

# Stamps are float seconds; this absorbs rounding in "capture + k*dt == now + dt".
_TIME_TOLERANCE = 1e-6
# Targets remembered for plan(): more ticks than any inference latency plus action prefix.
HANDED_HISTORY = 64
# Orders of magnitude beyond any joint range (a broken model or a unit mix-up); refusing such
# chunks also keeps the blending arithmetic from overflowing to inf.
MAX_ABS_VALUE = 1e9


class _Chunk:
    __slots__ = ("values", "start", "end", "first_used")

    def __init__(self, values: np.ndarray, start: float, dt: float):
        self.values = values
        self.start = start
        self.end = start + (len(values) - 1) * dt
        self.first_used: float | None = None

    def at(self, query: float, dt: float) -> np.ndarray:
        """The target at absolute time `query`: interpolated inside the chunk, the first entry
        before it, and past its end extrapolated along the last segment (only ever used while
        the chunk fades out, so that a consistent successor sees no kink)."""
        position = (query - self.start) / dt
        last = len(self.values) - 1
        if position <= 0.0:
            return self.values[0]
        if position >= last:
            if last == 0:
                return self.values[0]
            index = last - 1
        else:
            index = int(position)
        fraction = position - index
        before = self.values[index]
        return before + fraction * (self.values[index + 1] - before)

    def covers(self, query: float) -> bool:
        return self.start - _TIME_TOLERANCE <= query <= self.end + _TIME_TOLERANCE


class ChunkExecutor:
    """Hands out the blended target for "now + dt" from the chunks received so far."""

    def __init__(self, dt: float, blend: str = "ensemble", *, ensemble_weight: float = 0.01,
                 crossfade_ticks: int = 5, max_chunks: int = 16, action_dim: int | None = None):
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"ChunkExecutor dt must be a positive number of seconds, got {dt!r}")
        if blend not in BLEND_MODES:
            raise ValueError(f"ChunkExecutor blend must be one of {BLEND_MODES}, got {blend!r}")
        if not (isinstance(ensemble_weight, (int, float)) and abs(ensemble_weight) <= 10.0):
            raise ValueError(f"ChunkExecutor ensemble_weight must be a number in [-10, 10], got {ensemble_weight!r}")
        if isinstance(crossfade_ticks, bool) or not isinstance(crossfade_ticks, int) or crossfade_ticks < 0:
            raise ValueError(f"ChunkExecutor crossfade_ticks must be an integer >= 0, got {crossfade_ticks!r}")
        if isinstance(max_chunks, bool) or not isinstance(max_chunks, int) or max_chunks < 1:
            raise ValueError(f"ChunkExecutor max_chunks must be an integer >= 1, got {max_chunks!r}")
        self.dt = float(dt)
        self.blend = blend
        self.ensemble_weight = float(ensemble_weight)
        self.crossfade_ticks = crossfade_ticks
        self.max_chunks = max_chunks
        self.action_dim = action_dim
        self._chunks: list[_Chunk] = []
        self._last_query: float | None = None
        # (query time, target) of the targets handed out lately, oldest first: what plan() reports
        # for times already past. A hold (no target) breaks the sequence.
        self._handed: deque[tuple[float, np.ndarray]] = deque(maxlen=HANDED_HISTORY)

    @property
    def live_chunks(self) -> int:
        return len(self._chunks)

    def covered_until(self) -> float | None:
        """The last time any live chunk has a target for (None without chunks)."""
        return max((c.end for c in self._chunks), default=None)

    def clear(self) -> None:
        self._chunks.clear()
        self._handed.clear()

    def plan(self, start: float, count: int) -> np.ndarray:
        """The targets for start, start + dt, ... (at most `count`, (k, D)): those already handed
        out (interpolated between ticks), then those target() will hand out if no chunk is added
        (found on a copy, so nothing here changes). It stops at the first time nothing covers: the
        time is older than the remembered targets, a hold broke them, or the chunks run out."""
        entries: list[np.ndarray] = []
        future: ChunkExecutor | None = None
        for k in range(max(int(count), 0)):
            query = start + k * self.dt
            if self._last_query is not None and query <= self._last_query + _TIME_TOLERANCE:
                value = self._handed_at(query)
            else:
                if future is None:
                    future = copy.deepcopy(self)
                value = future.target(query - self.dt)
            if value is None:
                break
            entries.append(np.array(value, dtype=np.float64, copy=True))
        width = self.action_dim or (entries[0].shape[0] if entries else 0)
        return np.array(entries, dtype=np.float64).reshape(len(entries), width)

    def _handed_at(self, query: float) -> np.ndarray | None:
        """The handed-out target at `query`, interpolated between two consecutive ticks (at most
        1.5 dt apart: a real timer jitters, a skipped tick means the plan was not followed)."""
        handed = list(self._handed)
        for index, (time, value) in enumerate(handed):
            if abs(query - time) <= _TIME_TOLERANCE:
                return value
            if index + 1 < len(handed):
                next_time, next_value = handed[index + 1]
                if time < query < next_time and next_time - time <= 1.5 * self.dt:
                    return value + (query - time) / (next_time - time) * (next_value - value)
        return None

    def add_chunk(self, chunk, capture_time: float) -> bool:
        """Queue a chunk predicted from an observation captured at `capture_time`.

        Raises ValueError for a malformed chunk (shape, non-finite values or stamp). Returns False
        when the chunk lies entirely before the last target handed out (it could only go back in
        time); True when it was queued.
        """
        values = np.array(chunk, dtype=np.float64, copy=True)
        if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
            raise ValueError(f"a chunk must be an H x D array with H, D >= 1, got shape {values.shape}")
        if self.action_dim is not None and values.shape[1] != self.action_dim:
            raise ValueError(f"a chunk must have {self.action_dim} columns, got shape {values.shape}")
        if not np.isfinite(values).all():
            raise ValueError("a chunk holds non-finite values")
        if np.abs(values).max() > MAX_ABS_VALUE:
            raise ValueError(f"a chunk holds values beyond +-{MAX_ABS_VALUE:g}")
        if isinstance(capture_time, bool) or not isinstance(capture_time, (int, float)) or not math.isfinite(capture_time):
            raise ValueError(f"capture_time must be a finite number of seconds, got {capture_time!r}")
        queued = _Chunk(values, float(capture_time), self.dt)
        if self._last_query is not None and queued.end < self._last_query - _TIME_TOLERANCE:
            return False
        self._chunks.append(queued)
        if len(self._chunks) > self.max_chunks:
            del self._chunks[0]
        return True

    def target(self, now: float) -> np.ndarray | None:
        """The target for now + dt, or None when no chunk covers that time (the caller holds)."""
        query = now + self.dt
        self._last_query = query
        if not any(c.covers(query) for c in self._chunks):
            # Ran out: what is left is either in the past (dropped) or not yet started.
            self._chunks = [c for c in self._chunks if c.start > query]
            self._handed.clear()
            return None
        for chunk in self._chunks:
            if chunk.first_used is None:
                chunk.first_used = now
        if self.blend == "replace":
            del self._chunks[:-1]
            value = self._chunks[-1].at(query, self.dt).copy()
        elif self.blend == "crossfade":
            value = self._crossfade(now, query)
        else:
            value = self._ensemble(now, query)
        self._handed.append((query, value.copy()))  # the caller may change its copy
        return value

    def _ramp_in(self, chunk: _Chunk, now: float) -> float:
        ticks_used = (now - chunk.first_used) / self.dt + 1.0
        return min(1.0, ticks_used / (self.crossfade_ticks + 1))

    def _crossfade(self, now: float, query: float) -> np.ndarray:
        ramps = [self._ramp_in(c, now) for c in self._chunks]
        ramps[0] = 1.0
        newest_complete = max(i for i, a in enumerate(ramps) if a >= 1.0)
        if newest_complete:  # older chunks carry zero weight from now on
            del self._chunks[:newest_complete]
            del ramps[:newest_complete]
        blended = self._chunks[0].at(query, self.dt)
        for chunk, ramp in zip(self._chunks[1:], ramps[1:]):
            blended = blended + ramp * (chunk.at(query, self.dt) - blended)
        return np.array(blended, dtype=np.float64, copy=True)

    def _ensemble(self, now: float, query: float) -> np.ndarray:
        fade_time = (self.crossfade_ticks + 1) * self.dt
        kept, weights = [], []
        for chunk in self._chunks:
            ramp_out = 1.0 if query <= chunk.end else 1.0 - (query - chunk.end) / fade_time
            if ramp_out <= 0.0:
                continue
            kept.append(chunk)
            weights.append(self._ramp_in(chunk, now) * ramp_out)
        self._chunks = kept
        total = np.zeros_like(kept[0].values[0])
        weight_sum = 0.0
        for order, (chunk, weight) in enumerate(zip(kept, weights)):
            weight *= math.exp(-self.ensemble_weight * order)
            total += weight * chunk.at(query, self.dt)
            weight_sum += weight
        return total / weight_sum
