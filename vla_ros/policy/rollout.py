"""`vla-ros rollout`: closed-loop episodes in process (no ROS): success, smoothness, safety interventions.

    vla-ros rollout --checkpoint CKPT [--episodes 10] [--seed 1000] [--behaviour transfer|lift_place]
        [--noise-scale S] [--noise-correlation L] [--noise-per-episode | --deterministic]
        [--chunk-blend B] [--report R.json]

Episode k (1-based) runs on seed seed + k, the cube poses of `vla-ros sim-eval`. It is policy_node's
control path without its threads and messages: every replan period (policy_node's 0.1 s) the policy
predicts a chunk from the current frame and joint state, the control core (Controller with
policy_node's default parameters) queues it stamped with the observation's time, and every tick
the controller's command drives AlohaSim. As in the node, one Controller serves all episodes
(disable, then enable at the reset pose) and the runtime starts a new noise episode on each enable.
Differences from the ROS path: inference is synchronous (no latency unless --latency-ticks
delays each chunk), frames are raw (sim_node sends JPEG) and an episode ends at success instead
of running out its 400 ticks (`--run-out` runs them out, as sim-eval does, and counts the
interventions after the behaviour was completed apart; `--soft-start-time 0.2`, sim-eval's, and
`--latency-ticks 1` then come close to what sim-eval counts through ROS).

`--behaviour` picks the instruction the policy is given (that behaviour's, as in collect-sim and
sim-eval) and what counts as success. An episode ends at the first behaviour of the scene it
completes (vla_ros.sim.behaviours.classify), and each episode reports which one; the summary
counts them, so that a policy that does the other instruction's behaviour shows up as such.

Roughness is the mean |x[t+1] - x[t]| over the arm joints (grippers excluded), in rad per tick:
- chunks: inside each predicted chunk (its entries are one tick apart);
- targets: the chunk executor's blended targets, what the safety filter is given;
- commands: what the safety filter sent.
`*_second` is the same for second differences |x[t+1] - 2 x[t] + x[t-1]|, what the acceleration cap
bounds. The demonstrations' figure is the scripted plan for the same seed, up to the tick its
replay in AlohaSim succeeds (and over the whole plan); the plan is also executed as chunks through
the same controller, for the interventions that reproducing the demonstrations exactly would get.
Interventions are counted in ticks: a tick on which the filter capped an acceleration counts once,
whatever the number of joints; `arm_at_acceleration_cap` counts the ticks on which an arm joint's
command changed speed by the full cap (the grippers' 0/1 steps are capped too). The counts are
also given for the ticks after the soft start (the first 2 s after enable, at a quarter of the
velocity limit), where the filter lags any motion at demonstration speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vla_ros.control.controller import Controller, ControllerConfig
from vla_ros.control.chunks import BLEND_MODES
from vla_ros.policy.checkpoint import CheckpointError
from vla_ros.policy.runtime import PolicyRuntime
from vla_ros.robot.profile import load_profile
from vla_ros.sim.aloha_sim import SIM_CAMERA_FOR_PROFILE_CAMERA, AlohaSim
from vla_ros.sim.behaviours import BEHAVIOURS, INSTRUCTIONS, NONE, TRANSFER, classify
from vla_ros.sim.scripted import ARM_JOINT_INDICES, EPISODE_LEN, scripted_transfer_cube
from vla_ros.sim.success import wilson_interval

PROFILE = "aloha_sim"
REPLAN_PERIOD = 0.1  # s: policy_node's default replan_period
COUNTED_INTERVENTIONS = ("cap_acceleration", "cap_velocity", "clamp_position", "cap_tracking")


def roughness(values: np.ndarray, order: int = 1) -> float:
    """Mean |order-th difference| over the arm joints of a (T, 14) sequence (nan when too short)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) <= order:
        return float("nan")
    return float(np.abs(np.diff(values[:, ARM_JOINT_INDICES], n=order, axis=0)).mean())


