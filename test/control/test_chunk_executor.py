import numpy as np
import pytest

from vla_ros.control.chunks import BLEND_MODES, ChunkExecutor

DT = 0.02
SLOPE = np.array([0.5, -1.0, 0.25])  # per second; a linear plan is interpolated exactly


def plan(t):
    return 0.1 + SLOPE * t


def chunk_from(capture, horizon=10, offset=0.0):
    return np.stack([plan(capture + k * DT) + offset for k in range(horizon)])


def run(executor, ticks, arrivals, start=1.0):
    """arrivals: {tick: (chunk, capture_time)}; returns the targets handed out per tick."""
    targets = []
    for k in range(ticks):
        if k in arrivals:
            executor.add_chunk(*arrivals[k])
        targets.append(executor.target(start + k * DT))
    return targets


@pytest.mark.parametrize("blend", BLEND_MODES)
def test_a_chunk_arriving_three_ticks_late_is_aligned_to_its_capture_time(blend):
    executor = ChunkExecutor(DT, blend)
    capture = 1.0 - 3 * DT  # predicted from an observation three ticks old
    assert executor.add_chunk(chunk_from(capture), capture)
    target = executor.target(1.0)
    np.testing.assert_allclose(target, plan(1.0 + DT))  # entry 4, not entry 0: the past is skipped


@pytest.mark.parametrize("blend", BLEND_MODES)
def test_consistent_late_chunks_give_the_plan_with_no_jump_at_arrivals(blend):
    # A chunk every 5 ticks, each arriving 3 ticks after its capture.
    arrivals = {k + 3: (chunk_from(1.0 + k * DT), 1.0 + k * DT) for k in range(0, 40, 5)}
    targets = run(ChunkExecutor(DT, blend), 44, arrivals)
    for k in range(3, 44):
        np.testing.assert_allclose(targets[k], plan(1.0 + k * DT + DT), atol=1e-12)


@pytest.mark.parametrize("blend,fade", [("crossfade", 5), ("ensemble", 5), ("crossfade", 2), ("ensemble", 0)])
def test_overlapping_disagreeing_chunks_blend_continuously(blend, fade):
    offset = np.array([0.2, -0.3, 0.1])  # the new prediction disagrees with the old one
    arrivals = {0: (chunk_from(1.0, 20), 1.0), 6: (chunk_from(1.0 + 4 * DT, 20, offset), 1.0 + 4 * DT)}
    targets = np.array(run(ChunkExecutor(DT, blend, crossfade_ticks=fade), 22, arrivals))
    steps = np.diff(targets, axis=0) - SLOPE * DT  # change beyond the plan's own motion
    bound = np.abs(offset) / (fade + 1) * 1.05 + 1e-12
    assert (np.abs(steps) <= bound).all()
    assert np.abs(steps).max() > 0.5 * bound.min()  # the blend does move towards the new chunk
    # Once the new chunk has faded in: the new chunk alone, or ACT's weighted mean (older favoured).
    share = 1.0 if blend == "crossfade" else np.exp(-0.01) / (1 + np.exp(-0.01))
    np.testing.assert_allclose(targets[15], plan(1.0 + 16 * DT) + offset * share, atol=1e-12)


def test_replace_switches_at_once():
    offset = np.array([0.2, -0.3, 0.1])
    arrivals = {0: (chunk_from(1.0, 20), 1.0), 6: (chunk_from(1.0 + 4 * DT, 20, offset), 1.0 + 4 * DT)}
    targets = np.array(run(ChunkExecutor(DT, "replace"), 10, arrivals))
    np.testing.assert_allclose(targets[6] - targets[5], SLOPE * DT + offset, atol=1e-12)


def test_crossfade_from_a_chunk_that_ran_out_continues_its_last_segment():
    executor = ChunkExecutor(DT, "crossfade", crossfade_ticks=4)
    executor.add_chunk(chunk_from(1.0, 3), 1.0)
    executor.target(1.0)
    executor.add_chunk(chunk_from(1.0 + 3 * DT, 10, 0.5), 1.0 + 3 * DT)
    targets = np.array([executor.target(1.0 + k * DT) for k in range(3, 12)])
    bound = 0.5 / 5 + np.abs(SLOPE) * DT + 1e-12
    assert (np.abs(np.diff(targets, axis=0)) <= bound).all()
    np.testing.assert_allclose(targets[-1], plan(1.0 + 12 * DT) + 0.5)


