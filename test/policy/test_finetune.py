"""`vla-ros train`: dataset -> batches -> Trainer -> checkpoint, resume, DDP and bad inputs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from vla_ros.data.lerobot import LeRobotDataset, LeRobotWriter
from vla_ros.policy import finetune
from vla_ros.policy.batches import DatasetSamples, resize_frames, split_episodes
from vla_ros.policy.checkpoint import build_random_policy, load_checkpoint, save_checkpoint
from vla_ros.policy.runtime import PolicyRuntime
from vla_ros.policy.train import TrainConfig
from vla_ros.robot.profile import load_profile

REPO = Path(__file__).resolve().parents[2]
PROFILE = load_profile("aloha_sim")
TASK = "transfer the cube to the left arm"
FAST = ["--threads", "1", "--quiet"]


def write_dataset(root, episodes=3, frames=24, size=(32, 32), seed=0, task=TASK, fps=50, names=None):
    """A small dataset in the recorder's format: smooth joint motions around the start pose and a
    camera whose colour follows the motion (so that images carry information)."""
    rng = np.random.default_rng(seed)
    names = names or PROFILE.vector_names
    with LeRobotWriter(root, fps, PROFILE.name, names, names, {"cam_high": size}) as writer:
        for _ in range(episodes):
            phase = rng.uniform(0, 2 * np.pi, 14)
            t = np.arange(frames + 1)[:, None] / frames
            trajectory = PROFILE.start_pose + 0.3 * np.sin(2 * np.pi * t + phase)
            trajectory[:, PROFILE.gripper_indices] = (t > 0.5).astype(float)
            writer.start_episode(task)
            for i in range(frames):
                image = np.zeros((*size, 3), np.uint8)
                image[..., 0] = int(255 * i / frames)
                image[: size[0] // 2, :, 1] = int(127 + 120 * np.sin(phase[0] + i / 4))
                writer.add_frame(trajectory[i], trajectory[i + 1], {"cam_high": image})
            writer.save_episode(block=True)
    return Path(root)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "ds")


def write_config(path, **sections):
    path.write_text(yaml.safe_dump(sections))
    return str(path)


def train(dataset, output, *extra):
    return finetune.main(["--dataset", str(dataset), "--output", str(output), *FAST, *extra])


# ---- batches ---------------------------------------------------------------------------------

def test_chunks_pad_past_the_episode_end(dataset):
    samples = DatasetSamples(LeRobotDataset(dataset), [0, 2], ["cam_high"], horizon=10, image_size=(16, 16))
    assert samples.num_frames == 48 and samples.memory_bytes == 48 * 16 * 16 * 3
    position, frame = samples.locate(24 + 20)  # episode 2, frame 20
    assert (position, frame) == (1, 20)
    actions, is_pad = samples.chunk(position, frame)
    recorded = samples.episodes[1].action
    assert is_pad.tolist() == [False] * 4 + [True] * 6
    np.testing.assert_array_equal(actions[:4], recorded[20:24])
    np.testing.assert_array_equal(actions[4:], np.repeat(recorded[-1:], 6, axis=0))
    batch = samples.collate([44, 0])
    assert batch["images"].shape == (2, 1, 16, 16, 3) and batch["images"].dtype == torch.uint8
    assert batch["actions"].shape == (2, 10, 14) and batch["instruction"] == [TASK, TASK]
    np.testing.assert_array_equal(batch["state"][0].numpy(), samples.episodes[1].state[20])


def test_batches_depend_only_on_seed_rank_and_step(dataset):
    samples = DatasetSamples(LeRobotDataset(dataset), [0, 1, 2], ["cam_high"], 10, (32, 32))
    a, b = samples.batch_for_step(5, 8, seed=1), samples.batch_for_step(5, 8, seed=1)
    assert torch.equal(a["state"], b["state"]) and torch.equal(a["images"], b["images"])
    other_rank = samples.batch_for_step(5, 8, seed=1, rank=1)
    assert not torch.equal(a["state"], other_rank["state"])
    resumed = samples.batches(8, seed=1, start_step=5)
    assert torch.equal(next(resumed)["state"], a["state"])


def test_state_noise_perturbs_only_the_state_and_is_reproducible(dataset):
    clean = DatasetSamples(LeRobotDataset(dataset), [0, 1, 2], ["cam_high"], 10, (32, 32))
    noisy = DatasetSamples(LeRobotDataset(dataset), [0, 1, 2], ["cam_high"], 10, (32, 32), state_noise_std=0.05)
    a, b = clean.batch_for_step(3, 256, seed=1), noisy.batch_for_step(3, 256, seed=1)
    assert torch.equal(a["actions"], b["actions"]) and torch.equal(a["images"], b["images"])
    difference = (b["state"] - a["state"]).numpy()
    assert 0.045 < difference.std() < 0.055 and abs(difference.mean()) < 0.005
    assert torch.equal(b["state"], noisy.batch_for_step(3, 256, seed=1)["state"]), "a resumed run draws the same noise"
    with pytest.raises(ValueError, match="state_noise_std"):
        DatasetSamples(LeRobotDataset(dataset), [0], ["cam_high"], 10, (32, 32), state_noise_std=-1.0)


def test_stored_frames_are_what_the_backbone_would_make_of_full_frames():
    backbone = build_random_policy("tiny", PROFILE).backbone
    size = backbone.image_size
    frames = np.random.default_rng(0).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    stored = resize_frames(frames, (size, size))
    assert stored.shape == (3, size, size, 3)
    assert torch.equal(backbone.preprocess(torch.from_numpy(frames)), backbone.preprocess(torch.from_numpy(stored)))


def test_split_holds_out_whole_episodes():
    train_eps, held = split_episodes(10, 0.2, seed=3)
    assert len(held) == 2 and sorted(train_eps + held) == list(range(10))
    assert split_episodes(10, 2, seed=3) == (train_eps, held)
    with pytest.raises(ValueError, match="at least one must train"):
        split_episodes(2, 2)


def test_train_tiny_yaml_is_what_the_named_config_means():
    from_yaml = finetune.load_train_config(str(REPO / "config" / "train_tiny.yaml"))
    named = finetune.load_train_config("tiny")
    assert from_yaml["model"] == named["model"] and from_yaml["data"] == named["data"]
    train_yaml = TrainConfig.from_dict(from_yaml["train"])
    train_yaml.device = "auto"
    assert train_yaml == TrainConfig.from_dict(named["train"])


# ---- training runs ---------------------------------------------------------------------------

def test_train_writes_a_checkpoint_the_runtime_loads(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", data={"held_out_episodes": 1})
    assert train(dataset, out, "--config", config, "--steps", "3", "--batch-size", "4") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["checkpoint"] == str(out / "policy")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and all(np.isfinite(r["loss"]) for r in log)
    assert {"loss", "lr", "samples_per_s"} <= set(log[-1])

    policy = load_checkpoint(out / "policy", profile=PROFILE)
    training = policy.config.extra["training"]
    assert len(training["held_out_episodes"]) == 1
    assert sorted(training["train_episodes"] + training["held_out_episodes"]) == [0, 1, 2]
    assert training["instructions"] == [TASK]
    data = LeRobotDataset(dataset)
    states = np.concatenate([data.episode(i).state for i in training["train_episodes"]])
    np.testing.assert_allclose(policy.stats.state["mean"], states.mean(0), rtol=1e-6, atol=1e-6)
    assert policy.config.normalization == "mean_std" and policy.config.alpha == 4.0

    runtime = PolicyRuntime(out / "policy", profile=PROFILE, deterministic=True)
    runtime.set_instruction(TASK)
    chunk = runtime.predict({"cam_high": np.zeros((48, 64, 3), np.uint8)}, PROFILE.start_pose)
    assert chunk.shape == (10, 14) and np.isfinite(chunk).all()


def test_image_augmentation_is_a_training_option(dataset, tmp_path, monkeypatch):
    """data.augment (or --augment) reaches the batches: true trains with openpi's augmentation, off by default."""
    seen = []
    original = finetune.DatasetSamples.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("augment"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(finetune.DatasetSamples, "__init__", spy)
    # (config value, command-line flag): the flag overrides the config either way
    for name, augment, flag in (("off", None, []), ("on", True, []), ("flag_on", None, ["--augment"]),
                                ("flag_off", True, ["--no-augment"])):
        config = write_config(tmp_path / f"{name}.yaml", data={"held_out_episodes": 0, "augment": augment})
        assert train(dataset, tmp_path / name, "--config", config, "--steps", "1", "--batch-size", "2", *flag) == 0
    assert seen[0] is None and seen[1] is not None and seen[2] is not None and seen[3] is None


@pytest.mark.slow
def test_loss_decreases_on_a_tiny_dataset(dataset, tmp_path):
    config = write_config(tmp_path / "c.yaml", data={"held_out_episodes": 0},
                          train={"lr": 3e-3, "warmup_steps": 5, "log_interval": 1, "batch_size": 16,
                                 "ema_decay": None, "checkpoint_interval": 0})
    assert train(dataset, tmp_path / "run", "--config", config, "--steps", "120") == 0
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 120
    assert np.mean(losses[-15:]) < 0.8 * np.mean(losses[:15])


def test_resume_continues_exactly_where_an_interrupted_run_stopped(dataset, tmp_path, monkeypatch):
    config = write_config(tmp_path / "c.yaml", data={"held_out_episodes": 0},
                          train={"checkpoint_interval": 2, "warmup_steps": 2, "batch_size": 4})
    args = ["--config", config, "--steps", "6"]
    assert train(dataset, tmp_path / "straight", *args) == 0

    original = DatasetSamples.batch_for_step

    def interrupted(self, step, *rest, **kwargs):
        if step == 4:
            raise KeyboardInterrupt("simulated crash")
        return original(self, step, *rest, **kwargs)

    monkeypatch.setattr(DatasetSamples, "batch_for_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, tmp_path / "resumed", *args)
    assert not (tmp_path / "resumed" / "policy").exists()
    assert [p.name for p in sorted((tmp_path / "resumed" / "checkpoints").iterdir())] == \
        ["step_00000002", "step_00000004"]
    monkeypatch.setattr(DatasetSamples, "batch_for_step", original)

    assert train(dataset, tmp_path / "resumed", *args) == 1  # refuses to overwrite without --resume
    assert train(dataset, tmp_path / "resumed", *args, "--resume") == 0
    straight = load_file(str(tmp_path / "straight" / "policy" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "policy" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-6, msg=name)
    config_json = json.loads((tmp_path / "resumed" / finetune.CONFIG_FILE).read_text())
    assert config_json["resumed_from"].endswith("step_00000004")


def test_init_from_a_checkpoint_keeps_its_head_and_takes_the_new_alpha(dataset, tmp_path):
    base = build_random_policy("tiny", PROFILE, seed=5)
    save_checkpoint(base, tmp_path / "base")
    config = write_config(tmp_path / "c.yaml", data={"held_out_episodes": 0},
                          train={"lr": 1e-9, "warmup_steps": 1, "ema_decay": None, "batch_size": 2})
    assert train(dataset, tmp_path / "run", "--init", str(tmp_path / "base"), "--config", config,
                 "--steps", "1", "--alpha", "1") == 0
    tuned = load_checkpoint(tmp_path / "run" / "policy")
    assert tuned.config.alpha == 1.0 and tuned.config.normalization == base.config.normalization
    for name, value in base.head.state_dict().items():
        torch.testing.assert_close(tuned.head.state_dict()[name], value, atol=1e-6, rtol=0)
    assert tuned.stats.extra["source"].startswith("dataset")

    bad = write_config(tmp_path / "h.yaml", model={"horizon": 5})
    assert train(dataset, tmp_path / "bad", "--init", str(tmp_path / "base"), "--config", bad) == 1
    assert not (tmp_path / "bad").exists()


def test_a_new_policy_takes_the_configured_horizon_normalisation_and_decoding(dataset, tmp_path):
    config = write_config(tmp_path / "c.yaml", model={"horizon": 4, "normalization": "min_max",
                                                      "recommended_noise_correlation": 3.0, "action_prefix_steps": 2},
                          data={"held_out_episodes": 0}, train={"batch_size": 2})
    assert train(dataset, tmp_path / "run", "--config", config, "--steps", "1") == 0
    runtime = PolicyRuntime(tmp_path / "run" / "policy", deterministic=True)
    assert runtime.config.horizon == 4 and runtime.config.normalization == "min_max"
    assert runtime.config.recommended_noise_correlation == 3.0 == runtime.initial_noise.correlation
    assert runtime.action_prefix_steps == 2
    runtime.set_instruction(TASK)
    assert runtime.predict({"cam_high": np.zeros((32, 32, 3), np.uint8)}, PROFILE.start_pose).shape == (4, 14)
    too_long = write_config(tmp_path / "p.yaml", model={"horizon": 4, "action_prefix_steps": 4})
    assert train(dataset, tmp_path / "bad", "--config", too_long, "--steps", "1") == 1


@pytest.mark.slow
def test_ddp_two_processes_on_gloo(dataset, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "vla_ros.policy.finetune", "--dataset", str(dataset), "--output", str(out),
               "--steps", "3", "--batch-size", "2", *FAST]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, result.stdout  # rank 0 alone reports (and writes)
    assert summaries[0]["world_size"] == 2 and summaries[0]["ranks_in_sync"] is True
    assert summaries[0]["steps"] == 3
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000003"]
    assert load_checkpoint(out / "policy", profile=PROFILE).config.camera_keys == ("cam_high",)


# ---- bad inputs --------------------------------------------------------------------------------

def _drop_action_column(root):
    for path in (root / "data").rglob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.drop(["action"]), path)


def _shrink_state_dim(root):
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["observation.state"]["shape"] = [13]
    info["features"]["observation.state"]["names"] = info["features"]["observation.state"]["names"][:13]
    (root / "meta" / "info.json").write_text(json.dumps(info))


def _empty_episode(root):
    path = next((root / "meta" / "episodes").rglob("*.parquet"))
    table = pq.read_table(path)
    lengths = table.column("length").to_pylist()
    lengths[1] = 0
    ends = table.column("dataset_to_index").to_pylist()
    ends[1] = table.column("dataset_from_index").to_pylist()[1]
    table = table.set_column(table.schema.get_field_index("length"), "length", pa.array(lengths, table.schema.field("length").type))
    table = table.set_column(table.schema.get_field_index("dataset_to_index"), "dataset_to_index",
                             pa.array(ends, table.schema.field("dataset_to_index").type))
    pq.write_table(table, path)


def _corrupt_video(root):
    video = sorted((root / "videos").rglob("*.mp4"))[1]
    data = bytearray(video.read_bytes())
    data[len(data) // 3:] = b"\x00" * (len(data) - len(data) // 3)
    video.write_bytes(bytes(data[: len(data) // 2]))


@pytest.mark.parametrize("damage, message", [
    (_drop_action_column, "missing columns"),
    (_shrink_state_dim, "observation.state has shape"),
    (_empty_episode, "empty"),
    (_corrupt_video, "corrupt"),
])
def test_bad_datasets_fail_clearly_and_leave_no_checkpoint(dataset, tmp_path, capsys, damage, message):
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    damage(broken)
    out = tmp_path / "run"
    assert train(broken, out, "--steps", "2", "--batch-size", "2") == 1
    error = capsys.readouterr().err
    assert error.startswith("vla-ros train: ") and message in error, error
    assert not out.exists()


def test_missing_dataset_and_unknown_config_are_clear_errors(tmp_path, capsys, dataset):
    assert train(tmp_path / "nowhere", tmp_path / "run") == 1
    assert "does not exist" in capsys.readouterr().err
    assert train(dataset, tmp_path / "run", "--config", "huge") == 1
    assert "neither a YAML file nor a named config" in capsys.readouterr().err
    bad = write_config(tmp_path / "bad.yaml", train={"learning_rate": 1})
    assert train(dataset, tmp_path / "run", "--config", bad) == 1
    assert "learning_rate" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_training_benchmark_reports_cpu_samples_per_second(capsys):
    from vla_ros.policy import bench_train

    assert bench_train.main(["--steps", "2", "--warmup", "1", "--batch-size", "2", "--no-gpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cpu"]["config"] == "tiny" and result["cpu"]["samples_per_s"] > 0
    assert result["cpu"]["trainable_parameters"] == result["cpu"]["parameters"] and "cuda" not in result
