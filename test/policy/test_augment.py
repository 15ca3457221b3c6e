"""Image augmentation of training batches (issue 19, item 4): openpi's recipe, reproducible per
step, geometric changes kept off wrist cameras, off unless asked for."""

import numpy as np
import pytest
import torch

from vla_ros.policy.augment import ImageAugment


def scene(batch=4):
    """A bright square on a dark background in two cameras: where it lands shows crops/rotations."""
    images = torch.full((batch, 2, 32, 32, 3), 40, dtype=torch.uint8)
    images[:, :, 12:20, 12:20] = 200
    return images


def centroid(image: torch.Tensor) -> np.ndarray:
    weight = image.float().mean(-1)
    weight = (weight - weight.min()).clamp(min=0)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    return np.array([(weight * ys).sum() / weight.sum(), (weight * xs).sum() / weight.sum()])


def test_geometry_moves_scene_cameras_and_spares_wrist_cameras():
    images = scene()
    geometric = ImageAugment(crop_scale=0.7, rotate_degrees=20, brightness=0, contrast=0, saturation=0)
    out = geometric.apply(images, ["cam_high", "cam_left_wrist"], torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out[:, 1], images[:, 1])  # wrist: untouched without colour jitter
    moved = [np.abs(centroid(out[b, 0]) - centroid(images[b, 0])).max() for b in range(4)]
    assert max(moved) > 1.0  # the square moved or grew somewhere in the batch
    still = ImageAugment(crop_scale=1.0, rotate_degrees=0, brightness=0, contrast=0, saturation=0)
    assert torch.equal(still.apply(images, ["cam_high", "cam_low"], torch.Generator().manual_seed(1)), images)


def test_colour_jitter_stays_in_its_bounds_and_is_reproducible():
    images = scene(16)
    jitter = ImageAugment(crop_scale=1.0, rotate_degrees=0, brightness=0.3, contrast=0, saturation=0)
    out = jitter.apply(images, ["cam_high", "cam_left_wrist"], torch.Generator().manual_seed(0))
    ratio = out[..., 0, 0, 0].float() / images[..., 0, 0, 0].float()  # background pixel
    assert ratio.min() >= 0.7 - 0.02 and ratio.max() <= 1.3 + 0.02 and ratio.std() > 0.05
    again = jitter.apply(images, ["cam_high", "cam_left_wrist"], torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    gray = torch.full((1, 1, 8, 8, 3), 100, dtype=torch.uint8)
    saturated = ImageAugment(crop_scale=1.0, rotate_degrees=0, brightness=0, contrast=0.4, saturation=0.5)
    assert torch.equal(saturated.apply(gray, ["cam_high"], torch.Generator().manual_seed(3)), gray)  # no colour to change


@pytest.mark.parametrize("values, message", [({"crop_scale": 0}, "crop_scale"), ({"brightness": 1.5}, "brightness"),
                                             ({"hue": 0.1}, "unknown image augmentation keys"),
                                             ("yes", "true, false or a mapping")])
def test_bad_settings_are_clear_errors(values, message):
    with pytest.raises(ValueError, match=message):
        ImageAugment.from_dict(values)


def test_from_dict():
    assert ImageAugment.from_dict(None) is None and ImageAugment.from_dict(False) is None
    assert ImageAugment.from_dict(True) == ImageAugment()
    assert ImageAugment.from_dict({"rotate_degrees": 0}).rotate_degrees == 0.0
