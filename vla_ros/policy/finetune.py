"""`vla-ros train`: fine-tune (or train from scratch) the one-step policy on a LeRobot v3 dataset.

    vla-ros train --dataset DIR --output OUT [--config YAML | tiny] [--init CHECKPOINT]
                  [--backbone VLM_DIR [--backbone-assets DIR]] [--steps N] [--alpha A] [--resume]
                  [--dataset DIR2 ... --dataset-weight W --dataset-weight W2 ...] [--delta-actions] [--augment]
    torchrun --nproc-per-node K -m vla_ros.policy.finetune ...   (DDP or FSDP: nccl on CUDA, gloo on CPU)

--backbone (model.backbone) starts from pretrained vision-language weights: a Hugging Face
PaliGemma / SmolVLM / SmolVLM2 directory as downloaded, or a LeRobot SmolVLA checkpoint (then
--backbone-assets names its VLM's directory for the config and tokenizer). The backbone's own
tokenizer and image preprocessing are used; model.num_lm_layers, model.freeze, model.lora,
model.gradient_checkpointing and train.distributed say how it trains (docs/finetune.md).

Everything that can be wrong with the inputs is checked before OUT is touched: the dataset
against the robot profile (dims, joint names, cameras), the checkpoint against the profile, and
every episode's table and videos (decoded into memory by vla_ros.policy.batches). So a bad
dataset (missing columns, dim mismatch, empty episode, corrupt mp4) fails with a clear error
and leaves no checkpoint behind; the trainer's checkpoints are atomic for the same reason.

OUT after a run:
    OUT/policy/                      the final deployable checkpoint (EMA weights), loadable by
                                     PolicyRuntime / policy_node
    OUT/checkpoints/step_XXXXXXXX/   periodic checkpoints: a policy checkpoint + trainer_state.pt
    OUT/train_log.jsonl              loss, LR, grad norm, samples/s every log_interval steps
    OUT/train_config.json            the resolved configuration, the split and the dataset
    OUT/tensorboard/                 the same curves, only if tensorboard is installed

Several datasets (--dataset repeated, or data.datasets) are mixed with weights in one run
(vla_ros.policy.batches.MixedSamples): they must agree on joint names, dims, fps and the cameras
used; each is split into training and held-out episodes on its own. --delta-actions
(model.delta_actions) learns the arm joints' targets as offsets from the state, grippers absolute
(vla_ros.policy.delta); the checkpoint records it and turns predictions back into absolute targets.

Normalisation statistics are computed from the training episodes (batches.training_stats: the
targets the model learns, weighted as the datasets are mixed) and stored in the checkpoint.
Held-out episodes (data.held_out_episodes) are recorded in the checkpoint's
config.extra["training"], where `vla-ros eval` finds them.

Under DDP only rank 0 writes (log, checkpoints, final policy); other ranks train in a temporary
directory that is removed. Each rank draws its own batches and flow noise.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vla_ros.data.lerobot import DatasetError, LeRobotDataset
from vla_ros.policy.backbone import FREEZE_PRESETS, ImageFit
from vla_ros.policy.augment import ImageAugment
from vla_ros.policy.batches import DatasetSamples, MixedSamples, split_episodes, training_stats
from vla_ros.policy.checkpoint import (NAMED_CONFIGS, build_pretrained_policy, build_random_policy, check_compatible,
                                       load_backbone, load_checkpoint, save_checkpoint)
from vla_ros.policy.crop import region_pixels
from vla_ros.policy.delta import arm_joint_names, delta_layout
from vla_ros.policy.model import ConfigError, PolicyConfig, VLAPolicy
from vla_ros.policy.normalize import NormStats
from vla_ros.policy.train import LOG_FILE, Trainer, TrainConfig, resolve_device
from vla_ros.robot.profile import load_profile

POLICY_DIR = "policy"
CONFIG_FILE = "train_config.json"

# What a named config (`--config tiny`) means; config/train_tiny.yaml documents each knob.
DEFAULTS: dict = {
    "model": {"config": "tiny", "profile": "aloha_sim", "cameras": None, "alpha": 4.0, "horizon": None,
              "normalization": "mean_std", "recommended_steps": 1, "recommended_noise_correlation": 0.0,
              "recommended_noise_scale": 1.0, "action_prefix_steps": 0,
              "action_prefix_noise": 0.0, "seed": 0, "camera_crops": None,
              "backbone": None, "backbone_assets": None, "num_lm_layers": None, "max_text_tokens": None,
              "head": None, "freeze": "none", "train_embeddings": False, "lora": None,
              "gradient_checkpointing": False, "image_fit": None, "delta_actions": None},
    "data": {"datasets": None, "held_out_episodes": 0.1, "split_seed": 0, "image_size": None, "max_memory_gb": 2.0,
             "state_noise_std": 0.0, "augment": None},
    "train": {"lr": 3e-4, "warmup_steps": 100, "total_steps": 2000, "batch_size": 32, "ema_decay": 0.99,
              "backbone_lr_scale": 1.0, "checkpoint_interval": 500, "keep_checkpoints": 2, "log_interval": 10,
              "seed": 0},
}


class TrainSetupError(ValueError):
    """A training run that cannot start: bad config, or inputs that do not fit together."""


def load_train_config(source: str | None) -> dict:
    """DEFAULTS for a named config (or None = tiny), else DEFAULTS updated section by section from YAML."""
    config = copy.deepcopy(DEFAULTS)
    if source is None:
        return config
    if source in NAMED_CONFIGS:
        config["model"]["config"] = source
        return config
    path = Path(source)
    if not path.is_file():
        raise TrainSetupError(f"--config {source!r}: neither a YAML file nor a named config "
                              f"({', '.join(NAMED_CONFIGS)})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise TrainSetupError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(data, dict):
        raise TrainSetupError(f"{path}: expected a mapping with sections {sorted(DEFAULTS)}")
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise TrainSetupError(f"{path}: unknown sections {unknown} (known: {sorted(DEFAULTS)})")
    for section, values in data.items():
        if not isinstance(values, dict):
            raise TrainSetupError(f"{path}: section '{section}' must be a mapping")
        if section != "train":  # TrainConfig.from_dict names unknown train keys itself
            unknown = sorted(set(values) - set(DEFAULTS[section]))
            if unknown:
                raise TrainSetupError(f"{path}: unknown keys in '{section}': {unknown}")
        config[section].update(values)
    if config["model"]["config"] not in NAMED_CONFIGS:
        raise TrainSetupError(f"{path}: model.config must be one of {list(NAMED_CONFIGS)}")
    return config


LORA_KEYS = {"rank": 16, "alpha": 32.0, "dropout": 0.0}


def check_backbone_options(model: dict) -> None:
    """The backbone-training keys of the model section, checked before anything is loaded."""
    if model["freeze"] not in FREEZE_PRESETS:
        raise TrainSetupError(f"model.freeze must be one of {list(FREEZE_PRESETS)}, got {model['freeze']!r}")
    lora = model["lora"]
    if lora is not None:
        if not isinstance(lora, dict) or set(lora) - set(LORA_KEYS):
            raise TrainSetupError(f"model.lora must be null or a mapping with keys {sorted(LORA_KEYS)}, got {lora!r}")
        if model["freeze"] in ("language", "both"):
            raise TrainSetupError("model.lora adapts the language model, which model.freeze "
                                  f"'{model['freeze']}' freezes: choose one")
    for key in ("num_lm_layers", "max_text_tokens"):
        if model[key] is not None and not (isinstance(model[key], int) and model[key] >= 1):
            raise TrainSetupError(f"model.{key} must be null or a positive integer, got {model[key]!r}")
    if model["image_fit"] not in (None, "stretch", "pad"):
        raise TrainSetupError(f"model.image_fit must be null, stretch or pad, got {model['image_fit']!r}")
    if model["head"] is not None and not isinstance(model["head"], dict):
        raise TrainSetupError(f"model.head must be null or a mapping of head settings, got {model['head']!r}")


def apply_backbone_options(policy: VLAPolicy, model: dict) -> dict:
    """LoRA, which weights train and gradient checkpointing, as the model section says; returns
    them for the checkpoint's training record."""
    lora = {**LORA_KEYS, **model["lora"]} if model["lora"] is not None else None
    if lora is not None:
        policy.backbone.add_lora(int(lora["rank"]), float(lora["alpha"]), float(lora["dropout"]))
    policy.backbone.freeze(model["freeze"], bool(model["train_embeddings"]))
    if model["gradient_checkpointing"]:
        policy.backbone.enable_gradient_checkpointing()
    trainable = sum(p.numel() for p in policy.backbone.parameters() if p.requires_grad)
    return {"freeze": model["freeze"], "train_embeddings": bool(model["train_embeddings"]), "lora": lora,
            "gradient_checkpointing": bool(model["gradient_checkpointing"]),
            "trainable_backbone_parameters": trainable}


