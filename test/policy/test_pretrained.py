"""Fine-tuning from pretrained vision-language weights (`vla-ros train --backbone DIR`).

The backbone directories are real Hugging Face layouts written here with save_pretrained (sharded
safetensors + index, tokenizer.json, preprocessor_config.json) from tiny configurations, with
tokenizers trained in-process; a LeRobot SmolVLA checkpoint is written in SmolVLA's key layout."""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from test_finetune import PROFILE, TASK, train, write_config, write_dataset
from vla_ros.policy.backbone import BackboneError, ImageFit, VLMBackbone
from vla_ros.policy.checkpoint import build_random_policy, load_backbone, load_checkpoint
from vla_ros.policy.smolvla import VLM_PREFIX, backbone_from_smolvla
from vla_ros.policy.tiny import _MODEL_CLASSES, build_preset, build_tokenizer, save_preprocessor
from vla_ros.policy.train import Trainer, TrainConfig

PRESETS = {"paligemma": "tiny", "idefics3": "tiny-smolvlm", "smolvlm": "tiny-smolvlm2"}
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)  # not the presets' 0.5: proves whose are used
INSTRUCTIONS = ["hand the cube to the left arm", "lift the cube with the right arm and put it back down",
                "Rotate the flask counter-clockwise, then wiggle", "zxqv", ""]


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """A real WordPiece tokenizer unlike build_tokenizer()'s BPE (other ids for the same words).
    Its training is not deterministic across calls: tests compare with the saved tokenizer.json."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "<image>"]
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789-,.!?'")
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=alphabet,
                                        show_progress=False)
    tokenizer.train_from_iterator(["the cube arm hand lift put back down left right gripper grasp"] * 3,
                                  trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="[BOS] $A",
                                                             special_tokens=[("[BOS]", tokenizer.token_to_id("[BOS]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]",
                                   extra_special_tokens={"image_token": "<image>"})


def write_model_dir(directory: Path, family: str, seed: int = 7):
    """A downloaded-model directory of `family`: sharded weights, WordPiece tokenizer, processor
    config with MEAN/STD. Returns (directory, the model object that was saved)."""
    tokenizer = wordpiece_tokenizer()
    preset = build_preset(PRESETS[family], tokenizer)
    torch.manual_seed(seed)
    model = _MODEL_CLASSES[family](preset.config)
    model.save_pretrained(directory, max_shard_size="20KB")
    tokenizer.save_pretrained(directory)
    save_preprocessor(directory, family, preset.config.vision_config.image_size, MEAN, STD)
    return directory, model


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    return {family: write_model_dir(root / family, family) for family in PRESETS}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "ds", episodes=2, frames=16)


def _expected_vlm_state(model, num_lm_layers):
    """The saved model's tensors that a backbone keeping `num_lm_layers` layers must hold."""
    state = model.model.state_dict()
    text = "language_model.layers." if "language_model.layers.0.mlp.up_proj.weight" in state else "text_model.layers."
    return {name: tensor for name, tensor in state.items()
            if not name.startswith(text) or int(name[len(text):].split(".")[0]) < num_lm_layers}


# ---- item 2: real directories ------------------------------------------------------------------

@pytest.mark.parametrize("family", list(PRESETS))
def test_loaded_weights_are_the_directory_weights(model_dirs, family):
    directory, model = model_dirs[family]
    assert len(list(directory.glob("model-*-of-*.safetensors"))) > 1, "the directory must be sharded"
    backbone = VLMBackbone.from_directory(directory, num_lm_layers=2)
    loaded, expected = backbone.vlm.state_dict(), _expected_vlm_state(model, 2)
    assert set(loaded) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name
    random_build = VLMBackbone.from_directory(directory, num_lm_layers=2, load_weights=False).vlm.state_dict()
    differing = [name for name, tensor in expected.items() if not torch.equal(random_build[name], tensor)]
    assert len(differing) > len(expected) // 2, "random weights differ: the comparison can fail"
    shards = sorted(directory.glob("model-*-of-*.safetensors"))
    assert backbone.weights_sha256 == hashlib.sha256(b"".join(p.read_bytes() for p in shards)).hexdigest()
    assert backbone.source == str(directory.resolve())


