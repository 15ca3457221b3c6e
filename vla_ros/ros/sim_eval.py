"""`vla-ros sim-eval`: closed-loop success rate in simulation, every episode run THROUGH ROS.

For each requested number of decoding steps, sim_node and policy_node run as separate processes
(vla_ros.ros.episodes.SimSession) over the same seeds, so 1-step and N-step decoding face the
same cube positions. The report holds success with a 95% interval, time to success, inference
latency and safety interventions per step count; optionally a video of the first episode.

With several --instruction texts, one session runs --episodes episodes per instruction, taking the
instructions in turn (episode k gets instruction k mod I) and changing policy_node's live
`instruction` parameter between episodes, never restarting a node. Every episode is classified by
the behaviour of the scene it completed (vla_ros.sim.behaviours), and the report's "confusion" table
gives, per instruction, how often each behaviour (or none) was completed, with 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from vla_ros.sim.collect import TASK_TEXT, image_size_argument


def _step_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(f"--steps takes a comma-separated list of positive integers, got {text!r}")
    return counts


# policy_node parameters the session itself sets (the profile, checkpoint, wiring and clock)
SESSION_POLICY_PARAMETERS = {"profile", "checkpoint", "instruction", "steps", "command_namespace", "deterministic",
                             "soft_start_time", "image_transport"}


def _policy_param(text: str) -> tuple[str, str]:
    name, separator, value = text.partition(":=")
    if not separator or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"--policy-param takes NAME:=VALUE, got {text!r}")
    return name.strip(), value.strip()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vla-ros sim-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--episodes", type=int, default=50, help="episodes per instruction")
    parser.add_argument("--steps", type=_step_counts, default=[1, 10], help="e.g. 1,10")
    parser.add_argument("--report", required=True, help="JSON report path")
    parser.add_argument("--profile", default="aloha_sim")
    parser.add_argument("--seed", type=int, default=1000, help="episode k uses seed + k + 1 (held out from training seeds)")
    parser.add_argument("--episode-steps", type=int, default=400)
    parser.add_argument("--image-size", type=image_size_argument, default=None,
                        help="HxW rendered by sim_node (default: the size the checkpoint was trained on, "
                             "else the profile's)")
    parser.add_argument("--instruction", action="append", default=None, metavar="TEXT",
                        help="instruction for policy_node (repeat for several: they take turns, episode by "
                             "episode, switched live; default: the transfer-cube datasets' instruction)")
    parser.add_argument("--deterministic", action="store_true", help="zero initial noise")
    parser.add_argument("--policy-param", action="append", default=[], type=_policy_param, metavar="NAME:=VALUE",
                        help="a further policy_node parameter, as on its command line (repeatable), e.g. "
                             "noise_correlation:=16.0")
    parser.add_argument("--raw-images", action="store_true",
                        help="send raw rgb8 frames between the nodes instead of JPEG (raw 640x480 delayed "
                             "joint states past the freshness gate on a 2-core machine)")
    parser.add_argument("--wall-clock", action="store_true",
                        help="run every node on the wall clock instead of the simulation's /clock (a simulation "
                             "slower than real time then lags behind its commander); implies --free-running")
    parser.add_argument("--free-running", action="store_true",
                        help="sim_node steps on its clock alone instead of waiting (up to 0.1 s) for the policy's "
                             "goal for each step; a goal that misses its step then acts a step late")
    parser.add_argument("--video-dir", default="", help="write the first --videos episodes of each step count as mp4")
    parser.add_argument("--videos", type=int, default=1, help="episodes per step count written to --video-dir")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    if args.videos < 0:
        parser.error("--videos must be >= 0")
    from vla_ros.ros.policy_node import PARAMETERS as POLICY_PARAMETERS

    known = {spec.name for spec in POLICY_PARAMETERS} - SESSION_POLICY_PARAMETERS
    for name, _ in args.policy_param:
        if name not in known:
            parser.error(f"--policy-param {name}: " + ("sim-eval sets it itself" if name in SESSION_POLICY_PARAMETERS
                                                      else f"policy_node has no such parameter; it has {sorted(known)}"))
    instructions = args.instruction or [TASK_TEXT["transfer_cube"]]
    if any(not text.strip() for text in instructions) or len(set(instructions)) != len(instructions):
        parser.error("--instruction texts must be non-empty and distinct")
    if not (Path(args.checkpoint) / "config.json").is_file():
        print(f"vla-ros sim-eval: {args.checkpoint} is not a checkpoint directory (no config.json)", file=sys.stderr)
        return 2

    from vla_ros.robot.profile import load_profile
    from vla_ros.ros.episodes import (SessionConfig, SimSession, format_confusion_table, image_size_for,
                                      instructed_behaviour, summarize)

    height, width = args.image_size or image_size_for(args.checkpoint, load_profile(args.profile))
    report = {"checkpoint": args.checkpoint, "profile": args.profile, "seed": args.seed,
              "episodes": args.episodes, "instructions": instructions, "image_size": [height, width],
              "clock": "wall" if args.wall_clock else "sim",
              "lockstep": not (args.wall_clock or args.free_running),
              "policy_params": dict(args.policy_param),
              # closed-loop success through ROS depends on how busy the machine is: say how busy it was
              "load_average_1min_start": os.getloadavg()[0], "by_steps": {}}
    for steps in args.steps:
        video = str(Path(args.video_dir) / f"steps{steps}_episode{{episode}}.mp4") if args.video_dir else ""
        config = SessionConfig(checkpoint=args.checkpoint, profile=args.profile, steps=steps, seed=args.seed,
                               episode_steps=args.episode_steps, image_width=width, image_height=height,
                               deterministic=args.deterministic, video_path=video, video_episodes=args.videos,
                               compressed_images=not args.raw_images, instruction=instructions[0],
                               sim_clock=not args.wall_clock,
                               lockstep_timeout=0.0 if args.free_running else SessionConfig.lockstep_timeout,
                               policy_params=dict(args.policy_param))
        started = time.monotonic()
        results = []
        try:
            with SimSession(config) as session:
                for index in range(args.episodes * len(instructions)):
                    instruction = instructions[index % len(instructions)]
                    if instruction != session.instruction:
                        session.set_instruction(instruction)
                    result = session.run_episode()
                    results.append(result)
                    print(f"steps={steps} episode {result.episode} seed {result.seed} {instruction!r}: "
                          f"completed={result.behaviour} (asked: {instructed_behaviour(instruction) or 'unknown'}) "
                          f"transfer_reward={result.success}", flush=True)
        except (RuntimeError, AssertionError) as exc:
            print(f"vla-ros sim-eval: failed at steps={steps}: {exc}", file=sys.stderr)
            return 1
        report["by_steps"][str(steps)] = {**summarize(results), "wall_time_s": time.monotonic() - started}
    report["load_average_1min_end"] = os.getloadavg()[0]
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: {m: v[m] for m in ("success_rate", "success_rate_95ci", "inference_ms_p50")}
                      for k, v in report["by_steps"].items()}, indent=2))
    for steps, summary in report["by_steps"].items():
        print(f"\nsteps={steps}: instruction given (rows) against behaviour completed (columns)\n"
              f"{format_confusion_table(summary['confusion'])}")
    return 0