def drive(controller: Controller, sim: AlohaSim, seed: int, chunk_for, replan_ticks: int,
          max_ticks: int = EPISODE_LEN, latency_ticks: int = 0, behaviour: str = TRANSFER,
          run_out: bool = False) -> dict:
    """One closed-loop episode on `seed`: every `replan_ticks` ticks chunk_for(tick, observation,
    now) gives a chunk captured now, which reaches the controller `latency_ticks` ticks later (stamped
    with its capture time, as the node's inference latency delays it); every tick the controller's
    command drives the simulator; ends at the first behaviour completed (success if it is
    `behaviour`; with run_out it goes on), at a stop of the controller (fault) or after max_ticks.
    The clock goes on from the controller's previous episode, as the node's does: set back to 0,
    it would leave the executor's last target time in the future and expire the first chunk (the
    arms then held for a replan period)."""
    profile = controller.profile
    origin = (controller.ticks + 1) * controller.dt
    observation = sim.reset(seed)
    controller.disable()
    controller.enable(origin, observation["qpos"])
    chunks, targets, commands = [], [], []
    counts = dict.fromkeys(COUNTED_INTERVENTIONS, 0) | {"hold": 0}
    after_ramp = dict(counts)  # the same, once the soft start is over
    after_completion = dict(counts)  # the same, once a behaviour was completed (run_out)
    completed_tick = None
    ramp_ticks = int(np.ceil(controller.config.soft_start_time / controller.dt - 1e-9))
    success, best_reward, ended, completed = False, 0.0, "time", NONE
    in_flight: list[tuple[int, float, np.ndarray]] = []  # (tick it arrives, capture time, chunk)
    for tick in range(max_ticks):
        now = origin + tick * controller.dt
        if tick % replan_ticks == 0:
            chunks.append(chunk_for(tick, observation, now))
            in_flight.append((tick + latency_ticks, now, chunks[-1]))
        while in_flight and in_flight[0][0] <= tick:
            _, captured, chunk = in_flight.pop(0)
            controller.on_chunk(chunk, captured, now)
        result = controller.tick(now, observation["qpos"], {arm.name: now for arm in profile.arms},
                                 dict.fromkeys(profile.camera_names, now))
        for kind in set(result.reasons):
            key = "hold" if kind.startswith("hold") else kind
            if key in counts:
                counts[key] += 1
                after_ramp[key] += tick >= ramp_ticks
                after_completion[key] += completed_tick is not None
        if result.command is None:
            ended = result.state
            break
        if result.target is not None:
            targets.append(result.target)
        commands.append(result.command)
        observation, reward, _ = sim.step(result.command)
        best_reward = max(best_reward, reward)
        if completed_tick is None:
            completed = classify(sim.behaviours.completed)
            if completed != NONE:
                completed_tick = len(commands)
                success = completed == behaviour
                ended = "success" if success else completed
                if not run_out:
                    break
    commands = np.array(commands)
    # Ticks on which some ARM joint's command changed speed by the full acceleration cap (the
    # filter's counter does not say which joints it cut; the grippers' 0/1 steps are cut too).
    arm_capped = np.zeros(len(commands), dtype=bool)  # per tick
    if len(commands) > 2:
        second = np.abs(np.diff(commands, n=2, axis=0))[:, ARM_JOINT_INDICES]
        arm_capped[2:] = (second >= controller.safety.accel_cap[ARM_JOINT_INDICES] * (1 - 1e-9)).any(axis=1)
    return {
        "seed": seed, "success": bool(success), "behaviour_completed": completed, "best_reward": best_reward,
        "ticks": len(commands), "ended": ended,
        "chunk_roughness": float(np.mean([roughness(c) for c in chunks])),
        "chunk_roughness_second": float(np.mean([roughness(c, 2) for c in chunks])),
        "target_roughness": roughness(np.array(targets)), "target_roughness_second": roughness(np.array(targets), 2),
        "command_roughness": roughness(commands), "command_roughness_second": roughness(commands, 2),
        "interventions_ticks": counts | {"arm_at_acceleration_cap": int(arm_capped.sum())},
        "ticks_after_soft_start": max(0, len(commands) - ramp_ticks),
        "interventions_ticks_after_soft_start": after_ramp | {"arm_at_acceleration_cap": int(arm_capped[ramp_ticks:].sum())},
        "completed_tick": completed_tick,
        "ticks_after_completion": 0 if completed_tick is None else len(commands) - completed_tick,
        "interventions_ticks_after_completion": after_completion | {
            "arm_at_acceleration_cap": 0 if completed_tick is None else int(arm_capped[completed_tick:].sum())},
    }


