"""The condition encoder: a pretrained vision-language model turned into a prefix of tokens.

Family-agnostic, in the style of openpi: every camera image goes through the VLM's vision tower
and projector/connector to image tokens, the instruction goes through the language model's
embedding, and the concatenation [camera 0 tokens, ..., camera C-1 tokens, text tokens] runs
through the language model's decoder layers (optionally only the first k, as the paper does) with
FULL attention between prefix tokens, fed as `inputs_embeds`. The output tokens and their mask are
the condition the action head attends to. Only the part that reaches the image tokens is
family-specific (`_FAMILIES`).

Models always load from a LOCAL directory (never the hub), laid out as users download them:
config.json, model.safetensors or shards named by model.safetensors.index.json, tokenizer.json and
preprocessor_config.json. A LeRobot SmolVLA checkpoint (vla_ros.policy.smolvla) is the other
source. Image preprocessing runs on the model's device as one batched tensor operation for all
cameras (uint8 HxWx3 -> resize, or resize-with-pad -> normalise with the processor's mean/std), so
there is no PIL and no per-image Python work.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    Idefics3ForConditionalGeneration,
    PaliGemmaForConditionalGeneration,
    PreTrainedTokenizerFast,
    SmolVLMForConditionalGeneration,
)

# PaliGemma (pi0's VLM), Idefics3 (SmolVLM) and SmolVLM2 (SmolVLA's VLM, model_type "smolvlm").
FAMILIES = ("paligemma", "idefics3", "smolvlm")
MODEL_CLASSES = {"paligemma": PaliGemmaForConditionalGeneration, "idefics3": Idefics3ForConditionalGeneration,
                 "smolvlm": SmolVLMForConditionalGeneration}
PREPROCESSOR_FILE = "preprocessor_config.json"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
IMAGE_FIT_FILE = "image_fit.json"  # ours: how frames are fitted to the square input
FREEZE_PRESETS = ("none", "vision", "language", "both")
# The language model's projections LoRA adapts (Gemma and Llama name them alike).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class BackboneError(ValueError):
    """A backbone directory that cannot be used (missing files, unsupported family, bad option)."""


@dataclass(frozen=True)
class ImageFit:
    """How a camera frame becomes the square model input.

    stretch: resize to SxS (what the PaliGemma and SmolVLM processors do with one image tile).
    pad: resize keeping the aspect ratio so that the longer side is S, then pad to SxS with pixels
    of brightness `pad_pixel` (0 = black, 1 = white, before normalisation) on the `pad_side`
    ("start": top/left, as LeRobot's SmolVLA and pi0 do; "end": bottom/right), so that frames are
    never distorted."""

    mode: str = "stretch"
    pad_side: str = "start"
    pad_pixel: float = 0.0

    def __post_init__(self):
        if (self.mode not in ("stretch", "pad") or self.pad_side not in ("start", "end")
                or not 0.0 <= self.pad_pixel <= 1.0):
            raise BackboneError(f"image fit needs mode stretch|pad, pad_side start|end and pad_pixel in [0, 1], "
                                f"got {self}")

    @classmethod
    def read(cls, directory: Path) -> "ImageFit":
        """The directory's image fit (written by save_assets); absent: stretch, as the processors do."""
        path = directory / IMAGE_FIT_FILE
        if not path.is_file():
            return cls()
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as error:
            raise BackboneError(f"{path}: not an image fit ({error})") from error

    def fitted_size(self, height: int, width: int, size: int) -> tuple[int, int]:
        """The size a HxW frame is resized to before any padding."""
        if self.mode == "stretch":
            return size, size
        scale = size / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a downloaded model directory: the index's shards, all present, or
    the single model.safetensors. BackboneError names what is missing."""
    index = directory / WEIGHTS_INDEX_FILE
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise BackboneError(f"{index}: not a safetensors index ({error})") from error
        missing = [name for name in shards if not (directory / name).is_file()]
        if missing:
            raise BackboneError(f"{directory}: {len(missing)} of {len(shards)} weight shards are missing "
                                f"(e.g. {missing[0]}): the download is incomplete")
        return [directory / name for name in shards]
    if (directory / WEIGHTS_FILE).is_file():
        return [directory / WEIGHTS_FILE]
    raise BackboneError(f"{directory}: no weights ({WEIGHTS_FILE}, or {WEIGHTS_INDEX_FILE} and its shards)")


def sha256_of(files: list[Path]) -> str:
    """One hash over the weight files' bytes, in the given order (a backbone's provenance)."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def read_model_type(directory: Path) -> str:
    """config.json's model_type, checked to be a supported family before transformers reads it."""
    path = directory / "config.json"
    if not path.is_file():
        raise BackboneError(f"{directory}: not a model directory (no config.json)")
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as error:
        raise BackboneError(f"{path}: not a model config ({error})") from error
    if model_type not in FAMILIES:
        raise BackboneError(f"{directory}: unsupported backbone model_type '{model_type}' "
                            f"(supported: {', '.join(FAMILIES)})")
    return model_type