@pytest.mark.parametrize("family", list(PRESETS))
def test_tokenizer_and_image_statistics_are_the_directory_own(model_dirs, family):
    directory, _ = model_dirs[family]
    backbone = VLMBackbone.from_directory(directory, max_text_tokens=40)
    own = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
    builtin = build_tokenizer()
    ids, mask = backbone.tokenize(INSTRUCTIONS)
    for row, text in enumerate(INSTRUCTIONS):
        assert ids[row][mask[row]].tolist() == own(text)["input_ids"]
    assert own(INSTRUCTIONS[0])["input_ids"] != builtin(INSTRUCTIONS[0])["input_ids"]
    torch.testing.assert_close(backbone.image_mean.flatten(), torch.tensor(MEAN))
    torch.testing.assert_close(backbone.image_std.flatten(), torch.tensor(STD))


def test_one_training_step_from_the_pretrained_backbone_and_a_checkpoint_that_needs_no_directory(
        model_dirs, dataset, tmp_path, capsys):
    source = tmp_path / "paligemma"
    shutil.copytree(model_dirs["paligemma"][0], source)
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", model={"num_lm_layers": 2, "head": {"width": 32, "depth": 1, "heads": 2,
                                                                                  "mlp_dim": 64}},
                          data={"held_out_episodes": 0}, train={"checkpoint_interval": 0})
    assert train(dataset, out, "--config", config, "--backbone", str(source), "--steps", "1", "--batch-size", "2") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 1 and np.isfinite(summary["loss"])
    expected_hash = VLMBackbone.from_directory(source).weights_sha256
    expected_ids = PreTrainedTokenizerFast(tokenizer_file=str(source / "tokenizer.json"))(TASK)["input_ids"]
    shutil.rmtree(source)  # the checkpoint must load without the original directory
    policy = load_checkpoint(out / "policy")
    assert policy.config.backbone_source == str(source.resolve())
    assert policy.config.extra["backbone"] == {"source": str(source.resolve()), "family": "paligemma",
                                               "sha256": expected_hash}
    assert policy.config.num_lm_layers == 2 and policy.config.extra["training"]["backbone"] == str(source)
    own = PreTrainedTokenizerFast(tokenizer_file=str(out / "policy" / "backbone" / "tokenizer.json"))
    ids, mask = policy.tokenize([TASK])
    assert ids[0][mask[0]].tolist() == own(TASK)["input_ids"] == expected_ids
    torch.testing.assert_close(policy.backbone.image_mean.flatten(), torch.tensor(MEAN))