def run_episode(runtime: PolicyRuntime, controller: Controller, sim: AlohaSim, seed: int,
                replan_ticks: int, max_ticks: int = EPISODE_LEN, latency_ticks: int = 0,
                behaviour: str = TRANSFER, action_prefix_steps: int = 0, run_out: bool = False) -> dict:
    """One policy episode on `seed`; the runtime starts a new noise episode, as on the node's enable.
    action_prefix_steps > 0: each chunk is given that many of the controller's planned targets from
    its capture on, as policy_node gives them."""
    cameras = {name: SIM_CAMERA_FOR_PROFILE_CAMERA[name] for name in controller.profile.camera_names}
    runtime.new_episode()

    def chunk_for(tick, observation, now):
        prefix = controller.planned_targets(now, action_prefix_steps) if action_prefix_steps else None
        return runtime.predict({name: observation["images"][sim_name] for name, sim_name in cameras.items()},
                               observation["qpos"], action_prefix=prefix)

    return drive(controller, sim, seed, chunk_for, replan_ticks, max_ticks, latency_ticks, behaviour, run_out)


def demonstration(seed: int, sim: AlohaSim, controller: Controller, replan_ticks: int, horizon: int,
                  behaviour: str = TRANSFER, run_out: bool = False) -> dict:
    """The scripted plan of `behaviour` for `seed`: its roughness up to the tick its replay
    completes the behaviour (and in full), and the same plan executed as chunks of `horizon` ticks
    through the controller (the interventions a policy that reproduced the demonstrations exactly
    would get)."""
    plan = scripted_transfer_cube(seed, behaviour=behaviour).joint_actions
    sim.reset(seed)
    success_tick = None
    for tick, action in enumerate(plan):
        sim.step(action)
        if sim.behaviours.completed[behaviour] is not None:
            success_tick = tick + 1
            break
    window = plan[:success_tick] if success_tick else plan
    through = drive(controller, sim, seed, lambda tick, *_: plan[tick:tick + horizon], replan_ticks, len(plan),
                    behaviour=behaviour, run_out=run_out)
    return {"success_tick": success_tick, "roughness": roughness(window), "roughness_second": roughness(window, 2),
            "roughness_full_plan": roughness(plan),
            "through_controller": {key: through[key] for key in (
                "success", "ticks", "target_roughness", "command_roughness", "interventions_ticks",
                "ticks_after_soft_start", "interventions_ticks_after_soft_start",
                "ticks_after_completion", "interventions_ticks_after_completion")}}


def per_tick(episodes: list[dict], suffix: str = "") -> dict:
    """Each intervention's ticks over all ticks of `episodes` (suffix "_after_soft_start": those after it)."""
    ticks = max(sum(e["ticks" + suffix] for e in episodes), 1)
    kinds = episodes[0]["interventions_ticks" + suffix] if episodes else {}
    return {kind: sum(e["interventions_ticks" + suffix][kind] for e in episodes) / ticks for kind in kinds}