def load_tokenizer(directory: Path) -> PreTrainedTokenizerFast:
    """The directory's own tokenizer (tokenizer.json, with tokenizer_config.json's special tokens)."""
    if not (directory / TOKENIZER_FILE).is_file():
        raise BackboneError(f"{directory}: no {TOKENIZER_FILE} (the backbone's own tokenizer is needed)")
    try:
        return PreTrainedTokenizerFast.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise BackboneError(f"{directory}: cannot load the tokenizer ({error})") from error


def check_vocabulary(tokenizer: PreTrainedTokenizerFast, config) -> None:
    """Every id the tokenizer can produce must have a row in the embedding table."""
    rows = config.text_config.vocab_size
    if len(tokenizer) > rows:
        raise BackboneError(f"the tokenizer has {len(tokenizer)} tokens but the embedding table only {rows} rows: "
                            "tokenizer and weights do not belong together")


def read_config(directory: Path):
    """The transformers config of a model directory (model_type checked first)."""
    read_model_type(directory)
    try:
        return AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise BackboneError(f"{directory}: cannot read config.json ({error})") from error


@contextlib.contextmanager
def _quiet_transformers():
    """Hide transformers' load report (it lists the deliberately dropped layers) and progress bars."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def family_of(config) -> str:
    """Our family name for a transformers config ('paligemma' or 'idefics3')."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise BackboneError(f"unsupported backbone model_type '{model_type}' (supported: {', '.join(FAMILIES)})")
    return model_type