def _break(model_dirs, tmp_path, how):
    directory = tmp_path / how
    shutil.copytree(model_dirs["paligemma"][0], directory)
    if how == "shard_missing":
        sorted(directory.glob("model-*-of-*.safetensors"))[3].unlink()
    elif how == "wrong_model_type":
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    elif how == "no_tokenizer":
        (directory / "tokenizer.json").unlink()
    elif how == "foreign_tokenizer":  # a tokenizer with more ids than the embedding table has rows
        big = Tokenizer(models.WordLevel({f"w{i}": i for i in range(5000)}, unk_token="w0"))
        PreTrainedTokenizerFast(tokenizer_object=big, unk_token="w0").save_pretrained(directory)
    elif how == "no_config":
        (directory / "config.json").unlink()
    elif how == "foreign_processor":
        processor = json.loads((directory / "preprocessor_config.json").read_text())
        processor["size"] = {"height": 224, "width": 224}
        (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory


@pytest.mark.parametrize("how, message", [
    ("missing", "does not exist"),
    ("shard_missing", "1 of 13 weight shards are missing"),
    ("wrong_model_type", "unsupported backbone model_type 'bert'"),
    ("no_tokenizer", "no tokenizer.json"),
    ("foreign_tokenizer", "do not belong together"),
    ("no_config", "no config.json"),
    ("foreign_processor", "sizes images to 224 but the vision tower takes 32"),
])
def test_missing_partial_or_mismatched_directory_is_one_line_from_the_cli(model_dirs, dataset, tmp_path, capsys,
                                                                          how, message):
    directory = tmp_path / "nowhere" if how == "missing" else _break(model_dirs, tmp_path, how)
    out = tmp_path / "run"
    assert train(dataset, out, "--backbone", str(directory), "--steps", "1") == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("vla-ros train: ") and message in error, error
    assert "\n" not in error and "Traceback" not in error
    assert not out.exists()


def test_init_and_backbone_together_are_refused(model_dirs, dataset, tmp_path, capsys):
    assert train(dataset, tmp_path / "run", "--backbone", str(model_dirs["paligemma"][0]),
                 "--init", str(tmp_path / "whatever"), "--steps", "1") == 1
    assert "--init and --backbone (model.backbone) both choose the starting weights" in capsys.readouterr().err


# ---- item 1: what trains -----------------------------------------------------------------------

def _policy(model_dirs, family="paligemma", **head):
    from vla_ros.policy.checkpoint import build_pretrained_policy

    backbone = load_backbone(model_dirs[family][0], num_lm_layers=2)
    return build_pretrained_policy(backbone, PROFILE, ["cam_high"], head=head or dict(width=32, depth=1, heads=2,
                                                                                     mlp_dim=64))


def _batch(policy, size=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {"images": torch.randint(0, 256, (size, 1, 40, 56, 3), dtype=torch.uint8, generator=generator),
            "state": torch.randn(size, 14, generator=generator),
            "actions": torch.randn(size, policy.config.horizon, 14, generator=generator),
            "instruction": [TASK] * size}


@pytest.mark.parametrize("preset, frozen", [("none", ""), ("vision", "vision"), ("language", "language"),
                                            ("both", "vision language")])
def test_freeze_presets_and_the_embedding_table_gets_no_optimiser_or_ema_state(model_dirs, tmp_path, preset, frozen):
    policy = _policy(model_dirs)
    policy.backbone.freeze(preset)
    backbone = policy.backbone
    parts = {"vision": backbone.vision_tower(), "language": backbone.language_model().layers}
    for part, module in parts.items():
        assert all(p.requires_grad != (part in frozen) for p in module.parameters()), part
    assert all(p.requires_grad for p in backbone.vlm.multi_modal_projector.parameters())
    embedding = backbone.vlm.get_input_embeddings().weight
    assert not embedding.requires_grad
    trainer = Trainer(policy, TrainConfig(total_steps=2, warmup_steps=0, checkpoint_interval=0, device="cpu"),
                      tmp_path)
    trainer.train_step(_batch(policy))
    assert all(p is not embedding for group in trainer.optimizer.param_groups for p in group["params"])
    assert embedding not in trainer.optimizer.state
    assert "backbone.vlm.language_model.embed_tokens.weight" not in trainer.ema
    policy.backbone.freeze("none", train_embeddings=True)
    assert embedding.requires_grad
    with pytest.raises(BackboneError, match="freeze must be one of"):
        policy.backbone.freeze("head")


def test_lora_trains_adapters_only_and_the_checkpoint_holds_merged_weights(model_dirs, tmp_path):
    from vla_ros.policy.checkpoint import save_checkpoint

    policy = _policy(model_dirs)
    policy.backbone.add_lora(rank=4, alpha=8)
    policy.backbone.freeze("vision")
    names = {name for name, p in policy.named_parameters() if p.requires_grad and name.startswith("backbone.")}
    assert names and all("lora_" in name or "multi_modal_projector" in name for name in names)
    base = policy.backbone.language_model().layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
    trainer = Trainer(policy, TrainConfig(lr=1e-2, total_steps=3, warmup_steps=0, checkpoint_interval=0,
                                          ema_decay=None, device="cpu"), tmp_path / "t")
    for step in range(3):
        trainer.train_step(_batch(policy, seed=step))
    layer = policy.backbone.language_model().layers[0].self_attn.q_proj
    assert torch.equal(layer.base_layer.weight, base), "LoRA must leave the base weights alone"
    assert layer.lora_B["default"].weight.abs().sum() > 0, "the adapters trained"
    policy.eval()
    batch = _batch(policy, seed=9)
    noise = torch.randn(2, policy.config.horizon, 14, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        prefix = policy.encode(batch["images"], *policy.tokenize(batch["instruction"]))
        expected = policy.sample(prefix, policy.prepare_state(batch["state"]), 1, noise)
    save_checkpoint(policy, tmp_path / "ckpt")
    reloaded = load_checkpoint(tmp_path / "ckpt")
    assert not any("lora_" in name for name, _ in reloaded.named_parameters())
    with torch.no_grad():
        prefix = reloaded.encode(batch["images"], *reloaded.tokenize(batch["instruction"]))
        got = reloaded.sample(prefix, reloaded.prepare_state(batch["state"]), 1, noise)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_gradients(model_dirs):
    def gradients(checkpointing):
        policy = _policy(model_dirs)
        policy.backbone.freeze("none")
        if checkpointing:
            policy.backbone.enable_gradient_checkpointing()
        calls = []
        # a module early inside the layer: the layer's own hooks stay outside the checkpoint, and the
        # recomputation stops once it has what backward needs
        policy.backbone.language_model().layers[0].self_attn.register_forward_pre_hook(lambda *a: calls.append(1))
        policy.train()
        policy.compute_loss(_batch(policy), torch.Generator().manual_seed(0)).backward()
        return len(calls), {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}

    plain_calls, plain = gradients(False)
    checkpointed_calls, checkpointed = gradients(True)
    assert (plain_calls, checkpointed_calls) == (1, 2), "checkpointing reruns the layer's forward in backward"
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)


def test_training_yaml_keys_reach_the_backbone(model_dirs, dataset, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", model={"backbone": str(model_dirs["smolvlm"][0]), "num_lm_layers": 1,
                                                      "freeze": "vision", "lora": {"rank": 2}, "image_fit": "pad",
                                                      "gradient_checkpointing": True,
                                                      "head": {"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64}},
                          data={"held_out_episodes": 0}, train={"checkpoint_interval": 0})
    assert train(dataset, tmp_path / "run", "--config", config, "--steps", "1", "--batch-size", "2") == 0, \
        capsys.readouterr().err
    policy = load_checkpoint(tmp_path / "run" / "policy")
    options = policy.config.extra["training"]["backbone_options"]
    assert policy.config.backbone_family == "smolvlm" and policy.config.num_lm_layers == 1
    assert options["freeze"] == "vision" and options["lora"] == {"rank": 2, "alpha": 32.0, "dropout": 0.0}
    assert options["gradient_checkpointing"] and options["trainable_backbone_parameters"] > 0
    assert policy.backbone.image_fit == ImageFit(mode="pad")
    bad = write_config(tmp_path / "bad.yaml", model={"backbone": str(model_dirs["smolvlm"][0]),
                                                     "freeze": "language", "lora": {"rank": 2}})
    assert train(dataset, tmp_path / "bad", "--config", bad, "--steps", "1") == 1
    assert "model.lora adapts the language model" in capsys.readouterr().err


# ---- image fit ---------------------------------------------------------------------------------

def test_resize_with_pad_keeps_the_aspect_ratio_and_pads_with_the_fit_value(model_dirs):
    backbone = VLMBackbone.from_directory(model_dirs["smolvlm"][0], image_fit=ImageFit(mode="pad", pad_pixel=0.0))
    size = backbone.image_size  # 32: a 24x40 frame becomes 19x32 content under 13 padded rows
    images = torch.randint(0, 256, (2, 24, 40, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels = backbone.preprocess(images)
    assert pixels.shape == (2, 3, size, size)
    assert backbone.image_fit.fitted_size(24, 40, size) == (19, 32)
    black = (0.0 - backbone.image_mean) / backbone.image_std  # per channel: MEAN/STD are the directory's
    assert torch.equal(pixels[:, :, :13, :], black.expand(2, 3, 13, size))
    content = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2), size=(19, 32), mode="bilinear",
                                              antialias=True, align_corners=False)
    normalised = (content.float() / 255 - backbone.image_mean) / backbone.image_std
    torch.testing.assert_close(pixels[:, :, 13:, :], normalised)
    # frames stored at the fitted size (as training stores them) give the same input
    assert torch.equal(backbone.preprocess(content.permute(0, 2, 3, 1).contiguous()), pixels)


# ---- item 3: LeRobot SmolVLA -------------------------------------------------------------------

def write_smolvla(directory: Path, assets: Path, vlm, num_vlm_layers=2):
    """A checkpoint as LeRobot saves SmolVLA: config.json + model.safetensors with the VLM under
    model.vlm_with_expert.vlm. (its LM head too), the action expert and projections beside it."""
    directory.mkdir(parents=True)
    tensors = {f"{VLM_PREFIX}{name}": tensor.clone().contiguous() for name, tensor in vlm.model.state_dict().items()
               if not name.startswith("text_model.layers.") or int(name.split(".")[2]) < num_vlm_layers}
    tensors["model.vlm_with_expert.vlm.lm_head.weight"] = vlm.lm_head.weight.detach().clone()
    generator = torch.Generator().manual_seed(3)
    expert_key = "model.vlm_with_expert.lm_expert.layers.0.self_attn.q_proj.weight"
    tensors[expert_key] = torch.randn(16, 24, generator=generator)
    tensors["model.action_in_proj.weight"] = torch.randn(24, 32, generator=generator)
    tensors["model.state_proj.weight"] = torch.randn(32, 32, generator=generator)
    save_file(tensors, str(directory / "model.safetensors"))
    config = {"type": "smolvla", "vlm_model_name": str(assets), "num_vlm_layers": num_vlm_layers,
              "resize_imgs_with_padding": [32, 32], "tokenizer_max_length": 24, "chunk_size": 50,
              "max_state_dim": 32, "max_action_dim": 32}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_smolvla_checkpoint_vision_language_part_becomes_the_backbone(model_dirs, dataset, tmp_path, capsys):
    assets, saved = model_dirs["smolvlm"]
    torch.manual_seed(11)
    robot_pretrained = _MODEL_CLASSES["smolvlm"](saved.config)  # other weights than the assets' directory
    checkpoint = write_smolvla(tmp_path / "smolvla", assets, robot_pretrained)
    backbone = backbone_from_smolvla(checkpoint, assets)
    assert backbone.family == "smolvlm" and backbone.num_lm_layers == 2 and backbone.max_text_tokens == 24
    loaded, expected = backbone.vlm.state_dict(), _expected_vlm_state(robot_pretrained, 2)
    assert set(loaded) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name
    assert backbone.image_fit == ImageFit(mode="pad", pad_side="start", pad_pixel=0.0)
    ids, mask = backbone.tokenize([TASK])
    assert ids[0][mask[0]].tolist() == PreTrainedTokenizerFast(tokenizer_file=str(assets / "tokenizer.json"))(
        TASK)["input_ids"]
    assert backbone.weights_sha256 == hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    # through the CLI, with the assets directory given
    config = write_config(tmp_path / "c.yaml", model={"head": {"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64}},
                          data={"held_out_episodes": 0}, train={"checkpoint_interval": 0})
    out = tmp_path / "run"
    assert train(dataset, out, "--config", config, "--backbone", str(checkpoint), "--backbone-assets", str(assets),
                 "--steps", "1", "--batch-size", "2") == 0, capsys.readouterr().err
    policy = load_checkpoint(out / "policy")
    assert policy.backbone.image_fit == backbone.image_fit and policy.config.extra["backbone"]["sha256"] == \
        backbone.weights_sha256
    # without the assets: one line naming what to pass
    assert train(dataset, tmp_path / "bad", "--backbone", str(checkpoint), "--steps", "1") == 1
    assert "holds no VLM architecture or tokenizer" in capsys.readouterr().err


def test_smolvla_checkpoint_that_does_not_fit_its_assets_is_named(model_dirs, tmp_path):
    assets, saved = model_dirs["smolvlm"]
    checkpoint = write_smolvla(tmp_path / "smolvla", assets, saved, num_vlm_layers=1)
    with pytest.raises(BackboneError, match="tensors missing under 'model.vlm_with_expert.vlm.model.'"):
        backbone_from_smolvla(checkpoint, assets, num_lm_layers=2)
    with pytest.raises(BackboneError, match="not SmolVLA's VLM"):
        backbone_from_smolvla(checkpoint, model_dirs["paligemma"][0])


# ---- item 5: tokenizers ------------------------------------------------------------------------

def test_new_configurations_tokenize_every_instruction_without_collapsing_unknown_words():
    tokenizer = build_random_policy("tiny", PROFILE).backbone.tokenizer
    assert type(tokenizer.backend_tokenizer.model).__name__ == "BPE"
    unknown = tokenizer.unk_token_id
    seen = set()
    for text in INSTRUCTIONS[:4]:
        ids = tokenizer(text)["input_ids"]
        assert unknown not in ids and tokenizer.decode(ids, skip_special_tokens=True) == text.lower()
        seen.add(tuple(ids))
    assert len(seen) == 4
    # two different unknown words stay different (a word-level vocabulary maps both to <unk>)
    assert tokenizer("grab the flask")["input_ids"] != tokenizer("grab the vial")["input_ids"]
    assert build_tokenizer().get_vocab() == tokenizer.get_vocab(), "the in-code tokenizer is deterministic"


# ---- memory of the ways of training (vla-ros bench memory) ---------------------------------------

def test_memory_bench_counts_a_frozen_embedding_table_out_of_optimiser_and_ema_state():
    from vla_ros.policy.bench_memory import measure

    trained = measure("tiny", "aloha_sim", "none", True, None)
    frozen = measure("tiny", "aloha_sim", "none", False, None)
    policy = build_random_policy("tiny", PROFILE)
    embedding = policy.backbone.vlm.get_input_embeddings().weight.numel()
    assert trained["parameters"] == frozen["parameters"] == sum(p.numel() for p in policy.parameters())
    assert trained["trainable_parameters"] - frozen["trainable_parameters"] == embedding
    # AdamW: two float32 moments per trainable value (plus a 4-byte step per tensor); EMA: one copy
    assert trained["optimizer_state_bytes"] - frozen["optimizer_state_bytes"] == 8 * embedding + 4
    assert trained["ema_bytes"] - frozen["ema_bytes"] == 4 * embedding


def test_the_committed_1p4b_measurement_leaves_out_exactly_the_embedding_table():
    report = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "memory_1p4b_meta.json").read_text())
    frozen = report["settings"]["full, embeddings frozen (default)"]
    assert report["command"] == "vla-ros bench memory --config 1.4b --profile aloha_sim"
    assert frozen["embedding_parameters"] == 257152 * 2048 and not frozen["embedding_trainable"]
    assert frozen["trainable_parameters"] == frozen["parameters"] - frozen["embedding_parameters"]


# ---- FSDP under torchrun (gloo, CPU) -------------------------------------------------------------

def test_fsdp_two_processes_on_gloo_shard_the_model_and_write_a_loadable_checkpoint(dataset, tmp_path):
    out = tmp_path / "fsdp"
    config = write_config(tmp_path / "c.yaml", model={"lora": {"rank": 2}},
                          train={"distributed": "fsdp", "checkpoint_interval": 2, "lr": 1e-2, "warmup_steps": 0},
                          data={"held_out_episodes": 0})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "vla_ros.policy.finetune", "--dataset", str(dataset), "--output", str(out), "--config", config,
               "--steps", "3", "--batch-size", "2", "--threads", "1", "--quiet"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = _run_process_group(command, env)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["distributed"] == "fsdp" and summaries[0]["world_size"] == 2
    summary = summaries[0]
    assert summary["parameters_on_this_rank"] < 0.6 * summary["parameters"], "each rank holds about half"
    assert (out / "checkpoints" / "step_00000002" / "model.safetensors").is_file()
    policy = load_checkpoint(out / "policy")
    assert sum(p.numel() for p in policy.parameters()) == summary["parameters"] - sum(
        p.numel() for name, p in _lora_tiny().named_parameters() if "lora_" in name)
    initial = build_random_policy("tiny", PROFILE).backbone.language_model().layers[0].self_attn.q_proj.weight
    trained = policy.backbone.language_model().layers[0].self_attn.q_proj.weight
    assert not any("lora_" in name for name, _ in policy.named_parameters())
    assert not torch.equal(trained, initial), "the trained adapters were folded into the saved weights"
    # the trainer state is sharded per process: resuming is refused in one line, on every rank
    result = _run_process_group([*command, "--resume"], env)
    assert result.returncode != 0 and "--resume is not supported with train.distributed: fsdp" in result.stderr
    # (torchrun itself prints a traceback of its agent when a worker exits non-zero; none is ours)
    assert not [line for line in result.stderr.splitlines() if 'File "' in line and "vla_ros" in line]


def _run_process_group(command: list[str], env: dict, timeout: float = 300.0):
    """subprocess.run in a session of its own: a timeout (or pytest's) kills torchrun's workers
    too, which a plain kill of torchrun leaves running."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               cwd=Path(__file__).resolve().parents[2], start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is still running
        process.wait()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _lora_tiny():
    policy = build_random_policy("tiny", PROFILE)
    policy.backbone.add_lora(2, 32.0)
    return policy


def test_training_stores_frames_at_the_size_the_padded_fit_resizes_them_to(model_dirs):
    from types import SimpleNamespace

    from vla_ros.policy.finetune import TrainSetupError, working_image_size

    policy = _policy(model_dirs, "smolvlm")
    policy.backbone.image_fit = ImageFit(mode="pad")
    dataset = SimpleNamespace(features={"observation.images.cam_high": {"shape": [240, 320, 3]}},
                              feature_key=lambda camera: f"observation.images.{camera}")
    assert working_image_size(dataset, policy, {}, None) == (24, 32)  # 32 on the long side, 3:4 kept
    assert working_image_size(dataset, policy, {"cam_high": (0.0, 0.0, 1.0, 0.375)}, None) == (32, 16)
    assert working_image_size(dataset, policy, {}, 20) == (20, 20)  # data.image_size wins
    policy.backbone.image_fit = ImageFit()
    assert working_image_size(dataset, policy, {}, None) == (32, 32)
    two = _policy(model_dirs, "smolvlm")
    two.config.camera_keys = ("cam_high", "cam_low")
    two.backbone.image_fit = ImageFit(mode="pad")
    dataset.features["observation.images.cam_low"] = {"shape": [240, 240, 3]}
    with pytest.raises(TrainSetupError, match="different sizes"):
        working_image_size(dataset, two, {}, None)


def test_an_instruction_the_tokenizer_would_lose_part_of_is_refused(model_dirs, dataset, tmp_path, capsys):
    backbone = VLMBackbone.from_directory(model_dirs["paligemma"][0], max_text_tokens=40)
    assert backbone.check_instruction(TASK) == len(backbone.tokenizer(TASK)["input_ids"])
    with pytest.raises(BackboneError, match="unknown token"):
        backbone.check_instruction("grasp the cube ★")  # not in the WordPiece alphabet: [UNK]
    assert build_random_policy("tiny", PROFILE).backbone.check_instruction("grasp the cube ★") > 0  # bytes
    config = write_config(tmp_path / "c.yaml", model={"max_text_tokens": 3})
    assert train(dataset, tmp_path / "run", "--config", config, "--backbone", str(model_dirs["paligemma"][0]),
                 "--steps", "1") == 1
    error = capsys.readouterr().err.strip()
    assert "over max_text_tokens 3" in error and "\n" not in error


def test_checkpoints_made_before_the_bpe_tokenizer_keep_their_own():
    before = Path(__file__).resolve().parents[1] / "assets" / "checkpoint_bidirectional_wordlevel"
    tokenizer = load_checkpoint(before).backbone.tokenizer
    assert type(tokenizer.backend_tokenizer.model).__name__ == "WordLevel"
    assert tokenizer.get_vocab() == PreTrainedTokenizerFast(
        tokenizer_file=str(before / "backbone" / "tokenizer.json")).get_vocab()