def working_image_size(dataset: LeRobotDataset, policy: VLAPolicy, crops: dict, requested) -> tuple[int, int]:
    """The size frames are stored at for training: data.image_size, else what the backbone makes of
    each camera's (cropped) frames before any padding, so that training sees exactly what the
    runtime's preprocessing of whole frames gives."""
    if requested:
        return (requested, requested) if isinstance(requested, int) else tuple(requested)
    backbone = policy.backbone
    sizes = set()
    for camera in policy.config.camera_keys:
        height, width = dataset.features[dataset.feature_key(camera)]["shape"][:2]
        if camera in crops:
            rows, cols = region_pixels(height, width, crops[camera])
            height, width = rows.stop - rows.start, cols.stop - cols.start
        sizes.add(backbone.image_fit.fitted_size(height, width, backbone.image_size))
    if len(sizes) > 1:
        raise TrainSetupError(f"the cameras' frames fit the backbone's padded input at different sizes "
                              f"{sorted(sizes)}; "
                              "crop them to one aspect ratio (model.camera_crops) or set data.image_size")
    return sizes.pop()


def _with_training_settings(policy: VLAPolicy, stats: NormStats, model: dict, init: bool,
                            camera_crops: dict, delta_actions: tuple[str, ...]) -> VLAPolicy:
    """The policy rebuilt around the dataset's statistics and the run's alpha/horizon/steps.

    A random policy gets a new head for the configured horizon and normalisation; an --init
    checkpoint keeps its head weights, so its horizon and normalisation mode must stay."""
    values = policy.config.to_dict()
    values.update(alpha=float(model["alpha"]), recommended_steps=int(model["recommended_steps"]),
                  recommended_noise_correlation=float(model["recommended_noise_correlation"]),
                  recommended_noise_scale=model["recommended_noise_scale"],
                  action_prefix_steps=model["action_prefix_steps"],
                  action_prefix_noise=model["action_prefix_noise"],
                  camera_crops=camera_crops, delta_actions=list(delta_actions))
    horizon = int(model["horizon"] or policy.config.horizon)
    if init:
        if horizon != policy.config.horizon:
            raise TrainSetupError(f"model.horizon {model['horizon']} differs from the --init checkpoint's "
                                  f"{policy.config.horizon} (the head's shape depends on it)")
        stats = NormStats(stats.state, stats.action, policy.config.normalization, stats.eps, stats.extra)
    else:
        values.update(horizon=horizon, normalization=model["normalization"])
        values["head"]["horizon"] = horizon
        stats = NormStats(stats.state, stats.action, model["normalization"], stats.eps, stats.extra)
    config = PolicyConfig.from_dict(values)
    torch.manual_seed(int(model["seed"]))
    rebuilt = VLAPolicy(config, policy.backbone, stats)
    if init:
        rebuilt.head.load_state_dict(policy.head.state_dict())
    return rebuilt


