"""Policy checkpoints are directories that load fully offline:

    DIR/config.json          PolicyConfig (architecture, dims, horizon, alpha, recommended steps,
                             camera keys, robot profile name, dim names) + format version
    DIR/model.safetensors    all weights: backbone (first k LM layers only, LoRA adapters folded
                             into their base weights), head, normaliser
    DIR/stats.json           the dataset statistics the normaliser was built from
    DIR/backbone/            the VLM's transformers config, tokenizer, preprocessor config and
                             image fit, so the original backbone directory is not needed to load

A policy fine-tuned from pretrained weights records where they came from: config.backbone_source
(the directory) and config.extra["backbone"] (source, family and the sha256 of the weight files).

Saving is atomic: everything is written to a temporary sibling directory that is then renamed
into place, so a crash never leaves a half-written checkpoint under DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file, save_model
from transformers.initialization import no_init_weights

from vla_ros.policy.backbone import BackboneError, VLMBackbone
from vla_ros.policy.smolvla import backbone_from_smolvla, read_smolvla_config
from vla_ros.policy.model import ConfigError, PolicyConfig, VLAPolicy, default_config
from vla_ros.policy.normalize import NormStats, StatsError
from vla_ros.policy.tiny import build_preset, build_tokenizer
from vla_ros.robot.profile import RobotProfile, load_profile

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "stats.json"
BACKBONE_DIR = "backbone"


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, incomplete, corrupt or does not fit the robot."""