@pytest.mark.parametrize("blend", BLEND_MODES)
def test_running_out_returns_none_and_expired_chunks_are_refused(blend):
    executor = ChunkExecutor(DT, blend)
    executor.add_chunk(chunk_from(1.0, 5), 1.0)
    assert executor.target(1.0 + 3 * DT) is not None  # covers 1.0 + 4 dt, the last entry
    assert executor.target(1.0 + 4 * DT) is None
    assert executor.live_chunks == 0
    assert executor.add_chunk(chunk_from(1.0, 5), 1.0) is False  # entirely before the last target
    assert executor.target(10.0) is None


def test_interpolates_between_entries_for_off_grid_times():
    executor = ChunkExecutor(DT, "replace")
    executor.add_chunk(chunk_from(1.0), 1.0)
    np.testing.assert_allclose(executor.target(1.0 + 0.3 * DT), plan(1.0 + 1.3 * DT))


@pytest.mark.parametrize("chunk,capture,match", [
    (np.zeros(3), 1.0, "H x D"), (np.zeros((0, 3)), 1.0, "H x D"), (np.zeros((4, 2)), 1.0, "3 columns"),
    (np.full((4, 3), np.nan), 1.0, "non-finite"), (np.full((4, 3), 1e300), 1.0, "beyond"), (np.zeros((4, 3)), float("inf"), "capture_time"),
])
def test_malformed_chunks_are_refused_with_a_reason(chunk, capture, match):
    with pytest.raises(ValueError, match=match):
        ChunkExecutor(DT, action_dim=3).add_chunk(chunk, capture)


@pytest.mark.parametrize("kwargs,match", [({"dt": 0}, "dt"), ({"blend": "mean"}, "blend"),
                                          ({"crossfade_ticks": -1}, "crossfade_ticks"),
                                          ({"max_chunks": 0}, "max_chunks"), ({"ensemble_weight": 50}, "ensemble_weight")])
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ChunkExecutor(**{"dt": DT, **kwargs})


@pytest.mark.parametrize("blend", BLEND_MODES)
def test_plan_gives_the_targets_handed_out_and_those_to_come_without_changing_anything(blend):
    """From a time three ticks back: the four targets already handed out for it and after it
    (interpolated off the tick grid), then exactly what target() hands out next if no chunk arrives; asking changes
    nothing that follows."""
    rng = np.random.default_rng(0)
    chunks = {k: (np.cumsum(rng.normal(size=(20, 3)), axis=0), 1.0 + k * DT) for k in range(0, 30, 5)}
    arrivals = {k + 2: chunk for k, chunk in chunks.items()}
    quiet, asked = ChunkExecutor(DT, blend), ChunkExecutor(DT, blend)
    run(quiet, 12, arrivals)
    handed = run(asked, 12, arrivals)  # targets for 1.0 + (k + 1) * DT
    plan = asked.plan(1.0 + 9 * DT, 9)
    np.testing.assert_allclose(plan[:4], handed[8:12], rtol=0, atol=1e-12)
    np.testing.assert_allclose(asked.plan(1.0 + 9.5 * DT, 1)[0], (handed[8] + handed[9]) / 2, rtol=0, atol=1e-12)
    upcoming = run(quiet, 5, {}, start=1.0 + 12 * DT)
    np.testing.assert_allclose(plan[4:9], upcoming, rtol=0, atol=1e-12)
    np.testing.assert_allclose(run(asked, 5, {}, start=1.0 + 12 * DT), upcoming, rtol=0, atol=0)


def test_plan_stops_where_nothing_covers_and_forgets_across_holds():
    executor = ChunkExecutor(DT, "ensemble", action_dim=3)
    assert executor.plan(1.0, 5).shape == (0, 3)
    executor.add_chunk(chunk_from(1.0, horizon=4), 1.0)
    run(executor, 2, {})  # handed out: targets for 1.02 and 1.04
    assert len(executor.plan(1.0 + DT, 10)) == 3  # 1.02 and 1.04 handed out, 1.06 to come: the chunk ends
    assert len(executor.plan(1.0 - DT, 5)) == 0  # before the first target handed out
    run(executor, 20, {}, start=1.0 + 2 * DT)  # runs out: holds
    executor.add_chunk(chunk_from(1.5), 1.5)
    assert len(executor.plan(1.0 + DT, 3)) == 0  # the targets before the hold are forgotten


def test_plan_interpolates_over_timer_jitter_but_not_over_a_skipped_tick():
    executor = ChunkExecutor(DT, "ensemble")
    executor.add_chunk(chunk_from(1.0, horizon=20), 1.0)
    for now in (1.0, 1.0 + 1.3 * DT, 1.0 + 3.3 * DT):  # 1.3 dt apart, then a tick skipped
        executor.target(now)
    np.testing.assert_allclose(executor.plan(1.0 + 1.5 * DT, 1)[0], plan(1.0 + 1.5 * DT))
    assert len(executor.plan(1.0 + 2.5 * DT, 3)) == 0