def summarize(episodes: list[dict], demonstrations: list[dict]) -> dict:
    """Success with its interval; roughness means over episodes; interventions per tick over all ticks."""
    n, k = len(episodes), sum(e["success"] for e in episodes)
    ticks = sum(e["ticks"] for e in episodes)
    mean = lambda rows, key: float(np.nanmean([row[key] for row in rows]))  # noqa: E731
    summary = {
        "episodes": n, "successes": k, "success_rate_95ci": wilson_interval(k, n), "ticks": ticks,
        "behaviours_completed": {name: sum(e["behaviour_completed"] == name for e in episodes)
                                 for name in (*BEHAVIOURS, NONE)},
        "roughness": {key: mean(episodes, key) for key in (
            "chunk_roughness", "target_roughness", "command_roughness",
            "chunk_roughness_second", "target_roughness_second", "command_roughness_second")},
        "interventions_per_tick": per_tick(episodes),
        "interventions_per_tick_after_soft_start": per_tick(episodes, "_after_soft_start"),
        "ticks_after_completion": sum(e["ticks_after_completion"] for e in episodes),
        "interventions_per_tick_after_completion": per_tick(episodes, "_after_completion"),
        "demonstrations": {key: mean(demonstrations, key) for key in (
            "roughness", "roughness_second", "roughness_full_plan")} | {
            "through_controller_interventions_per_tick": per_tick([d["through_controller"] for d in demonstrations]),
            "through_controller_interventions_per_tick_after_soft_start": per_tick(
                [d["through_controller"] for d in demonstrations], "_after_soft_start"),
            "through_controller_interventions_per_tick_after_completion": per_tick(
                [d["through_controller"] for d in demonstrations], "_after_completion")}
            if demonstrations else {},
    }
    demo = summary["demonstrations"].get("roughness")
    if demo:
        summary["roughness_to_demonstrations"] = {
            key: value / demo for key, value in summary["roughness"].items() if not key.endswith("_second")}
    return summary


