"""`vla-ros collect-sim`: scripted transfer-cube demonstrations recorded as a LeRobot v3 dataset.

Why AlohaSim renders the images: a policy trained on these frames is evaluated on what sim_node
publishes, and sim_node renders through AlohaSim; rendering the demonstrations with the same
renderer at the same size keeps train and evaluation images identical. The scripted plan gives
the joint commands for a seed (vla_ros.sim.scripted); they are replayed in AlohaSim reset with
that seed (the same cube pose), and every step records what the recorder node would: the
observed qpos BEFORE the command (observation.state), the command (action) and the camera frame
seen before it. Only episodes whose replay succeeds are saved.

Several behaviours of one scene (``--behaviours transfer,lift_place``, vla_ros.sim.behaviours)
make a multi-instruction dataset: every episode is labelled with its behaviour's instruction
(LeRobot's task index), counts as kept only if that behaviour's own detector fired, and the
seeds are dealt out in turn (seed s to behaviour s mod B while each still needs episodes), so the
behaviours see different cube poses and together as many as one behaviour alone would.

The dataset is written by LeRobotWriter with the profile's state/action names, fps and camera
names (cam_high <- the sim's 'top' camera), i.e. the format the recorder node writes, except that
the image size is the one chosen here rather than the profile's 480x640.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


from vla_ros.data.lerobot import DatasetError, LeRobotWriter
from vla_ros.robot.profile import load_profile
from vla_ros.sim.aloha_sim import SIM_CAMERA_FOR_PROFILE_CAMERA, AlohaSim
from vla_ros.sim.behaviours import BEHAVIOURS, INSTRUCTIONS, TRANSFER
from vla_ros.sim.scripted import EPISODE_LEN, ScriptedEpisode, scripted_transfer_cube

# Instruction stored with each episode of a task's default behaviour; a policy trained on the
# dataset should be run with it.
TASK_TEXT = {"transfer_cube": INSTRUCTIONS[TRANSFER]}


@dataclass
class CollectResult:
    output: str
    task: str
    instruction: str
    tried: int = 0
    kept: int = 0
    kept_seeds: list[int] = field(default_factory=list)
    failed_seeds: list[int] = field(default_factory=list)
    # behaviour -> its instruction and the seeds kept for it, in dataset order within the behaviour
    instructions: dict[str, str] = field(default_factory=dict)
    kept_seeds_by_behaviour: dict[str, list[int]] = field(default_factory=dict)
    frames: int = 0
    seconds: float = 0.0


def parse_image_size(text: str) -> tuple[int, int]:
    """'HxW' -> (height, width); both even and positive (the video encoder's yuv420p needs even)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"image size must look like HxW (e.g. 480x640), got {text!r}") from None
    if height < 16 or width < 16 or height % 2 or width % 2:
        raise ValueError(f"image size {height}x{width}: height and width must be even and >= 16")
    return height, width


def image_size_argument(text: str) -> tuple[int, int]:
    """parse_image_size for argparse `type=`: a bad size is a usage error naming the problem."""
    try:
        return parse_image_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def sim_cameras_for(profile) -> dict[str, str]:
    """The profile's cameras mapped to simulated ones; every profile camera must have one."""
    missing = [name for name in profile.camera_names if name not in SIM_CAMERA_FOR_PROFILE_CAMERA]
    if missing:
        raise ValueError(f"profile {profile.name!r} has cameras {missing} that the simulation does not render "
                         f"(it renders {sorted(SIM_CAMERA_FOR_PROFILE_CAMERA)})")
    return {name: SIM_CAMERA_FOR_PROFILE_CAMERA[name] for name in profile.camera_names}


def record_in_sim(sim: AlohaSim, episode: ScriptedEpisode, writer: LeRobotWriter,
                  cameras: dict[str, str]) -> bool:
    """Replays the episode's joint commands in `sim`, streaming frames into the writer's open
    episode; returns whether the episode's behaviour completed at any step."""
    observation = sim.reset(episode.seed)
    for action in episode.joint_actions:
        images = {name: observation["images"][sim_name] for name, sim_name in cameras.items()}
        writer.add_frame(observation["qpos"], action, images)
        observation, _, _ = sim.step(action)
    return sim.behaviours.completed[episode.behaviour] is not None


def parse_behaviours(text: str) -> list[str]:
    """'transfer,lift_place' -> the listed behaviours, each known and listed once."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in BEHAVIOURS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"behaviours must be distinct names from {list(BEHAVIOURS)}, comma-separated; got {text!r}")
    return names


def _behaviour_for_seed(seed: int, behaviours: list[str], kept: dict[str, list[int]], episodes: int) -> str:
    """Seeds are dealt out in turn; a behaviour that has all its episodes passes its turn on."""
    turn = seed % len(behaviours)
    for offset in range(len(behaviours)):
        behaviour = behaviours[(turn + offset) % len(behaviours)]
        if len(kept[behaviour]) < episodes:
            return behaviour
    raise AssertionError("called after every behaviour had its episodes")


def collect(output, episodes: int, task: str = "transfer_cube", start_seed: int = 0,
            profile_name: str = "aloha_sim", image_size: tuple[int, int] = (480, 640),
            max_tries: int | None = None, episode_len: int = EPISODE_LEN, log=None,
            behaviours: list[str] | None = None) -> CollectResult:
    """Record `episodes` successful demonstrations of each behaviour (default: the task's own,
    the transfer), seeds from start_seed on, at most max_tries seeds in all."""
    if task not in TASK_TEXT:
        raise ValueError(f"no scripted demonstrations for task {task!r} (available: {sorted(TASK_TEXT)})")
    behaviours = list(behaviours or [TRANSFER])
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    wanted = episodes * len(behaviours)
    max_tries = 3 * wanted if max_tries is None else max_tries
    if max_tries < wanted:
        raise ValueError(f"max_tries ({max_tries}) must be >= episodes x behaviours ({wanted})")
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise ValueError(f"{output}: exists and is not empty; choose a new dataset directory")
    profile = load_profile(profile_name)
    cameras = sim_cameras_for(profile)
    height, width = image_size
    result = CollectResult(str(output), task, INSTRUCTIONS[behaviours[0]],
                           instructions={name: INSTRUCTIONS[name] for name in behaviours},
                           kept_seeds_by_behaviour={name: [] for name in behaviours})
    started = time.perf_counter()
    sim = AlohaSim(task, cameras=tuple(cameras.values()), image_width=width, image_height=height)
    writer = LeRobotWriter(output, int(round(profile.control_rate_hz)), profile.name, profile.vector_names,
                           profile.vector_names, {name: (height, width) for name in cameras})
    with writer:
        for seed in range(start_seed, start_seed + max_tries):
            if result.kept == wanted:
                break
            behaviour = _behaviour_for_seed(seed, behaviours, result.kept_seeds_by_behaviour, episodes)
            episode = scripted_transfer_cube(seed, episode_len, behaviour)
            writer.start_episode(INSTRUCTIONS[behaviour])
            success = record_in_sim(sim, episode, writer, cameras)
            result.tried += 1
            if success:
                writer.save_episode()
                result.kept += 1
                result.kept_seeds.append(seed)
                result.kept_seeds_by_behaviour[behaviour].append(seed)
                result.frames += len(episode.joint_actions)
            else:
                writer.discard_episode()
                result.failed_seeds.append(seed)
            if log:
                log(f"seed {seed} ({behaviour}): {'kept' if success else 'failed'} ({result.kept}/{wanted} kept, "
                    f"{result.tried} tried)")
        writer.wait()
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vla-ros collect-sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="transfer_cube", choices=sorted(TASK_TEXT))
    parser.add_argument("--episodes", type=int, required=True, help="successful episodes to record per behaviour")
    parser.add_argument("--behaviours", default=TRANSFER,
                        help=f"comma-separated behaviours of the scene, each labelled with its own instruction "
                             f"(from {', '.join(BEHAVIOURS)}; default: {TRANSFER})")
    parser.add_argument("--output", required=True, help="new dataset directory")
    parser.add_argument("--start-seed", type=int, default=0, help="first seed (cube pose) to try")
    parser.add_argument("--max-tries", type=int, help="seeds to try at most (default: 3 x episodes x behaviours)")
    parser.add_argument("--image-size", default="480x640", help="HxW of the rendered frames (even)")
    parser.add_argument("--profile", default="aloha_sim", help="robot profile (names, fps, cameras)")
    parser.add_argument("--episode-len", type=int, default=EPISODE_LEN, help="steps per episode")
    args = parser.parse_args(argv)
    try:
        size = parse_image_size(args.image_size)
        behaviours = parse_behaviours(args.behaviours)
        result = collect(args.output, args.episodes, args.task, args.start_seed, args.profile, size,
                         args.max_tries, args.episode_len, log=lambda text: print(text, file=sys.stderr),
                         behaviours=behaviours)
    except (ValueError, TypeError, DatasetError, OSError) as error:
        print(f"vla-ros collect-sim: {error}", file=sys.stderr)
        return 1
    print(f"kept {result.kept} of {result.tried} tried episodes -> {result.output}", file=sys.stderr)
    print(json.dumps(asdict(result)))
    if result.kept < args.episodes * len(behaviours):
        print(f"vla-ros collect-sim: only {result.kept} of the {args.episodes * len(behaviours)} requested episodes succeeded "
              f"within {result.tried} tries", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
