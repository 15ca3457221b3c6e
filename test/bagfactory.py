"""Synthetic ALOHA bags for the bag tooling tests (convert, replay, bag_player): the builder lives
in vla_ros.bench_replay (the replay benchmark uses the same bags); this adds small test profiles."""

from __future__ import annotations

from pathlib import Path

from vla_ros.bench_replay import (EPISODE_TOPIC, T0_NS, BagSpec, build_aloha_bag,  # noqa: F401
                                  camera_image, follower_vector, leader_vector)

SMALL_WIDTH, SMALL_HEIGHT = 64, 48


def write_test_profile(directory: str | Path, width: int = SMALL_WIDTH, height: int = SMALL_HEIGHT,
                       cameras: tuple[str, ...] = ("cam_high", "cam_left_wrist")) -> Path:
    """A profile YAML extending aloha_sim with small cameras (fast tests); returns its path."""
    path = Path(directory) / "test_profile.yaml"
    lines = ["extends: aloha_sim", "name: aloha_test", "cameras:"]
    lines += [f"  - {{name: {cam}, topic: /{cam}/camera/color/image_rect_raw, width: {width}, height: {height}}}"
              for cam in cameras]
    path.write_text("\n".join(lines) + "\n")
    return path