def rollout(checkpoint, episodes: int = 10, seed: int = 1000, chunk_blend: str = "ensemble",
            deterministic: bool = False, noise_scale: float | None = None, noise_correlation: float | None = None,
            noise_per_episode: bool = False, runtime_seed: int = 0, demonstrations: bool = True,
            max_ticks: int = EPISODE_LEN, soft_start_time: float = ControllerConfig.soft_start_time,
            progress=None, latency_ticks: int = 0, behaviour: str = TRANSFER, action_prefix_steps: int = -1,
            run_out: bool = False, crossfade_ticks: int = ControllerConfig.crossfade_ticks) -> dict:
    """The report as a dict (see the module docstring). action_prefix_steps as policy_node's
    parameter: -1 the checkpoint's, 0 none, else at most the checkpoint's."""
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour {behaviour!r} (the scene has {', '.join(BEHAVIOURS)})")
    if episodes < 1 or max_ticks < 1:
        raise ValueError(f"--episodes and --max-ticks must be >= 1, got {episodes} and {max_ticks}")
    if latency_ticks < 0:
        raise ValueError(f"--latency-ticks must be >= 0, got {latency_ticks}")
    profile = load_profile(PROFILE)
    runtime = PolicyRuntime(checkpoint, profile=profile, deterministic=deterministic, seed=runtime_seed,
                            noise_scale=noise_scale, noise_correlation=noise_correlation,
                            noise_per_episode=noise_per_episode)
    runtime.set_instruction(INSTRUCTIONS[behaviour])
    prefix_steps = runtime.prefix_steps_for(action_prefix_steps)
    sizes = runtime.config.extra.get("training", {}).get("camera_image_sizes") or {}
    height, width = next(iter(sizes.values()), (profile.cameras[0].height, profile.cameras[0].width))
    sim = AlohaSim("transfer_cube", cameras=tuple(SIM_CAMERA_FOR_PROFILE_CAMERA[c] for c in profile.camera_names),
                   image_width=width, image_height=height)
    config = ControllerConfig(chunk_blend=chunk_blend, crossfade_ticks=crossfade_ticks, soft_start_time=soft_start_time)
    controller = Controller(profile, config)
    replan_ticks = max(1, round(REPLAN_PERIOD / controller.dt))
    started = time.monotonic()
    results, demos = [], []
    demo_sim = AlohaSim("transfer_cube", cameras=()) if demonstrations else None
    demo_controller = Controller(profile, config)
    for index in range(1, episodes + 1):
        results.append(run_episode(runtime, controller, sim, seed + index, replan_ticks, max_ticks,
                                   latency_ticks, behaviour, prefix_steps, run_out))
        if demo_sim is not None:
            demos.append(demonstration(seed + index, demo_sim, demo_controller, replan_ticks,
                                       runtime.config.horizon, behaviour, run_out))
            results[-1]["demonstration"] = demos[-1]
        if progress is not None:
            episode = results[-1]
            progress(f"episode {index}/{episodes} seed {episode['seed']}: success={episode['success']} "
                     f"completed={episode['behaviour_completed']} "
                     f"ticks={episode['ticks']} target_roughness={episode['target_roughness']:.4f} "
                     f"accel_caps={episode['interventions_ticks']['cap_acceleration']}")
    return {
        "checkpoint": str(Path(checkpoint).resolve()),
        "seeds": [seed + 1, seed + episodes],
        "behaviour": behaviour,
        "instruction": INSTRUCTIONS[behaviour],
        "steps": runtime.steps,
        "deterministic": deterministic,
        "runtime_seed": runtime_seed,
        **runtime.initial_noise.describe(),
        "chunk_blend": chunk_blend,
        "crossfade_ticks": crossfade_ticks,
        "soft_start_time": soft_start_time,
        "replan_ticks": replan_ticks,
        "latency_ticks": latency_ticks,
        "action_prefix_steps": prefix_steps,
        "run_out": run_out,
        "torch_threads": torch.get_num_threads(),
        "wall_s": round(time.monotonic() - started, 1),
        "summary": summarize(results, demos),
        "per_episode": results,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vla-ros rollout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1000, help="episode k runs on seed + k (sim-eval's poses)")
    parser.add_argument("--behaviour", default=TRANSFER, choices=BEHAVIOURS,
                        help="the instruction given and the behaviour that counts as success")
    parser.add_argument("--chunk-blend", default="ensemble", choices=BLEND_MODES)
    parser.add_argument("--crossfade-ticks", type=int, default=ControllerConfig.crossfade_ticks,
                        help="ticks over which a new chunk ramps into the blend (policy_node's crossfade_ticks)")
    parser.add_argument("--deterministic", action="store_true", help="decode from zero noise")
    parser.add_argument("--noise-scale", type=float, default=None,
                        help="initial noise temperature (1: as trained; default: the checkpoint's recommended_noise_scale)")
    parser.add_argument("--noise-correlation", type=float, default=None,
                        help="correlation length of the noise along the horizon, in steps (0: white; "
                             "default: the checkpoint's recommended_noise_correlation)")
    parser.add_argument("--noise-per-episode", action="store_true", help="one noise draw per episode")
    parser.add_argument("--runtime-seed", type=int, default=0, help="seed of the runtime's noise generator")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (policy_node's default: 1)")
    parser.add_argument("--no-demonstrations", action="store_true", help="skip the scripted plans' figures")
    parser.add_argument("--max-ticks", type=int, default=EPISODE_LEN, help="ticks per episode at most")
    parser.add_argument("--soft-start-time", type=float, default=ControllerConfig.soft_start_time,
                        help="s of reduced speed after enable (policy_node's soft_start_time)")
    parser.add_argument("--latency-ticks", type=int, default=0,
                        help="each chunk reaches the controller this many ticks after its observation")
    parser.add_argument("--action-prefix-steps", type=int, default=-1,
                        help="planned targets given to a checkpoint trained with an action prefix (policy_node's "
                             "action_prefix_steps; -1: the checkpoint's, 0: none)")
    parser.add_argument("--run-out", action="store_true",
                        help="run every episode for --max-ticks, as sim-eval does, instead of ending it when a "
                             "behaviour is completed; interventions after that are also counted apart")
    parser.add_argument("--report", help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        report = rollout(args.checkpoint, args.episodes, args.seed, args.chunk_blend, args.deterministic,
                         args.noise_scale, args.noise_correlation, args.noise_per_episode, args.runtime_seed,
                         not args.no_demonstrations, args.max_ticks, args.soft_start_time, progress=lambda line: print(line, file=sys.stderr, flush=True),
                         latency_ticks=args.latency_ticks, behaviour=args.behaviour,
                         action_prefix_steps=args.action_prefix_steps, run_out=args.run_out,
                         crossfade_ticks=args.crossfade_ticks)
    except (ValueError, OSError, CheckpointError) as error:
        print(f"vla-ros rollout: {error}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=1)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(text)
    print(json.dumps({"report": args.report, "config": {k: report[k] for k in (
        "behaviour", "steps", "deterministic", "noise_scale", "noise_correlation", "noise_per_episode", "chunk_blend",
        "crossfade_ticks", "soft_start_time", "latency_ticks", "action_prefix_steps", "run_out")},
        **report["summary"]}, indent=1) if args.report else text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