def read_image_normalisation(directory: Path) -> tuple[list[float], list[float]]:
    """The image processor's mean/std from preprocessor_config.json."""
    path = directory / PREPROCESSOR_FILE
    if not path.is_file():
        raise BackboneError(f"{directory}: missing {PREPROCESSOR_FILE} (the image processor's mean/std)")
    try:
        data = json.loads(path.read_text())
        mean, std = [float(v) for v in data["image_mean"]], [float(v) for v in data["image_std"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise BackboneError(f"{path}: cannot read image_mean/image_std ({error})") from error
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise BackboneError(f"{path}: image_mean/image_std must be 3 values each, std > 0 (got {mean}, {std})")
    return mean, std


def read_processor_size(directory: Path) -> int | None:
    """The square size the image processor gives one image tile: SmolVLM's max_image_size
    longest_edge, or SigLIP's size height = width; None if the config names neither."""
    data = json.loads((directory / PREPROCESSOR_FILE).read_text())
    tile = data.get("max_image_size") or {}
    if "longest_edge" in tile:
        return int(tile["longest_edge"])
    size = data.get("size") or {}
    if "height" in size and size.get("height") == size.get("width"):
        return int(size["height"])
    return None


POOLING_HEAD = "vlm.vision_tower.head."  # the SigLIP pooling head a PaliGemma backbone no longer builds


def _drop_pooling_head(state_dict, prefix, *_) -> None:
    """Weights saved before the pooling head was dropped still load: its tensors are discarded."""
    for key in [key for key in state_dict if key.startswith(prefix + POOLING_HEAD)]:
        del state_dict[key]


class VLMBackbone(nn.Module):
    """Camera images + instruction tokens -> condition tokens (B, N, hidden) and mask (B, N)."""

    def __init__(self, vlm: nn.Module, family: str, tokenizer: PreTrainedTokenizerFast,
                 image_mean, image_std, max_text_tokens: int = 32, image_fit: ImageFit = ImageFit()):
        super().__init__()
        if max_text_tokens < 1:
            raise BackboneError(f"max_text_tokens must be >= 1, got {max_text_tokens}")
        self.vlm = vlm  # the VLM without its LM head: PaliGemmaModel / Idefics3Model / SmolVLMModel
        self.family = family
        self.tokenizer = tokenizer
        self.max_text_tokens = max_text_tokens
        self.image_fit = image_fit
        # Provenance of pretrained weights: where from, and the sha256 of the weight files read.
        self.source, self.weights_sha256 = "", ""
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._token_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._register_load_state_dict_pre_hook(_drop_pooling_head)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_directory(cls, directory: str | os.PathLike, num_lm_layers: int | None = None,
                       load_weights: bool = True, max_text_tokens: int = 32,
                       dtype: torch.dtype | None = None, image_fit: ImageFit | None = None) -> "VLMBackbone":
        """Load a local VLM directory; keep only the first `num_lm_layers` decoder layers.

        load_weights=False builds the architecture with random weights (a checkpoint then
        supplies the trained weights, or a benchmark wants random ones). Every file is checked
        before any weight is read: an unsupported model_type, a missing tokenizer.json,
        preprocessor config or weight shard is one BackboneError.
        """
        directory = Path(directory)
        config = read_config(directory)
        files = weight_files(directory) if load_weights else []
        tokenizer = load_tokenizer(directory)
        mean, std = read_image_normalisation(directory)
        fit = image_fit or ImageFit.read(directory)
        processor_size, vision_size = read_processor_size(directory), config.vision_config.image_size
        if processor_size not in (None, vision_size):
            raise BackboneError(f"{directory}: {PREPROCESSOR_FILE} sizes images to {processor_size} but the vision "
                                f"tower takes {vision_size}: processor and model do not belong together")
        backbone = cls.from_config(config, tokenizer, mean, std, num_lm_layers, max_text_tokens, dtype,
                                   weights_dir=directory if load_weights else None, image_fit=fit)
        if load_weights:
            backbone.source, backbone.weights_sha256 = str(directory.resolve()), sha256_of(files)
        return backbone

    @classmethod
    def from_config(cls, config, tokenizer: PreTrainedTokenizerFast, image_mean, image_std,
                    num_lm_layers: int | None = None, max_text_tokens: int = 32,
                    dtype: torch.dtype | None = None, weights_dir: Path | None = None,
                    image_fit: ImageFit = ImageFit()) -> "VLMBackbone":
        """Build from a transformers config: random weights, or pretrained ones from `weights_dir`."""
        family = family_of(config)
        config = copy.deepcopy(config)
        truncate_language_layers(config, num_lm_layers)
        if family == "paligemma":
            # PaliGemma reads the vision tower's patch tokens, never its attention-pooled output
            # (transformers' own PaliGemma default has no pooling head): a head would only cost time.
            config.vision_config.vision_use_head = False
        check_vocabulary(tokenizer, config)
        model_class = MODEL_CLASSES[family]
        with _quiet_transformers():
            if weights_dir is not None:
                # Weights of dropped layers are never materialised (transformers lists them as unused).
                try:
                    full, info = model_class.from_pretrained(weights_dir, config=config, local_files_only=True,
                                                             dtype=dtype or torch.float32, output_loading_info=True)
                except (OSError, ValueError, RuntimeError) as error:
                    raise BackboneError(f"{weights_dir}: cannot load the weights ({error})") from error
                missing = [key for key in info["missing_keys"] if not key.startswith("lm_head")]
                wrong = list(info.get("mismatched_keys") or [])
                if missing or wrong:
                    raise BackboneError(f"{weights_dir}: {len(missing)} tensors missing and {len(wrong)} of the wrong "
                                        f"shape for config.json, e.g. {(missing + wrong)[:2]}")
            else:
                full = model_class._from_config(config, dtype=dtype or torch.float32)
        return cls(full.model, family, tokenizer, image_mean, image_std, max_text_tokens, image_fit)

    def save_assets(self, directory: str | os.PathLike) -> None:
        """Everything but the weights: transformers config, tokenizer, preprocessor (mean/std/size)."""
        from vla_ros.policy.tiny import save_preprocessor

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.vlm.config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        save_preprocessor(directory, self.family, self.image_size, self.image_mean.flatten().tolist(),
                          self.image_std.flatten().tolist())
        (directory / IMAGE_FIT_FILE).write_text(json.dumps(asdict(self.image_fit)))

    def cast(self, dtype: torch.dtype) -> "VLMBackbone":
        """Cast weights to `dtype` but keep rotary frequencies and the image mean/std float32
        (bfloat16 would round them: every position's rotation and every pixel would shift)."""
        kept = {name: buffer.clone() for name, buffer in self.named_buffers()
                if "inv_freq" in name or name in ("image_mean", "image_std")}
        self.to(dtype)
        for name, buffer in kept.items():
            owner_name, _, attribute = name.rpartition(".")
            setattr(self.get_submodule(owner_name), attribute, buffer)
        return self

    # ---- geometry ----------------------------------------------------------------------------
    @property
    def config(self):
        return self.vlm.config

    @property
    def hidden_size(self) -> int:
        return self.config.text_config.hidden_size

    @property
    def num_lm_layers(self) -> int:
        return self.config.text_config.num_hidden_layers

    @property
    def image_size(self) -> int:
        return self.config.vision_config.image_size

    @property
    def tokens_per_image(self) -> int:
        patches = (self.image_size // self.config.vision_config.patch_size) ** 2
        return patches if self.family == "paligemma" else patches // self.config.scale_factor**2

    def num_tokens(self, num_cameras: int) -> int:
        return num_cameras * self.tokens_per_image + self.max_text_tokens

    # ---- inputs ------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, max_text_tokens) and mask (B, max_text_tokens), padded/truncated to a fixed
        length so the prefix has a fixed shape; each distinct instruction is tokenized once."""
        ids, masks = zip(*(self._tokenize_one(text) for text in texts))
        return torch.stack(ids), torch.stack(masks)

    def check_instruction(self, text: str) -> int:
        """The instruction's token count; BackboneError if the tokenizer would lose part of it:
        words collapsed to the unknown token, or tokens cut at max_text_tokens."""
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        unknown = self.tokenizer.unk_token_id
        if unknown is not None and unknown in ids:
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            lost = [piece for piece, id_ in zip(pieces, ids) if id_ == unknown]
            raise BackboneError(f"instruction {text!r}: the backbone's tokenizer maps {len(lost)} piece(s) to its "
                                f"unknown token {self.tokenizer.unk_token!r}")
        if len(ids) > self.max_text_tokens:
            raise BackboneError(f"instruction {text!r} is {len(ids)} tokens, over max_text_tokens "
                                f"{self.max_text_tokens}: raise model.max_text_tokens or shorten it")
        return len(ids)

    def _tokenize_one(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(text, str):
            raise TypeError(f"instruction must be a str, got {type(text).__name__}")
        cached = self._token_cache.get(text)
        if cached is None:
            ids = self.tokenizer(text, add_special_tokens=True, truncation=True,
                                 max_length=self.max_text_tokens)["input_ids"]
            padded = torch.full((self.max_text_tokens,), self.tokenizer.pad_token_id or 0, dtype=torch.long)
            padded[: len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask = torch.zeros(self.max_text_tokens, dtype=torch.bool)
            mask[: len(ids)] = True
            cached = (padded, mask)
            self._token_cache[text] = cached
            if len(self._token_cache) > 1024:  # bounded: training sees many, a robot run few
                self._token_cache.popitem(last=False)
        return cached

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (..., H, W, 3) -> normalised float32 (prod(...), 3, S, S), one batched operation
        (a resize, or a resize-with-pad, as `image_fit` says)."""
        if images.dtype != torch.uint8 or images.dim() < 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (..., H, W, 3), got {tuple(images.shape)} {images.dtype}")
        pixels = images.reshape(-1, *images.shape[-3:]).permute(0, 3, 1, 2)
        size = self.image_size
        fitted = self.image_fit.fitted_size(pixels.shape[-2], pixels.shape[-1], size)
        if tuple(pixels.shape[-2:]) != fitted:
            # On CPU the uint8 kernel is ~10x faster than float32 and differs by < 1 grey level;
            # other devices only resize floats.
            if pixels.device.type != "cpu":
                pixels = pixels.float()
            pixels = F.interpolate(pixels, size=fitted, mode="bilinear", align_corners=False, antialias=True)
        pixels = pixels.float() * (1.0 / 255.0)
        if fitted != (size, size):
            rows, cols = size - fitted[0], size - fitted[1]
            padding = (cols, 0, rows, 0) if self.image_fit.pad_side == "start" else (0, cols, 0, rows)
            pixels = F.pad(pixels, padding, value=self.image_fit.pad_pixel)
        return (pixels - self.image_mean) / self.image_std

    # ---- forward -----------------------------------------------------------------------------
    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (M, 3, S, S) -> image tokens (M, tokens_per_image, hidden)."""
        dtype = next(self.vlm.parameters()).dtype
        pixels = pixels.to(dtype)
        if self.family == "paligemma":
            return self.vlm.get_image_features(pixels).pooler_output
        hidden = self.vlm.vision_model(pixel_values=pixels).last_hidden_state
        return self.vlm.connector(hidden)

    def language_model(self) -> nn.Module:
        return self.vlm.language_model if self.family == "paligemma" else self.vlm.text_model

    def vision_tower(self) -> nn.Module:
        return self.vlm.vision_tower if self.family == "paligemma" else self.vlm.vision_model

    # ---- what trains ---------------------------------------------------------------------------
    def freeze(self, preset: str, train_embeddings: bool = False) -> None:
        """Which backbone weights train: preset 'none', 'vision' (the vision tower), 'language' (the
        decoder layers and final norm) or 'both'. The projector/connector always trains; with LoRA
        (add_lora first) only the adapters train in the language model.

        The token embedding table trains only with train_embeddings: PaliGemma's 257,152 x 2048
        table is 37% of the 1.4B model, and the few rows instructions reach do not justify
        optimiser and EMA state for all of them."""
        if preset not in FREEZE_PRESETS:
            raise BackboneError(f"freeze must be one of {', '.join(FREEZE_PRESETS)}, got '{preset}'")
        self.requires_grad_(True)
        frozen = {"none": [], "vision": [self.vision_tower()], "language": [self.language_model()],
                  "both": [self.vision_tower(), self.language_model()]}[preset]
        for module in frozen:
            module.requires_grad_(False)
        if self.has_lora:  # with adapters, they alone train in the language model
            for name, parameter in self.language_model().named_parameters():
                parameter.requires_grad_("lora_" in name)
        self.vlm.get_input_embeddings().requires_grad_(train_embeddings)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the decoder and vision layers' activations in backward instead of keeping them."""
        self.vlm.activation_checkpointing_enable({"use_reentrant": False})

    def add_lora(self, rank: int, alpha: float, dropout: float = 0.0) -> None:
        """LoRA adapters (peft) on the language model's projections; their base weights freeze."""
        from peft import LoraConfig, inject_adapter_in_model

        if rank < 1 or alpha <= 0 or not 0.0 <= dropout < 1.0:
            raise BackboneError(f"LoRA needs rank >= 1, alpha > 0, 0 <= dropout < 1; got {rank}, {alpha}, {dropout}")
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGETS))
        inject_adapter_in_model(config, self.language_model())
        for name, parameter in self.language_model().named_parameters():
            parameter.requires_grad_("lora_" in name)

    @property
    def has_lora(self) -> bool:
        return any("lora_" in name for name, _ in self.named_parameters())

    def merged_state_dict(self, state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
        """`state` (the state dict of a module that holds this backbone under `prefix`) with every
        LoRA layer folded into its base weight and named as without LoRA: what a checkpoint stores,
        so that loading it needs neither peft nor the adapter layout. Unchanged without LoRA."""
        if not self.has_lora:
            return state
        from peft.tuners.lora import LoraLayer

        merged = dict(state)
        for name, module in self.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            base = f"{prefix}{name}."
            weight = merged.pop(f"{base}base_layer.weight")
            # From the state's tensors, not the module's: under FSDP the module holds only a shard.
            delta = sum(module.scaling[adapter] * (merged[f"{base}lora_B.{adapter}.weight"].float()
                                                   @ merged[f"{base}lora_A.{adapter}.weight"].float())
                        for adapter in module.active_adapters)
            for key in [k for k in merged if k.startswith(base) and "lora_" in k]:
                del merged[key]
            merged[f"{base}weight"] = (weight.float() + delta).to(weight.dtype)
            if f"{base}base_layer.bias" in merged:
                merged[f"{base}bias"] = merged.pop(f"{base}base_layer.bias")
        return merged

    def forward(self, images: torch.Tensor, text_ids: torch.Tensor,
                text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images uint8 (B, C, H, W, 3), text (B, L) -> tokens (B, C*T + L, hidden), mask (B, C*T + L)."""
        return self.encode_pixels(self.preprocess(images), text_ids, text_mask)

    def encode_pixels(self, pixels: torch.Tensor, text_ids: torch.Tensor,
                      text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed pixels (B*C, 3, S, S), sample-major, + text (B, L) -> tokens and mask."""
        tokens = self.image_tokens(pixels)
        return self.encode_tokens(tokens.reshape(text_ids.shape[0], -1, tokens.shape[-1]), text_ids, text_mask)

    def encode_tokens(self, image_tokens: torch.Tensor, text_ids: torch.Tensor,
                      text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the kept decoder layers over [image tokens, text embeddings] with full attention."""
        text_embeddings = self.vlm.get_input_embeddings()(text_ids)
        embeddings = torch.cat([image_tokens.to(text_embeddings.dtype), text_embeddings], dim=1)
        image_mask = torch.ones(image_tokens.shape[:2], dtype=torch.bool, device=text_mask.device)
        mask = torch.cat([image_mask, text_mask.bool()], dim=1)
        # A prepared 4D additive mask is used as-is by transformers: full (prefix) attention, with
        # padded text tokens hidden as keys. Masked rows still see the image tokens, so no NaN.
        blocked = torch.finfo(embeddings.dtype).min
        additive = torch.zeros(mask.shape, dtype=embeddings.dtype, device=mask.device).masked_fill(~mask, blocked)
        length = mask.shape[1]
        attention = additive[:, None, None, :]  # (B, 1, 1, N): broadcast over heads and queries
        # PaliGemma counts positions from 1 (as its own forward does); Idefics3 from 0.
        first = 1 if self.family == "paligemma" else 0
        positions = torch.arange(first, first + length, device=mask.device).unsqueeze(0)
        output = self.language_model()(inputs_embeds=embeddings, attention_mask=attention,
                                       position_ids=positions, use_cache=False)
        return output.last_hidden_state, mask


def truncate_language_layers(config, num_lm_layers: int | None) -> int:
    """Keep the first `num_lm_layers` decoder layers of the config's language model (None: all)."""
    available = config.text_config.num_hidden_layers
    if num_lm_layers is None:
        return available
    if not 1 <= num_lm_layers <= available:
        raise BackboneError(f"num_lm_layers must be in 1..{available} for this backbone, got {num_lm_layers}")
    config.text_config.num_hidden_layers = num_lm_layers
    layer_types = getattr(config.text_config, "layer_types", None)
    if layer_types is not None:
        config.text_config.layer_types = list(layer_types)[:num_lm_layers]
    return num_lm_layers