def _camera_crops(model: dict, config: PolicyConfig) -> dict:
    """The run's camera regions of interest (model.camera_crops, else the base policy's: an --init
    checkpoint keeps the regions it learnt on), checked against the policy's cameras before any
    data is loaded."""
    crops = model["camera_crops"] if model["camera_crops"] is not None else config.camera_crops
    try:
        return PolicyConfig.from_dict({**config.to_dict(), "camera_crops": crops}).camera_crops
    except ConfigError as error:
        raise TrainSetupError(f"model.camera_crops: {error}") from None


def check_dataset_fits(dataset: LeRobotDataset, config: PolicyConfig) -> None:
    """Raise DatasetError unless the dataset has the policy's state/action dims and names and cameras."""
    for key, names in (("observation.state", config.state_names), ("action", config.action_names)):
        feature = dataset.features[key]
        shape, found = list(feature.get("shape", [])), feature.get("names")
        if shape != [len(names)] or (found is not None and list(found) != list(names)):
            raise DatasetError(f"{dataset.root}: {key} is {shape} {found}, the policy expects "
                               f"[{len(names)}] {list(names)}")
    missing = [c for c in config.camera_keys if c not in dataset.cameras]
    if missing:
        raise DatasetError(f"{dataset.root}: the policy's cameras {missing} are not in the dataset "
                           f"(it has {dataset.cameras})")


