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
        geometric = torch.tensor([0.0 if "wrist" in cam else 1.0 for cam in cameras]).repeat(batch)
        if geometric.any() and (self.crop_scale < 1.0 or self.rotate_degrees > 0.0):
            angle = torch.deg2rad((torch.rand(n, generator=generator) * 2 - 1) * self.rotate_degrees) * geometric
            scale = 1.0 - (1.0 - self.crop_scale) * geometric
            shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (1.0 - scale)[:, None]
            cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
            theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
            grid = F.affine_grid(theta, (n, 3, height, width), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

        def factor(spread: float) -> torch.Tensor:
            return (1.0 + (torch.rand(n, generator=generator) * 2 - 1) * spread)[:, None, None, None]

        x = x * factor(self.brightness)
        gray = (x * GRAY[None, :, None, None]).sum(1, keepdim=True)
        x = (x - gray.mean((2, 3), keepdim=True)) * factor(self.contrast) + gray.mean((2, 3), keepdim=True)
        gray = (x * GRAY[None, :, None, None]).sum(1, keepdim=True)
        x = (x - gray) * factor(self.saturation) + gray
        x = x.clamp(0, 255).round().to(torch.uint8)
        return x.reshape(batch, count, 3, height, width).permute(0, 1, 3, 4, 2).contiguous()
