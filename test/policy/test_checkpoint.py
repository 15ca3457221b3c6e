"""Checkpoint directories: round trip, offline loading, atomic save, mismatch and corruption errors."""

import json
import shutil

import numpy as np
import pytest
import torch

from vla_ros.policy.checkpoint import (
    CheckpointError,
    build_random_policy,
    check_compatible,
    init_checkpoint_main,
    load_checkpoint,
    load_config,
    save_checkpoint,
    write_checkpoint_files,
)
from vla_ros.policy.model import PolicyConfig, build_policy
from vla_ros.policy.normalize import NormStats
from vla_ros.policy.runtime import PolicyRuntime
from vla_ros.policy.tiny import save_backbone
from vla_ros.robot.profile import load_profile


@pytest.fixture(scope="module")
def stationary():
    return load_profile("aloha_stationary")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, stationary):
    """A tiny two-camera checkpoint whose head output depends on its inputs."""
    policy = build_random_policy("tiny", stationary, ("cam_high", "cam_left_wrist"), seed=4)
    torch.nn.init.normal_(policy.head.velocity_out.weight, std=0.3)
    return save_checkpoint(policy, tmp_path_factory.mktemp("ckpt") / "policy")


def _observation(config, seed=0):
    rng = np.random.default_rng(seed)
    images = {key: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for key in config.camera_keys}
    return images, rng.uniform(-0.5, 0.5, config.real_state_dim)


@pytest.mark.parametrize("config_name", ["tiny", "tiny-smolvlm"])
def test_reloaded_checkpoint_gives_bit_identical_predictions_without_the_backbone_directory(
        tmp_path, stationary, config_name):
    backbone_dir = save_backbone(config_name, tmp_path / "pretrained")
    template = build_random_policy(config_name, stationary, ("cam_high",))
    policy = build_policy(template.config, template.stats, backbone_dir)
    torch.nn.init.normal_(policy.head.velocity_out.weight, std=0.3)
    save_checkpoint(policy, tmp_path / "ckpt")
    shutil.rmtree(backbone_dir)  # the checkpoint must be self-contained
    before = PolicyRuntime.from_policy(policy, deterministic=True)
    after = PolicyRuntime(tmp_path / "ckpt", deterministic=True)
    for runtime in (before, after):
        runtime.set_instruction("pick up the cube")
    for seed in range(3):
        images, state = _observation(policy.config, seed)
        expected = before.predict(images, state)
        assert np.array_equal(after.predict(images, state), expected)
    other_images, other_state = _observation(policy.config, 7)
    assert not np.array_equal(after.predict(other_images, other_state), expected)  # not a constant output


def test_config_json_records_what_a_robot_run_needs(saved):
    data = json.loads((saved / "config.json").read_text())
    assert data["format_version"] == 1
    assert data["camera_keys"] == ["cam_high", "cam_left_wrist"]
    assert data["robot_profile"] == "aloha_stationary"
    assert data["alpha"] == 4.0 and data["recommended_steps"] == 1 and data["horizon"] == 10
    assert data["state_dim"] == data["action_dim"] == 14 and len(data["action_names"]) == 14
    assert data["head"]["condition_dim"] == 32
    assert sorted(p.name for p in saved.iterdir()) == ["backbone", "config.json", "model.safetensors", "stats.json"]
    assert {"config.json", "tokenizer.json", "preprocessor_config.json"} <= {p.name for p in (saved / "backbone").iterdir()}
    assert isinstance(load_config(saved), PolicyConfig)
    stats = NormStats.load(saved / "stats.json")
    assert stats.mode == "min_max" and "aloha_stationary" in stats.extra["source"]


def test_save_is_atomic_and_refuses_to_overwrite_unless_asked(tmp_path, stationary):
    policy = build_random_policy("tiny", stationary, ("cam_high",), seed=1)
    target = save_checkpoint(policy, tmp_path / "run" / "ckpt")
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(policy, target)
    torch.nn.init.normal_(policy.head.velocity_out.weight)
    save_checkpoint(policy, target, overwrite=True)
    reloaded = load_checkpoint(target)
    assert torch.equal(reloaded.head.velocity_out.weight, policy.head.velocity_out.weight)
    assert [p.name for p in target.parent.iterdir()] == ["ckpt"]  # no temporary directories left


def test_incompatible_profiles_are_refused_naming_both_sides(saved, stationary):
    sim = load_profile("aloha_sim")  # has only cam_high
    config = load_config(saved)
    with pytest.raises(CheckpointError, match=r"cam_left_wrist.*'aloha_sim'.*\['cam_high'\]"):
        check_compatible(config, sim)
    with pytest.raises(CheckpointError, match="'aloha_sim'"):
        load_checkpoint(saved, profile=sim)
    with pytest.raises(CheckpointError, match="'aloha_sim'"):
        PolicyRuntime(saved, profile=sim)
    check_compatible(config, stationary)  # fits the robot it was made for

    data = config.to_dict()
    one_arm = PolicyConfig.from_dict({**data, "action_names": data["action_names"][:7],
                                      "state_names": data["state_names"][:7]})
    with pytest.raises(CheckpointError, match=r"action has 7 dims, robot profile 'aloha_stationary' has 14"):
        check_compatible(one_arm, stationary)
    swapped = list(data["action_names"])
    swapped[0], swapped[7] = swapped[7], swapped[0]
    with pytest.raises(CheckpointError, match=r"action dim names differ .*0: right_waist vs left_waist"):
        check_compatible(PolicyConfig.from_dict({**data, "action_names": swapped}), stationary)


