"""PolicyRuntime: input validation, 1 vs N steps, determinism, prefix reuse, thread safety."""

import json
import threading

import numpy as np
import pytest
import torch

from vla_ros.policy import bench
from vla_ros.policy.checkpoint import CheckpointError, build_random_policy, save_checkpoint
from vla_ros.policy.runtime import PolicyRuntime
from vla_ros.robot.profile import load_profile

CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    policy = build_random_policy("tiny", load_profile("aloha_stationary"), CAMERAS, seed=2)
    torch.nn.init.normal_(policy.head.velocity_out.weight, std=0.3)
    return save_checkpoint(policy, tmp_path_factory.mktemp("runtime") / "ckpt")


@pytest.fixture
def runtime(checkpoint):
    runtime = PolicyRuntime(checkpoint, deterministic=True)
    runtime.set_instruction("hand over the cube")
    return runtime


def _observation(seed=0, shapes=None):
    rng = np.random.default_rng(seed)
    shapes = shapes or {key: (48, 64) for key in CAMERAS}
    images = {key: rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for key, hw in shapes.items()}
    return images, rng.uniform(-0.5, 0.5, 14)


def test_predict_returns_a_denormalised_float64_chunk(runtime):
    images, state = _observation()
    chunk = runtime.predict(images, state)
    assert chunk.shape == (10, 14) and chunk.dtype == np.float64 and np.isfinite(chunk).all()
    assert np.array_equal(runtime.predict(images, state), chunk)  # deterministic mode: zero noise
    chunk[:] = 0.0  # the caller owns the array: it must not alias the runtime's buffers
    assert not np.array_equal(runtime.predict(images, state), chunk)


def test_invalid_observations_are_rejected_with_clear_messages(runtime):
    images, state = _observation()
    bad_cases = [
        ({k: v for k, v in images.items() if k != "cam_left_wrist"}, state, r"missing camera images \['cam_left_wrist'\]"),
        ({**images, "cam_high": images["cam_high"].astype(np.float32)}, state, "camera 'cam_high'.*uint8.*float32"),
        ({**images, "cam_high": images["cam_high"][..., 0]}, state, r"camera 'cam_high'.*\(48, 64\)"),
        ({**images, "cam_high": images["cam_high"][..., :1]}, state, r"camera 'cam_high'.*\(48, 64, 1\)"),
        ({**images, "cam_high": "frame.png"}, state, "camera 'cam_high'.*str"),
        ([images["cam_high"]], state, "mapping"),
        (images, state[:13], r"state must have shape \(14,\)"),
        (images, np.where(np.arange(14) == 6, np.nan, state), r"non-finite values in \['left_gripper'\]"),
        (images, ["a"] * 14, "numeric"),
    ]
    for bad_images, bad_state, message in bad_cases:
        with pytest.raises(ValueError, match=message):
            runtime.predict(bad_images, bad_state)
    for steps in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="decoding steps"):
            runtime.predict(images, state, steps=steps)
    with pytest.raises(ValueError, match="instruction must be a str"):
        runtime.set_instruction(None)


def test_predict_needs_an_instruction(checkpoint):
    images, state = _observation()
    with pytest.raises(RuntimeError, match="set_instruction"):
        PolicyRuntime(checkpoint).predict(images, state)


def test_one_step_by_default_and_n_steps_on_request_with_one_prefix_per_observation(checkpoint, runtime):
    images, state = _observation()
    encodes = []
    encode_pixels = runtime.policy.backbone.encode_pixels
    runtime.policy.backbone.encode_pixels = lambda *a: encodes.append(1) or encode_pixels(*a)
    conditions, heads = [], []
    encode_condition, head_step = runtime.policy.head.encode_condition, runtime.policy.head.step
    runtime.policy.head.encode_condition = lambda *a: conditions.append(1) or encode_condition(*a)
    runtime.policy.head.step = lambda *a: heads.append(1) or head_step(*a)
    one = runtime.predict(images, state)
    assert (len(encodes), len(conditions), len(heads)) == (1, 1, 1)
    ten = runtime.predict(images, state, steps=10)
    # the prefix and the head's condition once per observation, the head's action tokens once per step
    assert (len(encodes), len(conditions), len(heads)) == (2, 2, 11)
    assert not np.allclose(one, ten)
    configured = PolicyRuntime(checkpoint, deterministic=True, steps=10)
    configured.set_instruction("hand over the cube")
    assert np.array_equal(configured.predict(images, state), ten)


def test_eager_runs_drop_the_instruction_padding_without_changing_the_chunk(checkpoint, runtime):
    """Padded text tokens are masked keys: dropping them only saves work (the prefix of the tiny
    config shrinks from 3 cameras x 16 + 32 to 3 x 16 + 5 tokens for this 5-token instruction)."""
    images, state = _observation()
    padded = PolicyRuntime(checkpoint, deterministic=True, pad_text=True)
    padded.set_instruction("hand over the cube")
    assert not runtime.pad_text and padded.pad_text
    assert runtime._text[0].shape == (1, 5) and padded._text[0].shape == (1, 32)
    for steps in (1, 10):
        np.testing.assert_allclose(runtime.predict(images, state, steps=steps), padded.predict(images, state, steps=steps),
                                   rtol=0, atol=1e-5)
    compiled = PolicyRuntime(checkpoint, compile=True)
    assert compiled.pad_text  # one shape for every instruction: no recompilation