def dataset_sources(paths: list[str] | None, weights: list[float] | None, configured) -> list[tuple[str, float]]:
    """The run's (dataset directory, mixing weight) pairs: --dataset (repeatable) with one
    --dataset-weight per --dataset (default 1 each), else data.datasets, a list of paths or of
    {path, weight} mappings."""
    if paths:
        if weights and len(weights) != len(paths):
            raise TrainSetupError(f"--dataset-weight given {len(weights)} times for {len(paths)} --dataset: "
                                  "give one weight per dataset, in the same order, or none")
        entries = list(zip(paths, weights or [1.0] * len(paths)))
    elif weights:
        raise TrainSetupError("--dataset-weight needs --dataset (one weight per --dataset)")
    elif configured:
        if not isinstance(configured, list):
            raise TrainSetupError(f"data.datasets must be a list of paths or {{path, weight}} mappings, "
                                  f"got {configured!r}")
        entries = []
        for index, entry in enumerate(configured):
            entry = {"path": entry} if isinstance(entry, str) else entry
            if not isinstance(entry, dict) or set(entry) - {"path", "weight"} or not isinstance(entry.get("path"), str):
                raise TrainSetupError(f"data.datasets[{index}] must be a path or {{path: DIR, weight: W}}, "
                                      f"got {entry!r}")
            entries.append((entry["path"], entry.get("weight", 1.0)))
    else:
        raise TrainSetupError("no dataset: give --dataset DIR (repeat it to mix several) or data.datasets")
    seen = set()
    for path, weight in entries:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (np.isfinite(weight) and weight > 0):
            raise TrainSetupError(f"dataset {path}: the mixing weight must be a positive number, got {weight!r}")
        if Path(path).resolve() in seen:
            raise TrainSetupError(f"dataset {path} is listed twice: give it once, with the sum of the weights")
        seen.add(Path(path).resolve())
    return [(str(path), float(weight)) for path, weight in entries]


def check_datasets_agree(datasets: list[LeRobotDataset], cameras) -> None:
    """Raise DatasetError naming the first mismatch if mixed datasets differ in state/action
    dims or joint names, fps, or lack a camera the policy uses that the first one has."""
    first = datasets[0]
    for other in datasets[1:]:
        for key in ("observation.state", "action"):
            ours, theirs = first.features[key], other.features[key]
            shape, expected_shape = list(theirs.get("shape", [])), list(ours.get("shape", []))
            if shape != expected_shape:
                raise DatasetError(f"mixed datasets disagree on {key}: {other.root} has shape {shape}, "
                                   f"{first.root} has {expected_shape}")
            names, expected_names = theirs.get("names"), ours.get("names")
            if names != expected_names:
                differing = [f"{i}: {a} vs {b}" for i, (a, b) in enumerate(zip(names or [], expected_names or []))
                             if a != b] or [f"{names} vs {expected_names}"]
                raise DatasetError(f"mixed datasets disagree on {key} names: {other.root} vs {first.root} at "
                                   f"{differing[:3]}")
        if other.fps != first.fps:
            raise DatasetError(f"mixed datasets disagree on fps: {other.root} has {other.fps:g}, {first.root} has "
                               f"{first.fps:g} (an action chunk would span different times)")
        missing = [c for c in cameras if c in first.cameras and c not in other.cameras]
        if missing:
            raise DatasetError(f"mixed datasets disagree on cameras: {other.root} lacks {missing}, which the policy "
                               f"uses and {first.root} has")