def write_checkpoint_files(policy: VLAPolicy, directory: str | os.PathLike,
                           state: dict[str, torch.Tensor] | None = None) -> None:
    """Write the checkpoint files into `directory` (created if needed; not atomic by itself).
    `state`: the policy's full weights when the module holds only a shard of them (FSDP).

    Matches the Trainer's `save_fn(model, directory)`, which already stages into a temporary
    directory; use `save_checkpoint` everywhere else."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"format_version": FORMAT_VERSION, **policy.config.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    policy.stats.save(directory / STATS_FILE)
    policy.backbone.save_assets(directory / BACKBONE_DIR)
    if state is not None or policy.backbone.has_lora:
        state = policy.backbone.merged_state_dict(state or policy.state_dict(), prefix="backbone.")
        save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(directory / WEIGHTS_FILE),
                  metadata={"format": "pt"})
    else:
        save_model(policy, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})


def save_checkpoint(policy: VLAPolicy, directory: str | os.PathLike, overwrite: bool = False,
                    state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `policy` as a checkpoint directory (atomically; replaces DIR only if overwrite);
    `state` as in write_checkpoint_files."""
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise CheckpointError(f"{directory}: already exists (pass overwrite=True to replace it)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        write_checkpoint_files(policy, staging, state)
        if directory.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.replace(directory, retired / directory.name)
            os.replace(staging, directory)
            shutil.rmtree(retired)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def load_config(directory: str | os.PathLike) -> PolicyConfig:
    """The checkpoint's PolicyConfig (cheap: no weights are read)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a policy checkpoint (missing {CONFIG_FILE})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    version = data.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r}, this code reads {FORMAT_VERSION}")
    try:
        return PolicyConfig.from_dict(data)
    except (ConfigError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: {error}") from error


def load_checkpoint(directory: str | os.PathLike, device: str | torch.device = "cpu",
                    profile: RobotProfile | None = None) -> VLAPolicy:
    """Rebuild the policy from DIR alone (offline) and load its weights; float32, eval mode.

    With `profile`, first check that the checkpoint fits that robot (dims, names, cameras).
    """
    directory = Path(directory)
    config = load_config(directory)
    if profile is not None:
        check_compatible(config, profile)
    try:
        stats = NormStats.load(directory / STATS_FILE)
        # Every weight is overwritten from model.safetensors below (strictly), so random
        # initialisation would only cost time (tens of seconds for the 1.4B configuration).
        with no_init_weights():
            backbone = VLMBackbone.from_directory(directory / BACKBONE_DIR, num_lm_layers=config.num_lm_layers,
                                                  load_weights=False, max_text_tokens=config.max_text_tokens)
            policy = VLAPolicy(config, backbone, stats)
    except (StatsError, BackboneError, ConfigError, OSError) as error:
        raise CheckpointError(f"{directory}: {error}") from error
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_FILE}")
    try:
        load_model(policy, str(weights), strict=True)
    except (SafetensorError, RuntimeError, OSError) as error:
        raise CheckpointError(f"{weights}: cannot load the weights ({error})") from error
    origin = config.extra.get("backbone", {})
    policy.backbone.source, policy.backbone.weights_sha256 = origin.get("source", ""), origin.get("sha256", "")
    return policy.to(device).eval()


def check_compatible(config: PolicyConfig, profile: RobotProfile) -> None:
    """Raise CheckpointError naming both sides if the checkpoint cannot drive this robot."""
    problems = []
    robot_names = tuple(profile.vector_names)
    for what, names in (("state", config.state_names), ("action", config.action_names)):
        if len(names) != profile.action_dim:
            problems.append(f"{what} has {len(names)} dims, robot profile '{profile.name}' has {profile.action_dim}")
        elif tuple(names) != robot_names:
            differing = [f"{i}: {a} vs {b}" for i, (a, b) in enumerate(zip(names, robot_names)) if a != b]
            problems.append(f"{what} dim names differ from profile '{profile.name}' at {differing[:4]}")
    missing = [key for key in config.camera_keys if key not in profile.camera_names]
    if missing:
        problems.append(f"checkpoint cameras {list(config.camera_keys)} include {missing}, which robot profile "
                        f"'{profile.name}' does not have (it has {list(profile.camera_names)})")
    if problems:
        trained_on = config.robot_profile or "unknown"
        raise CheckpointError(f"checkpoint (trained for profile '{trained_on}') does not fit robot profile "
                              f"'{profile.name}': " + "; ".join(problems))


# ---- randomly initialised checkpoints ---------------------------------------------------------
# Named configurations: backbone preset, LM layers kept, head size, time shift alpha.
NAMED_CONFIGS: dict[str, dict] = {
    "tiny": dict(preset="tiny", num_lm_layers=2, alpha=4.0,
                 head=dict(width=64, depth=2, heads=4, mlp_dim=128)),
    # The transfer-cube policy shipped for `make demo` (README, "Proof in simulation").
    "small": dict(preset="small", num_lm_layers=2, alpha=4.0,
                  head=dict(width=128, depth=3, heads=4, mlp_dim=256)),
    "tiny-smolvlm": dict(preset="tiny-smolvlm", num_lm_layers=2, alpha=4.0,
                         head=dict(width=64, depth=2, heads=4, mlp_dim=128)),
    "1.4b": dict(preset="1.4b", num_lm_layers=4, alpha=3.0, head={}),  # head: the paper's 30M defaults
}


def profile_stats(profile: RobotProfile) -> NormStats:
    """Default statistics from the profile's joint limits: min_max maps each joint's range to
    [-1, 1] (gripper entries are already normalised to [0, 1]); mean/std are the range's midpoint
    and half-width so that either mode gives the same map. For dry runs before real data exists."""
    lower, upper = np.asarray(profile.position_lower, float), np.asarray(profile.position_upper, float)
    stats = {"mean": (lower + upper) / 2.0, "std": (upper - lower) / 2.0, "min": lower, "max": upper}
    return NormStats(dict(stats), dict(stats), mode="min_max",
                     extra={"source": f"limits of robot profile '{profile.name}'"})


def _profile_cameras(profile: RobotProfile, cameras) -> tuple[str, ...]:
    """The requested cameras (default: all of the profile's), each checked to be the profile's."""
    cameras = tuple(cameras) if cameras else profile.camera_names
    unknown = [c for c in cameras if c not in profile.camera_names]
    if unknown:
        raise ValueError(f"cameras {unknown} are not in robot profile '{profile.name}' "
                         f"(it has {list(profile.camera_names)})")
    return cameras


def build_random_policy(config_name: str, profile: RobotProfile, cameras=None, seed: int = 0,
                        dtype: torch.dtype | None = None) -> VLAPolicy:
    """A policy with random weights (seeded) for a named configuration and a robot profile."""
    if config_name not in NAMED_CONFIGS:
        raise ValueError(f"unknown config '{config_name}' (one of: {', '.join(NAMED_CONFIGS)})")
    named = NAMED_CONFIGS[config_name]
    cameras = _profile_cameras(profile, cameras)
    tokenizer = build_tokenizer()
    preset = build_preset(named["preset"], tokenizer)
    torch.manual_seed(seed)
    backbone = VLMBackbone.from_config(preset.config, tokenizer, preset.image_mean, preset.image_std,
                                       num_lm_layers=named["num_lm_layers"], dtype=dtype)
    config = default_config(backbone, cameras, profile.vector_names, profile.vector_names,
                            head=named["head"], alpha=named["alpha"], robot_profile=profile.name,
                            normalization="min_max", backbone_source=f"random:{config_name}")
    return VLAPolicy(config, backbone, profile_stats(profile))


def load_backbone(source: str | os.PathLike, num_lm_layers: int | None = None, assets: str | None = None,
                  max_text_tokens: int | None = None) -> VLMBackbone:
    """Pretrained weights from a Hugging Face model directory (PaliGemma, SmolVLM, SmolVLM2) or
    from the VLM part of a LeRobot SmolVLA checkpoint (`assets`: its VLM's config and tokenizer)."""
    source = Path(source)
    if not source.is_dir():
        raise BackboneError(f"{source}: backbone directory does not exist")
    if read_smolvla_config(source) is not None:
        return backbone_from_smolvla(source, assets, num_lm_layers, max_text_tokens)
    return VLMBackbone.from_directory(source, num_lm_layers=num_lm_layers, max_text_tokens=max_text_tokens or 32)


def build_pretrained_policy(backbone: VLMBackbone, profile: RobotProfile, cameras=None, seed: int = 0,
                            head: dict | None = None, alpha: float = 4.0) -> VLAPolicy:
    """A policy around a pretrained backbone (load_backbone) with a new head (seeded), recording
    where the backbone's weights came from."""
    cameras = _profile_cameras(profile, cameras)
    torch.manual_seed(seed)
    config = default_config(backbone, cameras, profile.vector_names, profile.vector_names, head=dict(head or {}),
                            alpha=alpha, robot_profile=profile.name, normalization="min_max",
                            backbone_source=backbone.source)
    config.extra["backbone"] = {"source": backbone.source, "family": backbone.family,
                                "sha256": backbone.weights_sha256}
    return VLAPolicy(config, backbone, profile_stats(profile))


def init_checkpoint_main(argv: list[str]) -> int:
    """`vla-ros init-checkpoint`: write a randomly initialised checkpoint (dry runs, tests)."""
    parser = argparse.ArgumentParser(prog="vla-ros init-checkpoint", description=init_checkpoint_main.__doc__)
    parser.add_argument("--config", choices=sorted(NAMED_CONFIGS), default="tiny")
    parser.add_argument("--profile", default="aloha_sim", help="robot profile name or YAML path")
    parser.add_argument("--output", required=True, help="checkpoint directory to create")
    parser.add_argument("--cameras", nargs="+", help="camera keys (default: all cameras of the profile)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.profile)
        policy = build_random_policy(args.config, profile, args.cameras, args.seed)
        path = save_checkpoint(policy, args.output, overwrite=args.overwrite)
    except (ValueError, OSError) as error:
        print(f"vla-ros init-checkpoint: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"checkpoint": str(path), "config": args.config, "profile": profile.name,
                      "cameras": list(policy.config.camera_keys),
                      "parameters": sum(p.numel() for p in policy.parameters())}))
    return 0