def test_missing_and_corrupt_files_give_clear_errors(saved, tmp_path):
    def broken(name, mutate):
        copy = tmp_path / name
        shutil.copytree(saved, copy)
        mutate(copy)
        return copy

    cases = {
        "not a directory": (tmp_path / "absent", "does not exist"),
        "no config": (broken("a", lambda d: (d / "config.json").unlink()), "missing config.json"),
        "bad json": (broken("b", lambda d: (d / "config.json").write_text("{oops")), "not valid JSON"),
        "old format": (broken("c", lambda d: (d / "config.json").write_text(
            json.dumps({**json.loads((saved / "config.json").read_text()), "format_version": 0}))), "format version 0"),
        "no weights": (broken("d", lambda d: (d / "model.safetensors").unlink()), "missing model.safetensors"),
        "truncated weights": (broken("e", lambda d: (d / "model.safetensors").write_bytes(
            (saved / "model.safetensors").read_bytes()[:1000])), "cannot load the weights"),
        "no stats": (broken("f", lambda d: (d / "stats.json").unlink()), "stats.json"),
        "no tokenizer": (broken("g", lambda d: (d / "backbone" / "tokenizer.json").unlink()), "tokenizer"),
    }
    for path, message in cases.values():
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path)


def test_weights_of_another_architecture_are_refused(saved, tmp_path):
    target = tmp_path / "mismatch"
    shutil.copytree(saved, target)
    data = json.loads((target / "config.json").read_text())
    data["head"]["depth"] = 1  # the config now describes a shallower head than the stored weights
    (target / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="cannot load the weights"):
        load_checkpoint(target)


def test_init_checkpoint_cli_creates_a_loadable_checkpoint(tmp_path, capsys):
    output = tmp_path / "init"
    assert init_checkpoint_main(["--config", "tiny-smolvlm", "--profile", "aloha_stationary", "--output",
                                 str(output), "--cameras", "cam_high", "cam_low", "--seed", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checkpoint"] == str(output) and report["cameras"] == ["cam_high", "cam_low"]
    runtime = PolicyRuntime(output, deterministic=True, profile=load_profile("aloha_stationary"))
    runtime.set_instruction("transfer the cube")
    images, state = _observation(runtime.config)
    chunk = runtime.predict(images, state)
    assert chunk.shape == (10, 14) and np.isfinite(chunk).all()

    assert init_checkpoint_main(["--profile", "aloha_sim", "--output", str(output)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert init_checkpoint_main(["--profile", "aloha_sim", "--output", str(tmp_path / "x"),
                                 "--cameras", "cam_low"]) == 1
    assert "cam_low" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_the_named_1_4b_configuration_has_the_papers_sizes(stationary):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        policy = build_random_policy("1.4b", stationary, ("cam_high", "cam_low", "cam_left_wrist"))

    def count(module):
        return sum(p.numel() for p in module.parameters())

    vision = policy.backbone.vlm.config.vision_config
    text = policy.backbone.config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size) == (1152, 27, 14, 224)
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads, text.head_dim) == (2048, 4, 1, 256)
    assert 1.35e9 < count(policy) < 1.5e9 and 25e6 < count(policy.head) < 35e6
    assert policy.config.alpha == 3.0 and policy.backbone.num_tokens(3) == 3 * 256 + 32


def test_trainer_checkpoints_of_a_policy_load_as_policy_checkpoints(tmp_path, stationary):
    from vla_ros.policy.train import Trainer, TrainConfig

    policy = build_random_policy("tiny", stationary, ("cam_high",), seed=0)
    config = TrainConfig(lr=1e-3, warmup_steps=1, total_steps=3, batch_size=2, checkpoint_interval=0,
                         log_interval=1)
    trainer = Trainer(policy, config, tmp_path / "run", save_fn=write_checkpoint_files)
    generator = torch.Generator().manual_seed(0)
    batch = {"images": torch.randint(0, 256, (2, 1, 24, 32, 3), dtype=torch.uint8, generator=generator),
             "instruction": ["pick up the cube"] * 2, "state": torch.randn(2, 14, generator=generator),
             "actions": torch.randn(2, 10, 14, generator=generator)}
    for _ in range(3):
        trainer.train_step(batch)
    saved_dir = trainer.save_checkpoint()
    reloaded = load_checkpoint(saved_dir)
    with trainer.ema_weights() as ema_model:
        expected = ema_model.head.velocity_out.weight.detach().clone()
    assert torch.equal(reloaded.head.velocity_out.weight, expected)
    assert expected.abs().sum() > 0  # training moved the zero-initialised output layer
