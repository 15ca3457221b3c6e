"""Camera regions of interest: the part of a frame the policy looks at.

A region is (top, left, height, width) as fractions of the frame, so that one setting holds at
whatever resolution the camera is driven. It travels in the checkpoint (PolicyConfig.camera_crops)
and is applied before the resize to the model's input, identically in training and at run time.
Why: a small model trained from scratch sees a 2 cm cube as two pixels of a full 96-pixel frame
and learns to ignore it; cropped to the workspace, the same input size shows it nine pixels wide.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Region = tuple[float, float, float, float]


def check_region(region: Sequence[float]) -> Region:
    """The region as four floats; ValueError unless it lies inside the frame and is not empty."""
    try:
        values = tuple(float(v) for v in region)
    except (TypeError, ValueError):
        raise ValueError(f"a crop region must be 4 numbers [top, left, height, width], got {region!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"a crop region must be 4 finite numbers [top, left, height, width], got {region!r}")
    top, left, height, width = values
    if top < 0 or left < 0 or height <= 0 or width <= 0 or top + height > 1 + 1e-9 or left + width > 1 + 1e-9:
        raise ValueError(f"crop region [top, left, height, width] = {list(values)} must be fractions of the "
                         "frame: top, left >= 0, height, width > 0, top + height <= 1, left + width <= 1")
    return values


def region_pixels(frame_height: int, frame_width: int, region: Region) -> tuple[slice, slice]:
    """Row and column slices of a region in a frame of this size (at least one pixel each).
    The region must come from check_region: this runs on every inference call, so it does not
    check again (PolicyConfig and DatasetSamples check their regions once)."""
    top, left, height, width = region
    row0, col0 = min(frame_height - 1, round(top * frame_height)), min(frame_width - 1, round(left * frame_width))
    row1 = max(row0 + 1, min(frame_height, round((top + height) * frame_height)))
    col1 = max(col0 + 1, min(frame_width, round((left + width) * frame_width)))
    return slice(row0, row1), slice(col0, col1)


def crop_frames(frames: np.ndarray, region: Region | None) -> np.ndarray:
    """The region (from check_region) of (..., H, W, 3) frames, as a view; None keeps the whole frame."""
    if region is None:
        return frames
    rows, cols = region_pixels(frames.shape[-3], frames.shape[-2], region)
    return frames[..., rows, cols, :]