def _delta_actions(model: dict, policy: VLAPolicy, profile, init: bool) -> tuple[str, ...]:
    """The action dims learned as offsets (model.delta_actions: the arm joints, grippers absolute).
    null keeps an --init checkpoint's choice (a new policy: off); an explicit choice must match it,
    since the head's outputs would change meaning."""
    requested = model["delta_actions"]
    if requested not in (None, True, False):
        raise TrainSetupError(f"model.delta_actions must be null, true or false, got {requested!r}")
    if init:
        if requested is not None and requested != bool(policy.config.delta_actions):
            raise TrainSetupError(f"model.delta_actions is {requested} but the --init checkpoint learned "
                                  f"{'delta' if policy.config.delta_actions else 'absolute'} actions: "
                                  "its head's outputs would change meaning; leave it null or match it")
        return policy.config.delta_actions
    return arm_joint_names(policy.config.action_names, profile.gripper_indices) if requested else ()


class Prepared:
    """Everything a run needs, built and checked before the output directory is touched."""

    def __init__(self, args, config: dict):
        model, data = config["model"], config["data"]
        self.config = config
        self.train_config = TrainConfig.from_dict(config["train"])
        check_backbone_options(model)
        sources = dataset_sources(args.dataset, args.dataset_weight, data["datasets"])
        self.datasets = [LeRobotDataset(path) for path, _ in sources]
        self.weights = [weight for _, weight in sources]
        self.dataset = self.datasets[0]
        if args.init and model["backbone"]:
            raise TrainSetupError("--init and --backbone (model.backbone) both choose the starting weights: "
                                  "give one")
        if args.init:
            base = load_checkpoint(args.init)
            profile = load_profile(model["profile"] if args.profile_given else
                                   (base.config.robot_profile or model["profile"]))
            check_compatible(base.config, profile)
        elif model["backbone"]:
            profile = load_profile(model["profile"])
            backbone = load_backbone(model["backbone"], model["num_lm_layers"], model["backbone_assets"],
                                     model["max_text_tokens"])
            base = build_pretrained_policy(backbone, profile, model["cameras"], int(model["seed"]),
                                           model["head"], float(model["alpha"]))
        else:
            profile = load_profile(model["profile"])
            base = build_random_policy(model["config"], profile, model["cameras"], int(model["seed"]))
        if model["image_fit"]:  # black padding on the top/left, as pi0 and SmolVLA pad
            base.backbone.image_fit = ImageFit(mode=model["image_fit"])
        check_datasets_agree(self.datasets, base.config.camera_keys)
        for dataset in self.datasets:
            dataset.check_profile(profile)
            check_dataset_fits(dataset, base.config)
        self.splits = [split_episodes(dataset.num_episodes, data["held_out_episodes"], int(data["split_seed"]))
                       for dataset in self.datasets]
        self.train_episodes, self.held_out = self.splits[0]
        crops = _camera_crops(model, base.config)
        sizes = [working_image_size(dataset, base, crops, data["image_size"]) for dataset in self.datasets]
        if len(set(sizes)) > 1:
            raise TrainSetupError(f"mixed datasets' frames fit the model at different sizes {sizes} "
                                  "(other frame shapes): set data.image_size")
        size = sizes[0]
        horizon = int(model["horizon"] or base.config.horizon)
        budget = int(float(data["max_memory_gb"]) * 2**30)  # shared: later datasets get what is left
        parts = []
        for dataset, (episodes, _) in zip(self.datasets, self.splits):
            parts.append(DatasetSamples(dataset, episodes, base.config.camera_keys, horizon, size, budget,
                                        float(data["state_noise_std"]), crops=crops,
                                        augment=ImageAugment.from_dict(data["augment"])))
            budget = max(0, budget - parts[-1].memory_bytes)
        self.samples = parts[0] if len(parts) == 1 else MixedSamples(parts, self.weights)
        delta_actions = _delta_actions(model, base, profile, bool(args.init))
        layout = delta_layout(base.config.state_names, base.config.action_names, delta_actions) \
            if delta_actions else (None, None)
        stats = training_stats(self.samples, *layout)
        self.sources = [{"path": str(dataset.root.resolve()), "weight": weight, "train_episodes": train,
                         "held_out_episodes": held, "train_frames": part.num_frames}
                        for dataset, weight, (train, held), part
                        in zip(self.datasets, self.weights, self.splits, parts)]
        stats.extra = {"source": "datasets " + ", ".join(f"{s['path']} (weight {s['weight']:g})" for s in self.sources)
                       if len(parts) > 1 else f"dataset {self.dataset.root.resolve()}",
                       "episodes": self.train_episodes,
                       "action_targets": "offsets from the state (delta actions)" if delta_actions else "absolute"}
        if len(parts) > 1:
            stats.extra["datasets"] = [{k: s[k] for k in ("path", "weight", "train_episodes")} for s in self.sources]
        self.policy = _with_training_settings(base, stats, model, init=bool(args.init), camera_crops=crops,
                                              delta_actions=delta_actions)
        backbone_options = apply_backbone_options(self.policy, model)
        instructions = sorted({e.task for e in self.samples.episodes})
        token_counts = {text: self.policy.backbone.check_instruction(text) for text in instructions}
        self.policy.config.extra["training"] = {
            "dataset": str(self.dataset.root.resolve()), "train_episodes": self.train_episodes,
            "held_out_episodes": self.held_out, "instructions": instructions, "instruction_tokens": token_counts,
            "image_size": list(size), "init": str(args.init) if args.init else None,
            # The frame sizes the policy learned from: a simulator should render at these.
            "camera_image_sizes": {camera: list(self.dataset.features[self.dataset.feature_key(camera)]["shape"][:2])
                                   for camera in base.config.camera_keys},
            "config": model["config"] if not (args.init or model["backbone"]) else None,
            "backbone": model["backbone"], "backbone_options": backbone_options,
            # every dataset of the run with its weight and split (`vla-ros eval` finds its own here)
            "datasets": self.sources,
        }