def test_instruction_is_tokenized_once_for_many_predicts(runtime, monkeypatch):
    calls = []
    tokenize = runtime.policy.backbone.tokenize
    monkeypatch.setattr(runtime.policy.backbone, "tokenize", lambda texts: calls.append(texts) or tokenize(texts))
    runtime.set_instruction("open the drawer")
    images, state = _observation()
    for _ in range(3):
        runtime.predict(images, state)
    assert calls == [["open the drawer"]]
    assert runtime.instruction == "open the drawer"


def test_noise_is_seeded_per_runtime(checkpoint):
    images, state = _observation()
    chunks = []
    for seed in (0, 0, 1):
        runtime = PolicyRuntime(checkpoint, seed=seed)
        runtime.set_instruction("hand over the cube")
        chunks.append([runtime.predict(images, state) for _ in range(2)])
    assert np.array_equal(chunks[0][0], chunks[1][0]) and np.array_equal(chunks[0][1], chunks[1][1])
    assert not np.array_equal(chunks[0][0], chunks[0][1])  # fresh noise every call
    assert not np.array_equal(chunks[0][0], chunks[2][0])


def test_cameras_of_different_sizes_are_preprocessed_in_camera_order(runtime):
    shapes = {"cam_high": (48, 64), "cam_left_wrist": (30, 40), "cam_right_wrist": (48, 64)}
    images, _ = _observation(shapes=shapes)
    with torch.inference_mode():
        pixels = runtime._pixels([images[key] for key in CAMERAS])
        for index, key in enumerate(CAMERAS):
            expected = runtime.policy.backbone.preprocess(torch.from_numpy(images[key])[None])
            torch.testing.assert_close(pixels[index:index + 1], expected)


def test_concurrent_predicts_equal_serial_ones(runtime):
    observations = [_observation(seed) for seed in range(6)]
    serial = [runtime.predict(images, state) for images, state in observations]
    results = {}

    def worker(worker_id):
        for index in range(worker_id % 2, len(observations), 2):
            results[(worker_id, index)] = runtime.predict(*observations[index])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 12
    for (_, index), chunk in results.items():
        assert np.array_equal(chunk, serial[index])


def test_runtime_checks_the_robot_profile(runtime):
    runtime.check_compatible(load_profile("aloha_stationary"))
    with pytest.raises(CheckpointError, match="aloha_sim"):
        runtime.check_compatible(load_profile("aloha_sim"))


