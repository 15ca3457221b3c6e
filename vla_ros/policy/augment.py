"""Image augmentation of training batches, as openpi trains its ALOHA policies.

Per sample and camera: a random crop of ``crop_scale`` of each side at a random place, resized
back to the full frame, and a rotation by up to ``rotate_degrees``, both in one bilinear resample
(edges repeat the border pixels); then colour jitter: brightness, contrast and saturation
factors drawn from [1 - x, 1 + x]. Wrist cameras (names containing "wrist") get the colour
jitter only: their view is fixed to the gripper, and cropping or rotating it teaches nothing
true about the scene. Frames stay uint8 (rounded), in the batch layout (B, cameras, H, W, 3).

Off unless asked for: it costs time per batch, and its benefit depends on the data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

GRAY = torch.tensor([0.299, 0.587, 0.114])  # ITU-R BT.601 luma


@dataclass(frozen=True)
class ImageAugment:
    crop_scale: float = 0.95      # fraction of each side kept by the random crop (1 = no crop)
    rotate_degrees: float = 5.0   # rotation drawn from [-x, x]
    brightness: float = 0.3       # factor drawn from [1 - x, 1 + x]
    contrast: float = 0.4
    saturation: float = 0.5

    def __post_init__(self):
        values = asdict(self)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values.values()):
            raise ValueError(f"image augmentation values must be finite numbers, got {values}")
        if not 0.0 < self.crop_scale <= 1.0:
            raise ValueError(f"crop_scale must be in (0, 1], got {self.crop_scale}")
        if not 0.0 <= self.rotate_degrees <= 45.0:
            raise ValueError(f"rotate_degrees must be in [0, 45], got {self.rotate_degrees}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, values: Mapping | None) -> "ImageAugment | None":
        """None/False -> no augmentation; True -> the defaults (openpi's); a mapping -> overrides."""
        if values is None or values is False:
            return None
        if values is True:
            return cls()
        if not isinstance(values, Mapping):
            raise ValueError(f"image augmentation must be true, false or a mapping, got {values!r}")
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown image augmentation keys {unknown} (known: {[f.name for f in fields(cls)]})")
        return cls(**{k: float(v) for k, v in values.items()})

    def apply(self, images: torch.Tensor, cameras: Sequence[str], generator: torch.Generator) -> torch.Tensor:
        """(B, C, H, W, 3) uint8 -> augmented, same shape and dtype."""
        batch, count, height, width, _ = images.shape
        x = images.permute(0, 1, 4, 2, 3).reshape(batch * count, 3, height, width).float()
        n = batch * count
        moved = torch.tensor(["wrist" not in cam for cam in cameras]).repeat(batch).nonzero().flatten()
        if len(moved) and (self.crop_scale < 1.0 or self.rotate_degrees > 0.0):
            chosen = len(moved)
            angle = torch.deg2rad((torch.rand(chosen, generator=generator) * 2 - 1) * self.rotate_degrees)
            shift = (torch.rand(chosen, 2, generator=generator) * 2 - 1) * (1.0 - self.crop_scale)
            cos, sin = torch.cos(angle) * self.crop_scale, torch.sin(angle) * self.crop_scale
            theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
            grid = F.affine_grid(theta, (chosen, 3, height, width), align_corners=False)
            x[moved] = F.grid_sample(x[moved], grid, mode="bilinear", padding_mode="border", align_corners=False)

        def factor(spread: float) -> torch.Tensor:
            return 1.0 + (torch.rand(n, generator=generator) * 2 - 1) * spread

        # brightness b, then contrast c about the mean gray level m, then saturation s about each
        # pixel's gray: all linear in the pixel, so one 3x3 matrix and offset per image:
        # x -> c b S x + (1 - c) b m, with S = s I + (1 - s) 1 w^T (w: luma weights; S 1 = 1)
        b, c, sat = factor(self.brightness), factor(self.contrast), factor(self.saturation)
        mean_gray = torch.einsum("c,nchw->n", GRAY, x) / (height * width)
        saturation = sat[:, None, None] * torch.eye(3) + (1 - sat)[:, None, None] * GRAY[None, None, :]
        matrix = (c * b)[:, None, None] * saturation
        offset = ((1 - c) * b * mean_gray)[:, None, None, None]
        x = torch.einsum("nij,njhw->nihw", matrix, x).add_(offset + 0.5).clamp_(0, 255).to(torch.uint8)  # rounded
        return x.reshape(batch, count, 3, height, width).permute(0, 1, 3, 4, 2).contiguous()
