"""Start from a robot-pretrained VLM: the vision-language part of a LeRobot SmolVLA checkpoint.

LeRobot saves a SmolVLA policy as config.json ("type": "smolvla", "vlm_model_name",
"num_vlm_layers", "resize_imgs_with_padding", "tokenizer_max_length", ...) and model.safetensors.
In that file the SmolVLM2 model sits under `model.vlm_with_expert.vlm.`: its vision tower, pixel-
shuffle connector and (truncated) text model under `model.vlm_with_expert.vlm.model.`, next to the
action expert (`model.vlm_with_expert.lm_expert.`) and the action/state projections, which are
not imported: our flow head replaces them.

The checkpoint holds neither the VLM's architecture nor its tokenizer (LeRobot fetches both from
the hub by `vlm_model_name`), so those come from that model's directory (`assets`: its config.json
and tokenizer.json; its weights are never read). Images are fitted as SmolVLA fits them: resized
keeping the aspect ratio, padded black on the top/left, scaled to [-1, 1].
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers.initialization import no_init_weights

from vla_ros.policy.backbone import (
    BackboneError,
    ImageFit,
    VLMBackbone,
    load_tokenizer,
    read_config,
    sha256_of,
)

VLM_PREFIX = "model.vlm_with_expert.vlm.model."
WEIGHTS_FILE = "model.safetensors"
# SmolVLA scales pixels to [-1, 1] (x * 2 - 1) after padding with black (0).
SMOLVLA_MEAN = SMOLVLA_STD = (0.5, 0.5, 0.5)
SMOLVLA_FIT = ImageFit(mode="pad", pad_side="start", pad_pixel=0.0)


def read_smolvla_config(directory: Path) -> dict | None:
    """The directory's LeRobot policy config if it is a SmolVLA checkpoint, else None."""
    path = directory / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("type") == "smolvla" else None


def backbone_from_smolvla(directory: str | Path, assets: str | Path | None, num_lm_layers: int | None = None,
                          max_text_tokens: int | None = None) -> VLMBackbone:
    """The SmolVLA checkpoint's vision tower, connector and first `num_lm_layers` text layers
    (default: all the checkpoint has, its num_vlm_layers) as a VLMBackbone."""
    directory = Path(directory)
    policy_config = read_smolvla_config(directory)
    if policy_config is None:
        raise BackboneError(f"{directory}: not a LeRobot SmolVLA checkpoint (its config.json has no type 'smolvla')")
    vlm_name = policy_config.get("vlm_model_name", "the VLM")
    if assets is None:
        raise BackboneError(f"{directory}: a SmolVLA checkpoint holds no VLM architecture or tokenizer; pass the "
                            f"directory of {vlm_name} as the backbone assets (its config.json and tokenizer.json)")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise BackboneError(f"{directory}: no {WEIGHTS_FILE}")
    assets = Path(assets)
    config = read_config(assets)
    if config.model_type not in ("smolvlm", "idefics3"):
        raise BackboneError(f"{assets}: model_type '{config.model_type}' is not SmolVLA's VLM (smolvlm)")
    tokenizer = load_tokenizer(assets)
    kept = num_lm_layers or int(policy_config.get("num_vlm_layers") or 0) or None
    with no_init_weights():  # every tensor is overwritten from the checkpoint below
        backbone = VLMBackbone.from_config(config, tokenizer, SMOLVLA_MEAN, SMOLVLA_STD, num_lm_layers=kept,
                                           max_text_tokens=max_text_tokens or
                                           int(policy_config.get("tokenizer_max_length") or 48),
                                           image_fit=SMOLVLA_FIT)
    padded = policy_config.get("resize_imgs_with_padding")
    if padded and tuple(padded) != (backbone.image_size, backbone.image_size):
        raise BackboneError(f"{directory}: resize_imgs_with_padding {padded} differs from the vision tower's "
                            f"{backbone.image_size}x{backbone.image_size} input")
    _load_vlm_weights(backbone, weights)
    backbone.source, backbone.weights_sha256 = str(directory.resolve()), sha256_of([weights])
    return backbone


def _load_vlm_weights(backbone: VLMBackbone, weights: Path) -> None:
    """Copy every tensor of the backbone from the checkpoint's VLM keys; name what is missing."""
    expected = backbone.vlm.state_dict()
    found: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(weights), framework="pt") as handle:
            for key in handle.keys():
                name = key[len(VLM_PREFIX):] if key.startswith(VLM_PREFIX) else None
                if name in expected:
                    found[name] = handle.get_tensor(key)
    except (SafetensorError, OSError) as error:
        raise BackboneError(f"{weights}: cannot read ({error})") from error
    missing = [name for name in expected if name not in found]
    wrong = [name for name, tensor in found.items() if tensor.shape != expected[name].shape]
    if missing or wrong:
        raise BackboneError(f"{weights}: the SmolVLA checkpoint does not fit the VLM config: {len(missing)} tensors "
                            f"missing under '{VLM_PREFIX}' and {len(wrong)} of another shape, e.g. "
                            f"{(missing + wrong)[:2]}")
    dtype = next(backbone.vlm.parameters()).dtype
    backbone.vlm.load_state_dict({name: tensor.to(dtype) for name, tensor in found.items()}, strict=True)
