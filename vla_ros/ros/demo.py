"""`vla-ros demo` (`make demo`): the policy node drives the simulated ALOHA through ROS topics.

sim_node, arm_guard (the last hop before the simulated drivers) and policy_node run as separate
processes on an isolated ROS domain, exactly what launch/sim.launch.py starts; the demo arms the policy, runs one transfer-cube episode and prints a
summary (also written as JSON). It uses the bundled default checkpoint when the package ships
one, else a randomly initialised tiny checkpoint, and says which.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vla_ros.robot.profile import config_dir, load_profile
from vla_ros.sim.collect import image_size_argument

DEFAULT_CHECKPOINT_NAME = "transfer_cube_default"


def bundled_checkpoint() -> Path | None:
    """share/vla_ros/checkpoints/<default> (installed) or checkpoints/<default> (checkout)."""
    candidate = config_dir().parent / "checkpoints" / DEFAULT_CHECKPOINT_NAME
    return candidate if (candidate / "config.json").is_file() else None


def random_checkpoint(directory: Path, profile: str) -> Path:
    from vla_ros.policy.checkpoint import build_random_policy, save_checkpoint

    policy = build_random_policy("tiny", load_profile(profile), seed=0)
    return save_checkpoint(policy, directory, overwrite=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vla-ros demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the bundled one, else a random tiny one)")
    parser.add_argument("--profile", default="aloha_sim")
    parser.add_argument("--episodes", type=int, default=1)
    parser.add_argument("--steps", type=int, default=0, help="decoding steps (0 = the checkpoint's recommended)")
    parser.add_argument("--episode-steps", type=int, default=400, help="simulation steps per episode (50 per second)")
    parser.add_argument("--seed", type=int, default=1000,
                        help="cube poses come from seed + 1, + 2, ... (the bundled policy was trained on 0-199)")
    parser.add_argument("--output", default="out/demo", help="directory for summary.json (and the video)")
    parser.add_argument("--video", action="store_true", help="write the first episode's camera as an mp4")
    parser.add_argument("--image-size", type=image_size_argument, default=None,
                        help="HxW rendered by sim_node (default: the size the checkpoint was trained on, "
                             "else the profile's)")
    parser.add_argument("--raw-images", action="store_true",
                        help="send raw rgb8 frames between the nodes instead of JPEG (raw 640x480 delayed "
                             "joint states past the freshness gate on a 2-core machine)")
    args = parser.parse_args(argv)

    from vla_ros.ros.episodes import SessionConfig, SimSession, image_size_for, summarize

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        checkpoint, origin = Path(args.checkpoint), "given"
    elif (bundled := bundled_checkpoint()) is not None:
        checkpoint, origin = bundled, "bundled default"
    else:
        checkpoint, origin = random_checkpoint(output / "random_tiny_checkpoint", args.profile), "random tiny (untrained)"
    print(f"vla-ros demo: checkpoint {checkpoint} ({origin})", flush=True)
    if origin.startswith("random"):
        print("vla-ros demo: no trained checkpoint is bundled, so the arms will move but not solve the task", flush=True)

    height, width = args.image_size or image_size_for(checkpoint, load_profile(args.profile))
    config = SessionConfig(checkpoint=str(checkpoint), profile=args.profile, steps=args.steps, seed=args.seed,
                           episode_steps=args.episode_steps, image_width=width, image_height=height,
                           compressed_images=not args.raw_images,
                           video_path=str(output / "episode{episode}.mp4") if args.video else "")
    results = []
    try:
        with SimSession(config) as session:
            print(f"vla-ros demo: sim_node, arm_guard and policy_node up on ROS domain {session.domain}", flush=True)
            for _ in range(args.episodes):
                result = session.run_episode()
                results.append(result)
                print(f"  episode {result.episode} (seed {result.seed}): success={result.success} "
                      f"max_reward={result.max_reward:g} steps={result.steps} "
                      f"commands={result.commands_published}", flush=True)
    except (RuntimeError, AssertionError) as exc:
        print(f"vla-ros demo: failed: {exc}", file=sys.stderr)
        return 1
    summary = {"checkpoint": str(checkpoint), "checkpoint_origin": origin, **summarize(results)}
    summary["last_episode_diagnostics"] = results[-1].diagnostics if results else {}
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("per_episode", "last_episode_diagnostics")}, indent=2))
    print(f"vla-ros demo: summary written to {output / 'summary.json'}")
    return 0
