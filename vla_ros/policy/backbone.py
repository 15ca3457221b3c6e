"""The condition encoder: a pretrained vision-language model turned into a prefix of tokens.

Family-agnostic, in the style of openpi: every camera image goes through the VLM's vision tower
and projector/connector to image tokens, the instruction goes through the language model's
embedding, and the concatenation [camera 0 tokens, ..., camera C-1 tokens, text tokens] runs
through the language model's decoder layers (optionally only the first k, as the paper does) with
FULL attention between prefix tokens, fed as `inputs_embeds`. The output tokens and their mask are
the condition the action head attends to. Only the part that reaches the image tokens is
family-specific (`_FAMILIES`).

Models always load from a LOCAL directory (never the hub). Image preprocessing runs on the
model's device as one batched tensor operation for all cameras (uint8 HxWx3 -> resize ->
normalise with the processor's mean/std), so there is no PIL and no per-image Python work.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections import OrderedDict
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
)

FAMILIES = ("paligemma", "idefics3")
_MODEL_CLASSES = {"paligemma": PaliGemmaForConditionalGeneration, "idefics3": Idefics3ForConditionalGeneration}
PREPROCESSOR_FILE = "preprocessor_config.json"


class BackboneError(ValueError):
    """A backbone directory that cannot be used (missing files, unsupported family, bad option)."""


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


class VLMBackbone(nn.Module):
    """Camera images + instruction tokens -> condition tokens (B, N, hidden) and mask (B, N)."""

    def __init__(self, vlm: nn.Module, family: str, tokenizer: PreTrainedTokenizerFast,
                 image_mean, image_std, max_text_tokens: int = 32):
        super().__init__()
        if max_text_tokens < 1:
            raise BackboneError(f"max_text_tokens must be >= 1, got {max_text_tokens}")
        self.vlm = vlm  # the VLM without its LM head: PaliGemmaModel / Idefics3Model
        self.family = family
        self.tokenizer = tokenizer
        self.max_text_tokens = max_text_tokens
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._token_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_directory(cls, directory: str | os.PathLike, num_lm_layers: int | None = None,
                       load_weights: bool = True, max_text_tokens: int = 32,
                       dtype: torch.dtype | None = None) -> "VLMBackbone":
        """Load a local VLM directory; keep only the first `num_lm_layers` decoder layers.

        load_weights=False builds the architecture with random weights (a checkpoint then
        supplies the trained weights, or a benchmark wants random ones).
        """
        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise BackboneError(f"{directory}: not a model directory (no config.json)")
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        try:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError) as error:
            raise BackboneError(f"{directory}: cannot load the tokenizer ({error})") from error
        mean, std = read_image_normalisation(directory)
        return cls.from_config(config, tokenizer, mean, std, num_lm_layers, max_text_tokens, dtype,
                               weights_dir=directory if load_weights else None)

    @classmethod
    def from_config(cls, config, tokenizer: PreTrainedTokenizerFast, image_mean, image_std,
                    num_lm_layers: int | None = None, max_text_tokens: int = 32,
                    dtype: torch.dtype | None = None, weights_dir: Path | None = None) -> "VLMBackbone":
        """Build from a transformers config: random weights, or pretrained ones from `weights_dir`."""
        family = family_of(config)
        config = copy.deepcopy(config)
        truncate_language_layers(config, num_lm_layers)
        model_class = _MODEL_CLASSES[family]
        with _quiet_transformers():
            if weights_dir is not None:
                # Weights of dropped layers are never materialised (transformers lists them as unused).
                full, info = model_class.from_pretrained(weights_dir, config=config, local_files_only=True,
                                                         dtype=dtype or torch.float32, output_loading_info=True)
                missing = [key for key in info["missing_keys"] if not key.startswith("lm_head")]
                if missing:
                    raise BackboneError(f"{weights_dir}: weights lack {len(missing)} tensors, e.g. {missing[:3]}")
            else:
                full = model_class._from_config(config, dtype=dtype or torch.float32)
        return cls(full.model, family, tokenizer, image_mean, image_std, max_text_tokens)

    def save_assets(self, directory: str | os.PathLike) -> None:
        """Everything but the weights: transformers config, tokenizer, preprocessor (mean/std/size)."""
        from vla_ros.policy.tiny import save_preprocessor

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.vlm.config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        save_preprocessor(directory, self.family, self.image_size, self.image_mean.flatten().tolist(),
                          self.image_std.flatten().tolist())

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
        return patches // self.config.scale_factor**2 if self.family == "idefics3" else patches

    def num_tokens(self, num_cameras: int) -> int:
        return num_cameras * self.tokens_per_image + self.max_text_tokens

    # ---- inputs ------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, max_text_tokens) and mask (B, max_text_tokens), padded/truncated to a fixed
        length so the prefix has a fixed shape; each distinct instruction is tokenized once."""
        ids, masks = zip(*(self._tokenize_one(text) for text in texts))
        return torch.stack(ids), torch.stack(masks)

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
        """uint8 (..., H, W, 3) -> normalised float32 (prod(...), 3, S, S), one batched operation."""
        if images.dtype != torch.uint8 or images.dim() < 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (..., H, W, 3), got {tuple(images.shape)} {images.dtype}")
        pixels = images.reshape(-1, *images.shape[-3:]).permute(0, 3, 1, 2)
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            # On CPU the uint8 kernel is ~10x faster than float32 and differs by < 1 grey level;
            # other devices only resize floats.
            if pixels.device.type != "cpu":
                pixels = pixels.float()
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return (pixels.float() * (1.0 / 255.0) - self.image_mean) / self.image_std

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
