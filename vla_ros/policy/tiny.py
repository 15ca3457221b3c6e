"""Backbone configurations built in code, so that tests, demos and benchmarks need no download.

Each preset is a real transformers model class (PaliGemma = SigLIP + Gemma, Idefics3 = the
SmolVLM architecture) with a configuration chosen here, plus a small byte-level BPE tokenizer
trained in-process in well under a second. Byte-level means every string has a tokenization: a word
the training text never had is split into known pieces or bytes, never collapsed to one <unk>. `save_backbone` writes a preset to a directory laid out exactly like a
downloaded model (config.json, model.safetensors, tokenizer files, preprocessor_config.json), so
tests exercise the same `from_pretrained(local_dir)` path as a real pretrained backbone.

Presets:
- "tiny":          PaliGemma, 32x32 images, 16 image tokens, 3 Gemma layers of width 32.
- "tiny-smolvlm":  Idefics3, 32x32 images, 4 image tokens after the pixel shuffle, 3 Llama layers.
- "tiny-smolvlm2": the same in SmolVLM2's classes (model_type "smolvlm", SmolVLA's VLM).
- "small":         PaliGemma, 96x96 images, 64 image tokens (12x12 patches), 3 SigLIP layers and
                   2 Gemma layers of width 96: big enough to see the cube of the simulated
                   transfer-cube task, small enough to train from scratch on one CPU core.
- "smolvlm2-500m": SmolVLM2-500M's dimensions (SigLIP-B/16 vision at 512x512, pixel shuffle 4: 64
                   tokens per image; 32 Llama layers of width 960, 15 heads, 5 key/value heads),
                   SmolVLA's VLM; random weights and the in-process tokenizer, for the latency
                   comparison with LeRobot's SmolVLA (`vla_ros.policy.peer_bench`).
- "1.4b":          PaliGemma with SigLIP-So400m-sized vision (27 layers, 224x224) and 4 Gemma-2B
                   sized layers (the paper's 1.4B variant); random weights, for benchmarks only.
                   It uses the in-process BPE tokenizer (with Gemma's 257,152-row embedding
                   table, as the paper's model has): weights are random, so a real tokenizer
                   would add nothing but a download.

Checkpoints written before the BPE tokenizer keep the word-level one they were saved with: a
checkpoint always loads the tokenizer files of its own backbone/ directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    GemmaConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    LlamaConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PreTrainedConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<bos>", "<eos>", "<image>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IMAGE)

# Text the tokenizer's merges are learnt from: words of typical manipulation instructions. Only
# the vocabulary's pieces come from here; any other text is still tokenized (byte fallback).
_TRAINING_TEXT = """
a an the and then with to from of on in into onto off up down left right top bottom front back
pick place put move push pull open close grasp release lift lower insert transfer hand over take
cube block peg socket cup bowl plate box lid drawer door bottle towel sponge tape object it
red green blue yellow black white small large arm arms gripper both other side table center
pick up the red cube and place it in the bowl. transfer the cube to the other arm.
hand the cube to the left arm. lift the cube with the right arm and put it back down.
open the drawer, insert the peg into the socket, close the lid of the box.
""".split("\n")
BPE_VOCAB_SIZE = 512


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A lower-casing byte-level BPE tokenizer that prepends <bos>, trained in-process (no files).

    Deterministic: the same merges every time, so a preset's vocabulary never changes between runs."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS), min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(_TRAINING_TEXT, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
        extra_special_tokens={"image_token": IMAGE},
    )


@dataclass(frozen=True)
class BackbonePreset:
    family: str
    config: PreTrainedConfig
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]


def _paligemma(vision: dict, text: dict, vocab_size: int, image_token_id: int) -> PaliGemmaConfig:
    return PaliGemmaConfig(
        # As PaliGemma's own configs: the SigLIP tower without its attention-pooling head.
        vision_config=SiglipVisionConfig(**vision, vision_use_head=False).to_dict(),
        text_config=GemmaConfig(vocab_size=vocab_size, **text).to_dict(),
        projection_dim=text["hidden_size"],
        image_token_id=image_token_id,
    )


def build_preset(name: str, tokenizer: PreTrainedTokenizerFast | None = None) -> BackbonePreset:
    """The named backbone configuration (weights are not created here)."""
    tokenizer = tokenizer or build_tokenizer()
    vocab = len(tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)
    siglip_norm = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    if name == "tiny":
        config = _paligemma(
            vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        image_size=32, patch_size=8),
            text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16),
            vocab_size=vocab, image_token_id=image_token_id,
        )
        return BackbonePreset("paligemma", config, *siglip_norm)
    if name == "small":
        config = _paligemma(
            vision=dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                        image_size=96, patch_size=12),
            text=dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=1, head_dim=24),
            vocab_size=vocab, image_token_id=image_token_id,
        )
        return BackbonePreset("paligemma", config, *siglip_norm)
    if name in ("tiny-smolvlm", "tiny-smolvlm2"):
        config_class = Idefics3Config if name == "tiny-smolvlm" else SmolVLMConfig
        config = config_class(
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=32, patch_size=8),
            text_config=LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                    num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                    pad_token_id=tokenizer.pad_token_id).to_dict(),
            scale_factor=2,
            image_token_id=image_token_id,
        )
        return BackbonePreset(config.model_type, config, *siglip_norm)
    if name == "smolvlm2-500m":
        config = SmolVLMConfig(
            vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                               image_size=512, patch_size=16),
            text_config=LlamaConfig(vocab_size=49280, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                                    num_attention_heads=15, num_key_value_heads=5, head_dim=64, rope_theta=100000.0,
                                    max_position_embeddings=8192, rms_norm_eps=1e-5,
                                    pad_token_id=tokenizer.pad_token_id).to_dict(),
            scale_factor=4,
            image_token_id=image_token_id,
        )
        return BackbonePreset(config.model_type, config, *siglip_norm)
    if name == "1.4b":
        config = _paligemma(
            vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                        image_size=224, patch_size=14),
            text=dict(hidden_size=2048, intermediate_size=16384, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=1, head_dim=256),
            vocab_size=257152, image_token_id=image_token_id,
        )
        return BackbonePreset("paligemma", config, *siglip_norm)
    raise ValueError(f"unknown backbone preset '{name}' (one of: {', '.join(PRESET_NAMES)})")


PRESET_NAMES = ("tiny", "small", "tiny-smolvlm", "tiny-smolvlm2", "smolvlm2-500m", "1.4b")
_MODEL_CLASSES = {"paligemma": PaliGemmaForConditionalGeneration, "idefics3": Idefics3ForConditionalGeneration,
                  "smolvlm": SmolVLMForConditionalGeneration}


def save_preprocessor(directory: Path, family: str, image_size: int, mean, std) -> None:
    """preprocessor_config.json as the family's image processor writes it (PIL variants: no torchvision)."""
    if family == "paligemma":
        from transformers import SiglipImageProcessorPil as Processor

        processor = Processor(size={"height": image_size, "width": image_size}, image_mean=list(mean),
                              image_std=list(std))
    else:
        from transformers import Idefics3ImageProcessorPil as Processor

        processor = Processor(size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size},
                              image_mean=list(mean), image_std=list(std))
    processor.save_pretrained(directory)


def save_backbone(name: str, directory: str | os.PathLike, seed: int = 0,
                  tokenizer: PreTrainedTokenizerFast | None = None, max_shard_size: str | None = None) -> Path:
    """Write preset `name` with random weights (seeded) as a local pretrained-model directory, with
    `tokenizer` (default: build_tokenizer()) and, with max_shard_size, weights in shards plus
    model.safetensors.index.json, as large downloaded models come."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or build_tokenizer()
    preset = build_preset(name, tokenizer)
    torch.manual_seed(seed)
    model = _MODEL_CLASSES[preset.family](preset.config)
    model.save_pretrained(directory, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    tokenizer.save_pretrained(directory)
    save_preprocessor(directory, preset.family, preset.config.vision_config.image_size, preset.image_mean,
                      preset.image_std)
    return directory