def test_bench_prints_latency_json(capsys):
    assert bench.main(["--repeats", "3", "--warmup", "1", "--cameras", "1", "2", "--steps", "1", "3",
                       "--skip-layouts"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "layouts" not in report and len(report["load_average_before"]) == 3
    per_cameras = report["cpu"]["per_cameras"]
    assert set(per_cameras) == {"1", "2"}
    for result in per_cameras.values():
        assert set(result) == {"prefix_only", "steps_1", "steps_3", "one_step_over_prefix", "mflop",
                               "mflop_one_step_over_prefix"}
        assert result["steps_3"]["n"] == 3 and result["steps_1"]["p50_ms"] <= result["steps_1"]["p99_ms"]
        # every step adds head arithmetic on top of the prefix's
        mflop = result["mflop"]
        assert 0 < mflop["prefix_only"] < mflop["steps_1"] < mflop["steps_3"]
    assert report["cuda"] == "no CUDA device" or "peak_gpu_memory_gb" in report["cuda"]


def test_bench_times_both_attention_layouts_with_and_without_instruction_padding(checkpoint, capsys):
    assert bench.main(["--repeats", "2", "--warmup", "0", "--skip-cpu", "--skip-gpu",
                       "--checkpoint", str(checkpoint)]) == 0
    layouts = json.loads(capsys.readouterr().out)["layouts"]
    expected = {f"{layout}, instruction {text}" for layout in ("block_causal", "bidirectional")
                for text in ("cut", "padded")}
    assert set(layouts["tiny"]["layouts"]) == expected
    # the checkpoint is block-causal: its own weights, plus a fresh bidirectional head
    assert set(layouts["checkpoint"]["layouts"]) == {
        key.replace("block_causal", "block_causal (trained weights)") for key in expected}
    # bench.INSTRUCTION is <bos> + 8 words, the length the issue measured
    assert layouts["checkpoint"]["instruction_tokens_cut"] == 9 and layouts["checkpoint"]["instruction_tokens_padded"] == 32
    for result in layouts["tiny"]["layouts"].values():
        assert {"prefix_only", "steps_1", "steps_10", "ten_over_one", "head_step_ms", "head_step_over_prefix"} <= set(result)
        assert result["ten_over_one"] == pytest.approx(result["steps_10"]["p50_ms"] / result["steps_1"]["p50_ms"], abs=1e-3)
    # the cache takes the condition tokens out of every step's arithmetic
    cached_run, whole_run = (layouts["tiny"]["layouts"][f"{layout}, instruction cut"]
                             for layout in ("block_causal", "bidirectional"))
    assert cached_run["mflop"]["prefix_only"] == whole_run["mflop"]["prefix_only"]
    assert cached_run["mflop_ten_over_one"] < whole_run["mflop_ten_over_one"]
    cached, whole = cached_run["head_only"], whole_run["head_only"]
    assert cached["condition_tokens"] == whole["condition_tokens"] == 16 + 9  # one camera's tokens + the instruction
    assert set(cached) >= {"condition_pass", "step"} and "condition_pass" not in whole


def test_bfloat16_runtime_stays_close_to_float32(checkpoint):
    images, state = _observation()
    chunks = []
    for dtype in (torch.float32, torch.bfloat16):
        runtime = PolicyRuntime(checkpoint, deterministic=True, dtype=dtype)
        runtime.set_instruction("hand over the cube")
        chunks.append(runtime.predict(images, state, steps=3))
    scale = load_profile("aloha_stationary").position_upper - load_profile("aloha_stationary").position_lower
    assert np.abs(chunks[1] - chunks[0]).max() < 0.05 * scale.max()
    assert not np.array_equal(chunks[1], chunks[0])


@pytest.mark.slow
def test_compiled_fixed_shape_path_matches_eager(checkpoint):
    """The torch.compile path the runtime uses on CUDA (there with CUDA graphs), traced here on CPU."""
    images, state = _observation()
    eager = PolicyRuntime(checkpoint, deterministic=True)
    compiled = PolicyRuntime(checkpoint, deterministic=True, compile=True)
    for runtime in (eager, compiled):
        runtime.set_instruction("hand over the cube")
    np.testing.assert_allclose(compiled.predict(images, state), eager.predict(images, state), rtol=0, atol=1e-4)


@pytest.fixture(scope="module", params=[False, True], ids=["absolute", "delta"])
def prefix_checkpoint(request, tmp_path_factory):
    """A tiny checkpoint that takes an action prefix of up to 4 entries (absolute or delta arms)."""
    from vla_ros.policy.delta import arm_joint_names
    from vla_ros.policy.model import PolicyConfig, VLAPolicy

    profile = load_profile("aloha_stationary")
    policy = build_random_policy("tiny", profile, CAMERAS, seed=2)
    torch.nn.init.normal_(policy.head.velocity_out.weight, std=0.3)
    values = policy.config.to_dict()
    values["action_prefix_steps"] = 4
    if request.param:
        values["delta_actions"] = list(arm_joint_names(profile.vector_names, profile.gripper_indices))
    rebuilt = VLAPolicy(PolicyConfig.from_dict(values), policy.backbone, policy.stats)
    rebuilt.head.load_state_dict(policy.head.state_dict())
    return save_checkpoint(rebuilt, tmp_path_factory.mktemp("prefix") / "ckpt")


def test_an_action_prefix_starts_the_chunk_and_the_rest_continues_it(prefix_checkpoint):
    runtime = PolicyRuntime(prefix_checkpoint, deterministic=True)
    runtime.set_instruction("hand over the cube")
    assert runtime.action_prefix_steps == 4
    images, state = _observation()
    free = runtime.predict(images, state)
    prefix = free[:3] + 0.05
    chunk = runtime.predict(images, state, action_prefix=prefix)
    np.testing.assert_allclose(chunk[:3], prefix, rtol=0, atol=1e-5)
    assert not np.allclose(chunk[3:], free[3:])
    longer = np.concatenate([prefix, free[3:8] - 0.05])
    kept = runtime.predict(images, state, action_prefix=longer)
    np.testing.assert_allclose(kept[:4], longer[:4], rtol=0, atol=1e-5)  # the first action_prefix_steps only
    assert not np.allclose(kept[4:8], longer[4:8], atol=1e-3)
    np.testing.assert_array_equal(runtime.predict(images, state, action_prefix=np.zeros((0, 14))), free)


def test_an_action_prefix_is_checked(runtime, prefix_checkpoint):
    images, state = _observation()
    with pytest.raises(ValueError, match="not trained with an action prefix"):
        runtime.predict(images, state, action_prefix=np.zeros((2, 14)))
    taking = PolicyRuntime(prefix_checkpoint, deterministic=True)
    taking.set_instruction("hand over the cube")
    with pytest.raises(ValueError, match=r"shape \(k, 14\)"):
        taking.predict(images, state, action_prefix=np.zeros((2, 13)))
    bad = np.zeros((2, 14))
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        taking.predict(images, state, action_prefix=bad)
