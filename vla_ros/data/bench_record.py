"""Recording throughput benchmark: can the dataset writer keep a real-time sampling loop fed?

Synthetic camera frames (a smooth moving pattern with sensor-like noise, so the encoder does
realistic work) go through LeRobotWriter.add_frame at the dataset rate for a fixed duration per
episode. A tick is "dropped" when the loop reaches it more than one period late, i.e. the sample
that a recorder would have taken there is lost. Prints one JSON object.

    python -m vla_ros.data.bench_record --seconds 30 --episodes 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vla_ros.data.lerobot import LeRobotDataset, LeRobotWriter, pick_video_codec

PATTERN_FRAMES = 25


def synthetic_frames(height: int, width: int, count: int, seed: int) -> list[np.ndarray]:
    """A moving gradient with noise: compresses like a camera image rather than like a flat field."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(count):
        shift = 2 * np.pi * i / count
        base = 127 + 60 * np.sin(x / 37 + shift) + 40 * np.cos(y / 23 - shift)
        rgb = np.stack([base, np.roll(base, 7, axis=1), 255 - base], axis=-1)
        rgb += rng.normal(0, 4, rgb.shape)
        frames.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return frames


def record_episode(writer: LeRobotWriter, frames: dict, seconds: float, fps: int, dim: int) -> dict:
    period = 1.0 / fps
    ticks = int(round(seconds * fps))
    add_times, dropped, max_backlog = [], 0, 0
    writer.start_episode("benchmark")
    start = time.monotonic()
    tick = 0
    while tick < ticks:
        deadline = start + tick * period
        now = time.monotonic()
        if now < deadline:
            time.sleep(deadline - now)
        elif now - deadline > period:
            missed = min(int((now - deadline) / period), ticks - tick)
            dropped += missed
            tick += missed
            continue
        k = tick % PATTERN_FRAMES
        t0 = time.monotonic()
        writer.add_frame(np.full(dim, tick, np.float32), np.full(dim, -tick, np.float32),
                         {cam: imgs[k] for cam, imgs in frames.items()}, timestamp=tick * period)
        add_times.append(time.monotonic() - t0)
        max_backlog = max(max_backlog, writer.encoder_backlog)
        tick += 1
    elapsed = time.monotonic() - start
    t0 = time.monotonic()
    result = writer.save_episode(block=True).result()
    save_s = time.monotonic() - t0
    add_ms = np.array(add_times) * 1e3
    return {
        "ticks": ticks,
        "frames_recorded": result.length,
        "frames_dropped": dropped,
        "dropped_per_minute": dropped / elapsed * 60.0,
        "save_s": save_s,
        "add_frame_ms_p50": float(np.percentile(add_ms, 50)),
        "add_frame_ms_p99": float(np.percentile(add_ms, 99)),
        "add_frame_ms_max": float(add_ms.max()),
        "max_encoder_backlog_frames": max_backlog,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="recording time per episode")
    parser.add_argument("--episodes", type=int, default=1)
    parser.add_argument("--fps", type=int, default=50)
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--vcodec", default=None, help="default: the writer's choice")
    parser.add_argument("--root", type=Path, default=None, help="dataset dir (default: a temp dir, deleted)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.episodes < 1 or args.fps < 1 or args.cameras < 1:
        parser.error("--seconds, --episodes, --fps and --cameras must be positive")

    cams = [f"cam{i}" for i in range(args.cameras)]
    frames = {cam: synthetic_frames(args.height, args.width, PATTERN_FRAMES, seed=i) for i, cam in enumerate(cams)}
    dim = 14
    names = [f"j{i}" for i in range(dim)]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "dataset"
        vcodec = args.vcodec or pick_video_codec()
        with LeRobotWriter(root, args.fps, "benchmark", names, names,
                           {c: (args.height, args.width) for c in cams}, vcodec=vcodec) as writer:
            episodes = [record_episode(writer, frames, args.seconds, args.fps, dim) for _ in range(args.episodes)]
        dataset = LeRobotDataset(root)
        dataset.validate()
        video_bytes = sum(p.stat().st_size for p in Path(root).glob("videos/**/*.mp4"))
    total_seconds = sum(e["ticks"] for e in episodes) / args.fps
    report = {
        "benchmark": "record_throughput",
        "cameras": args.cameras, "height": args.height, "width": args.width, "fps": args.fps,
        "vcodec": vcodec,
        "seconds_per_episode": args.seconds,
        "episodes": episodes,
        "frames_dropped_per_minute": sum(e["frames_dropped"] for e in episodes) / total_seconds * 60.0,
        "save_s_mean": float(np.mean([e["save_s"] for e in episodes])),
        "video_mb_per_minute": video_bytes / 2**20 / total_seconds * 60.0,
        "validated": True,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