class _PolicyLoss(nn.Module):
    """forward = compute_loss, so that DDP's forward hook (gradient sync) runs on every step."""

    def __init__(self, policy: VLAPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.policy.compute_loss(batch, generator)


class _Local(nn.Module):
    """Holds the loss module as `.module`, exactly as DDP does, so that parameter names and
    trainer states are the same with and without DDP (a run can resume on another world size)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        return self.module(*args)


class TrainablePolicy(nn.Module):
    """The Trainer's model: the policy's loss (through DDP or FSDP when distributed) and its groups.

    FSDP (torch's fully_shard) shards every transformer layer of the backbone, then the rest, over
    all processes: each holds 1/world of the weights, gradients, optimiser and EMA state, which is
    what lets a model whose training state does not fit one GPU train at all."""

    def __init__(self, policy: VLAPolicy, distributed: bool, device: torch.device, strategy: str = "ddp"):
        super().__init__()
        loss = _PolicyLoss(policy.to(device))
        self.sharded = distributed and strategy == "fsdp"
        if self.sharded:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard
            from transformers.modeling_layers import GradientCheckpointingLayer

            mesh = init_device_mesh(device.type, (dist.get_world_size(),))
            for module in policy.backbone.modules():
                if isinstance(module, GradientCheckpointingLayer):  # transformers' decoder/encoder layers
                    fully_shard(module, mesh=mesh)
            fully_shard(loss, mesh=mesh)
            self.runner = _Local(loss)
        elif distributed:
            # static_graph: the same parameters (e.g. the vision tower's unused pooling head) go
            # without gradients on every step, which DDP must be told.
            ids = [device.index] if device.type == "cuda" else None
            self.runner = DistributedDataParallel(loss, device_ids=ids, static_graph=True)
        else:
            self.runner = _Local(loss)

    @property
    def policy(self) -> VLAPolicy:
        return self.runner.module.policy

    def full_state(self) -> dict[str, torch.Tensor] | None:
        """Under FSDP, the policy's whole state dict gathered on rank 0 (a collective: every rank
        calls it; the others get an empty dict). None when the policy's modules hold everything."""
        if not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(self.runner.module, options=StateDictOptions(full_state_dict=True,
                                                                                  cpu_offload=True))
        return {name.removeprefix("policy."): tensor for name, tensor in state.items()}

    def local_parameters(self) -> int:
        """Parameter values this process holds (all of them unless sharded)."""
        return sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in self.policy.parameters())

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.runner(batch, generator)

    def parameter_groups(self) -> dict:
        return self.policy.parameter_groups()


