"""The VLM condition encoder, loaded from tiny local model directories of both families."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from transformers import PaliGemmaConfig

from vla_ros.policy.backbone import BackboneError, VLMBackbone
from vla_ros.policy.tiny import save_backbone

FAMILIES = {"tiny": "paligemma", "tiny-smolvlm": "idefics3"}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    return {name: save_backbone(name, root / name, seed=3) for name in FAMILIES}


def _images(batch, cameras, height=24, width=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, cameras, height, width, 3), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("preset", list(FAMILIES))
def test_encodes_cameras_and_text_into_condition_tokens(model_dirs, preset):
    backbone = VLMBackbone.from_directory(model_dirs[preset], max_text_tokens=12)
    assert backbone.family == FAMILIES[preset]
    texts = ["pick up the red cube", "open the drawer"]
    ids, text_mask = backbone.tokenize(texts)
    assert ids.shape == text_mask.shape == (2, 12)
    with torch.no_grad():
        tokens, mask = backbone(_images(2, 3), ids, text_mask)
    per_image = backbone.tokens_per_image
    assert tokens.shape == (2, backbone.num_tokens(3), backbone.hidden_size)
    assert mask.shape == tokens.shape[:2] and mask.dtype == torch.bool
    assert mask[:, : 3 * per_image].all()  # every image token is real
    # <bos> + one token per word, the rest is padding
    assert mask[:, 3 * per_image:].sum(1).tolist() == [1 + len(t.split()) for t in texts]
    assert torch.isfinite(tokens).all()


def test_paligemma_builds_no_pooling_head_and_weights_saved_with_one_still_load(model_dirs):
    """PaliGemma reads the vision tower's patch tokens, never its pooled output: the pooling head is
    not built (transformers' PaliGemma configs have none), and checkpoints saved with one load."""
    assert PaliGemmaConfig().vision_config.vision_use_head is False  # transformers' own PaliGemma contract
    backbone = VLMBackbone.from_directory(model_dirs["tiny"])
    assert backbone.vlm.config.vision_config.vision_use_head is False
    assert not [name for name, _ in backbone.vision_tower().named_parameters() if name.startswith("head.")]
    width = backbone.vlm.config.vision_config.hidden_size
    saved_with_head = {**backbone.state_dict(), "vlm.vision_tower.head.probe": torch.zeros(1, 1, width),
                       "vlm.vision_tower.head.mlp.fc1.weight": torch.zeros(4, width)}
    backbone.load_state_dict(saved_with_head, strict=True)
    with pytest.raises(RuntimeError, match="vision_tower.neck.weight"):  # other stray weights are still refused
        backbone.load_state_dict({**backbone.state_dict(), "vlm.vision_tower.neck.weight": torch.zeros(1)})


@pytest.mark.parametrize("preset", list(FAMILIES))
def test_keeps_only_the_first_k_language_layers_with_their_pretrained_weights(model_dirs, preset):
    full = VLMBackbone.from_directory(model_dirs[preset])
    cut = VLMBackbone.from_directory(model_dirs[preset], num_lm_layers=1)
    assert len(full.language_model().layers) == full.num_lm_layers == 3
    assert len(cut.language_model().layers) == cut.num_lm_layers == 1
    full_first = full.language_model().layers[0].state_dict()
    for name, value in cut.language_model().layers[0].state_dict().items():
        assert torch.equal(value, full_first[name]), name
    ids, text_mask = cut.tokenize(["lift the cup"])
    with torch.no_grad():
        assert not torch.allclose(full(_images(1, 1), ids, text_mask)[0], cut(_images(1, 1), ids, text_mask)[0])
    with pytest.raises(BackboneError, match="num_lm_layers must be in 1..3"):
        VLMBackbone.from_directory(model_dirs[preset], num_lm_layers=4)


@pytest.mark.parametrize("preset", list(FAMILIES))
def test_prefix_attention_is_full_and_padding_is_invisible(model_dirs, preset):
    backbone = VLMBackbone.from_directory(model_dirs[preset], max_text_tokens=8)
    images = _images(1, 2)
    ids, text_mask = backbone.tokenize(["pick the cube"])
    other_word = ids.clone()
    other_word[0, 3] = backbone.tokenizer.convert_tokens_to_ids("bowl")
    other_padding = ids.clone()
    other_padding[0, ~text_mask[0]] = backbone.tokenizer.convert_tokens_to_ids("red")
    n_image = 2 * backbone.tokens_per_image
    with torch.no_grad():
        reference, mask = backbone(images, ids, text_mask)
        changed_word, _ = backbone(images, other_word, text_mask)
        changed_padding, _ = backbone(images, other_padding, text_mask)
    # Full attention: the LAST word changes the image tokens (a causal LM could not).
    assert not torch.allclose(reference[:, :n_image], changed_word[:, :n_image])
    # Padded text positions are masked keys: their content never reaches a real token.
    torch.testing.assert_close(reference[mask], changed_padding[mask], rtol=0, atol=1e-6)


def test_preprocessing_is_one_batched_resize_and_normalise_with_the_processor_statistics(model_dirs, tmp_path):
    directory = tmp_path / "custom_norm"
    shutil.copytree(model_dirs["tiny"], directory)
    processor = json.loads((directory / "preprocessor_config.json").read_text())
    processor.update(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    backbone = VLMBackbone.from_directory(directory)
    images = _images(2, 3, height=48, width=64)
    pixels = backbone.preprocess(images)
    size = backbone.image_size
    assert pixels.shape == (6, 3, size, size) and pixels.dtype == torch.float32
    mean = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)
    std = torch.tensor([0.4, 0.5, 0.6]).view(3, 1, 1)
    for index, image in enumerate(images.reshape(6, 48, 64, 3)):
        chw = image.permute(2, 0, 1).float()[None]
        resized = F.interpolate(chw, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        # within one grey level of a float resize (CPU resizes uint8 directly, for speed)
        torch.testing.assert_close(pixels[index], (resized / 255.0 - mean) / std, rtol=0, atol=1.0 / 255 / 0.4)
    with pytest.raises(ValueError, match="uint8"):
        backbone.preprocess(images.float())


def test_instruction_is_tokenized_once_and_truncated_to_the_fixed_length(model_dirs, monkeypatch):
    backbone = VLMBackbone.from_directory(model_dirs["tiny"], max_text_tokens=4)
    calls = []
    original = type(backbone.tokenizer).__call__
    monkeypatch.setattr(type(backbone.tokenizer), "__call__",
                        lambda self, *a, **k: calls.append(a) or original(self, *a, **k))
    first = backbone.tokenize(["put the lid on the box"])
    second = backbone.tokenize(["put the lid on the box"])
    assert len(calls) == 1
    assert torch.equal(first[0], second[0]) and first[0].shape == (1, 4) and first[1].all()


def test_unusable_directories_fail_clearly(model_dirs, tmp_path):
    with pytest.raises(BackboneError, match="no config.json"):
        VLMBackbone.from_directory(tmp_path)
    broken = tmp_path / "no_processor"
    shutil.copytree(model_dirs["tiny"], broken)
    (broken / "preprocessor_config.json").unlink()
    with pytest.raises(BackboneError, match="preprocessor_config.json"):
        VLMBackbone.from_directory(broken)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(model_dirs["tiny"], no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(BackboneError, match="no weights"):
        VLMBackbone.from_directory(no_weights)