def save_policy_checkpoint(model: TrainablePolicy, directory: Path) -> None:
    """Trainer save_fn: every periodic checkpoint is itself a loadable policy checkpoint. Under
    FSDP every rank saves (the gather is a collective) but only rank 0 writes the policy."""
    state = model.full_state()
    if state is None or dist.get_rank() == 0:
        save_checkpoint(model.policy, directory, overwrite=True, state=state)


def _distributed_setup(requested: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; joins the process group. A CUDA
    device (requested 'cuda', or 'auto' with a GPU) is this process's LOCAL_RANK GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = resolve_device(requested).type == "cuda"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world, device


def _broadcast(value, rank: int, world: int):
    if world == 1:
        return value
    holder = [value if rank == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _ranks_agree(policy: VLAPolicy, world: int) -> bool:
    """Whether every rank ended with the same weights (DDP kept them in sync), by checksum."""
    if world == 1:
        return True
    checksum = torch.stack([p.detach().double().sum() for p in policy.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(gathered, checksum)  # the parameters' device suits the backend (cpu/gloo, cuda/nccl)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def _tensorboard(records: list[dict], directory: Path) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    with SummaryWriter(str(directory)) as writer:
        for record in records:
            for key in ("loss", "lr", "grad_norm", "samples_per_s"):
                writer.add_scalar(f"train/{key}", record[key], record["step"])


def run(args, config: dict) -> dict:
    """One training run (one rank of it); returns a summary. Raises on bad input."""
    output = Path(args.output)
    existing = output.exists() and any(output.iterdir())
    if existing and not args.resume:
        raise TrainSetupError(f"{output}: exists and is not empty; pass --resume to continue it or choose "
                              "a new directory")
    if args.resume and config["train"].get("distributed") == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainSetupError("--resume is not supported with train.distributed: fsdp yet (its trainer state is "
                              "sharded per process); resume with ddp or start a new run")
    prepared = Prepared(args, config)  # every input check happens here, before OUT is written
    train_config = prepared.train_config
    rank, world, device = _distributed_setup(train_config.device)
    train_config.device = str(device)
    scratch = None
    sharded = world > 1 and train_config.distributed == "fsdp"
    if rank == 0:
        trainer_dir = output
    else:
        scratch = tempfile.mkdtemp(prefix="vla-ros-train-rank")
        trainer_dir = Path(scratch)
        if not sharded:  # under FSDP every rank takes part in gathering the weights of a checkpoint
            train_config.checkpoint_interval = 0
        train_config.seed += rank
    created = not output.exists()
    try:
        model = TrainablePolicy(prepared.policy, world > 1, device, train_config.distributed)
        trainer = Trainer(model, train_config, trainer_dir, save_fn=save_policy_checkpoint)
        resume_from = None
        if args.resume and rank == 0:
            found = trainer.checkpoints()
            resume_from = str(found[-1]) if found else None
        resume_from = _broadcast(resume_from, rank, world)
        if resume_from:
            trainer.resume(resume_from)
            if rank > 0:  # the saved generator is rank 0's: give this rank its own noise again
                trainer.generator.manual_seed(train_config.seed * 1_000_003 + trainer.step)
        if rank == 0:
            summary = {"dataset": str(prepared.dataset.root), "datasets": prepared.sources,
                       "world_size": world, "device": str(device),
                       "train_episodes": prepared.train_episodes, "held_out_episodes": prepared.held_out,
                       "train_frames": prepared.samples.num_frames,
                       "image_memory_mb": round(prepared.samples.memory_bytes / 2**20, 1),
                       "resumed_from": resume_from, "config": config}
            (output / CONFIG_FILE).write_text(json.dumps(summary, indent=1))
        batches = prepared.samples.batches(train_config.batch_size, prepared.config["train"]["seed"], rank,
                                           start_step=trainer.step)
        records = trainer.fit(batches, steps=train_config.total_steps, progress=rank == 0 and not args.quiet)
        in_sync = None if sharded else _ranks_agree(model.policy, world)  # FSDP: one model, sharded
        final = None
        with trainer.ema_weights():
            state = model.full_state()
            if rank == 0:
                final = save_checkpoint(model.policy, output / POLICY_DIR, overwrite=True, state=state)
        if rank == 0:
            _tensorboard(records, output / "tensorboard")
        if world > 1:
            dist.barrier()
    except BaseException:
        if rank == 0 and created and not (output / "checkpoints").is_dir():
            shutil.rmtree(output, ignore_errors=True)
        raise
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    last = records[-1] if records else {}
    return {"checkpoint": str(final) if final else None, "steps": trainer.step, "loss": last.get("loss"),
            "samples_per_s": last.get("samples_per_s"), "log": str(output / LOG_FILE), "rank": rank,
            "world_size": world, "ranks_in_sync": in_sync,
            "distributed": train_config.distributed if world > 1 else None,
            "parameters": sum(p.numel() for p in model.policy.parameters()),  # a DTensor counts all its values
            "parameters_on_this_rank": model.local_parameters()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vla-ros train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", action="append",
                        help="LeRobot v3 dataset directory; repeat it to mix several (overrides data.datasets)")
    parser.add_argument("--dataset-weight", action="append", type=float,
                        help="mixing weight of the --dataset in the same position (default 1 each); "
                             "a dataset is drawn with probability weight / sum of weights, whatever its size")
    parser.add_argument("--output", required=True, help="run directory (checkpoints, logs, final policy)")
    parser.add_argument("--config", help=f"YAML file (see config/train_tiny.yaml) or a named config "
                                         f"({', '.join(NAMED_CONFIGS)}); default: tiny")
    parser.add_argument("--init", help="start from this policy checkpoint instead of random weights")
    parser.add_argument("--backbone", help="pretrained VLM directory (PaliGemma, SmolVLM, SmolVLM2) or LeRobot "
                                           "SmolVLA checkpoint to start from (overrides model.backbone)")
    parser.add_argument("--backbone-assets", help="for a SmolVLA checkpoint: its VLM's directory (config.json and "
                                                  "tokenizer; weights are not read)")
    parser.add_argument("--profile", help="robot profile (default: model.profile, or the --init checkpoint's)")
    parser.add_argument("--steps", type=int, help="total optimizer steps (overrides train.total_steps)")
    parser.add_argument("--alpha", type=float, help="time-shift alpha (overrides model.alpha; 1 = uniform)")
    parser.add_argument("--batch-size", type=int, help="per-process batch size (overrides train.batch_size)")
    parser.add_argument("--seed", type=int, help="seed of the weights, batches and noise")
    parser.add_argument("--state-noise-std", type=float,
                        help="noise on the training states, raw units (overrides data.state_noise_std)")
    parser.add_argument("--delta-actions", action=argparse.BooleanOptionalAction, default=None,
                        help="learn the arm joints' targets as offsets from the state, grippers absolute "
                             "(openpi's ALOHA convention; overrides model.delta_actions; default off)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="random crop, rotation and colour jitter of the training images with openpi's "
                             "defaults (overrides data.augment; default off)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads per process (0: torch's default; 1 is fastest for tiny models on a busy CPU)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rank = int(os.environ.get("RANK", "0"))
    try:
        config = load_train_config(args.config)
        args.profile_given = args.profile is not None
        if args.profile:
            config["model"]["profile"] = args.profile
        if args.backbone is not None:
            config["model"]["backbone"] = args.backbone
        if args.backbone_assets is not None:
            config["model"]["backbone_assets"] = args.backbone_assets
        if args.steps is not None:
            config["train"]["total_steps"] = args.steps
        if args.alpha is not None:
            config["model"]["alpha"] = args.alpha
        if args.batch_size is not None:
            config["train"]["batch_size"] = args.batch_size
        if args.state_noise_std is not None:
            config["data"]["state_noise_std"] = args.state_noise_std
        if args.delta_actions is not None:
            config["model"]["delta_actions"] = args.delta_actions
        if args.augment is not None:
            config["data"]["augment"] = args.augment
        if args.seed is not None:
            config["model"]["seed"] = config["train"]["seed"] = config["data"]["split_seed"] = args.seed
        summary = run(args, config)
    except (ValueError, OSError, FloatingPointError) as error:
        print(f"vla-ros train: {error}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
