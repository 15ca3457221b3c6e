"""`vla-ros bench peer`: vla_ros against LeRobot's SmolVLA on this CPU, the same VLM, calls in turn.

Both sides get one set of VLM dimensions (by default SmolVLM2-500M's, `tiny.build_preset
("smolvlm2-500m")`, with the first 16 of its 32 language layers, as SmolVLA keeps), random
weights, the same dtype and torch thread count, camera frames of the same size (each resizes them
to the vision tower's 512x512), and an instruction of the same number of tokens. SmolVLA keeps its
own defaults otherwise: chunks of 50, its 0.75-wide action expert, 10 Euler steps. vla_ros gets
chunks of 50 too, with its default head.

SmolVLA runs in its own interpreter (`make peer-venv`; LeRobot 0.4.4 needs transformers < 5) as
tools/peer_smolvla_worker.py, driven over a pipe; vla_ros runs in this process. One call runs at a
time, and the calls take turns (policy.bench.time_interleaved), so load from other processes falls
on both alike. Each figure is the wall time of one call as the driver sees it (for SmolVLA, the
pipe's round trip is included: under a millisecond against seconds).

The answer to issue 17's peer target is `smolvla_default_over_vla_ros_one_step`: SmolVLA as it
ships (10 steps) against vla_ros as it ships (1 step), at least 3 wanted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from vla_ros.policy.backbone import VLMBackbone
from vla_ros.policy.bench import INSTRUCTION, time_interleaved
from vla_ros.policy.checkpoint import profile_stats
from vla_ros.policy.model import VLAPolicy, default_config
from vla_ros.policy.runtime import PolicyRuntime
from vla_ros.policy.tiny import build_preset, build_tokenizer
from vla_ros.robot.profile import load_profile

WORKER = Path("tools/peer_smolvla_worker.py")  # in the repository checkout, as the peer venv is
PROFILE = "aloha_stationary"
SMOLVLA_LM_LAYERS = 16  # SmolVLAConfig.num_vlm_layers
SMOLVLA_CHUNK = 50  # SmolVLAConfig.chunk_size
SMOLVLA_STEPS = 10  # SmolVLAConfig.num_steps
IMAGE_HW = (480, 640)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class PeerError(RuntimeError):
    """The peer interpreter is missing, or its worker failed or broke the protocol."""


def vlm_dimensions(config, image_token_id: int) -> dict:
    """The numbers the peer needs to build the same VLM (plain values, no transformers objects)."""
    vision, text = config.vision_config, config.text_config
    rope = getattr(text, "rope_theta", None) or (getattr(text, "rope_parameters", None) or {}).get("rope_theta")
    return {
        "vision": {key: getattr(vision, key) for key in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
            "patch_size")},
        "text": {**{key: getattr(text, key) for key in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings")},
            **({"rope_theta": float(rope)} if rope else {})},
        "scale_factor": config.scale_factor,
        "image_token_id": image_token_id,
    }


class PeerWorker:
    """The SmolVLA worker process: `call(steps)` runs one predict there and waits for it."""

    def __init__(self, python: str, dims: dict, cameras: int, text_tokens: int, lm_layers: int, threads: int,
                 dtype: str, worker: Path = WORKER, timeout: float = 1800.0):
        if not (Path(python).is_file() and os.access(python, os.X_OK)):
            raise PeerError(f"no peer interpreter at {python}: build it with `make peer-venv`")
        if not Path(worker).is_file():
            raise PeerError(f"no SmolVLA worker at {worker}: run from the repository's root")
        command = [python, str(worker), "--dims", json.dumps(dims), "--cameras", str(cameras),
                   "--image-hw", *map(str, IMAGE_HW), "--text-tokens", str(text_tokens),
                   "--num-vlm-layers", str(lm_layers), "--threads", str(threads), "--dtype", dtype]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env)
        self.facts = json.loads(self._expect("ready ")[len("ready "):])

    def _expect(self, prefix: str) -> str:
        for line in self.process.stdout:
            if line.startswith(prefix):
                return line.strip()
        self.process.wait(timeout=30)
        error = self.process.stderr.read().strip().splitlines()
        raise PeerError(f"SmolVLA worker exited with {self.process.returncode} before '{prefix.strip()}': "
                        f"{error[-1] if error else 'no error output'}")

    def call(self, steps: int) -> None:
        self.process.stdin.write(f"call {steps}\n")
        self.process.stdin.flush()
        self._expect("done")

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()


def build_vla_ros(preset_name: str, cameras: int, lm_layers: int, dtype: torch.dtype):
    """vla_ros's runtime on the preset's VLM (random weights), its text token count and the dims."""
    profile = load_profile(PROFILE)
    tokenizer = build_tokenizer()
    preset = build_preset(preset_name, tokenizer)
    torch.manual_seed(0)
    backbone = VLMBackbone.from_config(preset.config, tokenizer, preset.image_mean, preset.image_std,
                                       num_lm_layers=lm_layers)
    config = default_config(backbone, profile.camera_names[:cameras], profile.vector_names, profile.vector_names,
                            horizon=SMOLVLA_CHUNK, alpha=4.0, robot_profile=profile.name,
                            normalization="min_max", backbone_source=f"random:{preset_name}")
    policy = VLAPolicy(config, backbone, profile_stats(profile))
    parameters = sum(p.numel() for p in policy.parameters())
    runtime = PolicyRuntime.from_policy(policy, dtype=dtype)
    runtime.set_instruction(INSTRUCTION)
    text_tokens = backbone.check_instruction(INSTRUCTION)
    dims = vlm_dimensions(preset.config, tokenizer.convert_tokens_to_ids("<image>"))
    return runtime, text_tokens, dims, parameters


def run(peer_python: str, preset: str = "smolvlm2-500m", cameras: int = 1, lm_layers: int = SMOLVLA_LM_LAYERS,
        threads: int = 2, dtype: str = "float32", warmup: int = 2, repeats: int = 10, worker: Path = WORKER,
        head_float32: bool = False) -> dict:
    """head_float32: vla_ros's head stays float32 whatever `dtype`, as SmolVLA's expert does when
    LeRobot casts only its VLM (same precision on both sides of the decoding steps)."""
    torch.set_num_threads(threads)
    runtime, text_tokens, dims, parameters = build_vla_ros(preset, cameras, lm_layers, DTYPES[dtype])
    if head_float32:
        runtime.policy.head.float()  # the head casts its inputs to its own dtype
    peer = PeerWorker(peer_python, dims, cameras, text_tokens, lm_layers, threads, dtype, worker)
    try:
        rng = np.random.default_rng(0)
        images = {key: rng.integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8) for key in runtime.camera_keys}
        state = np.zeros(runtime.config.real_state_dim)
        load_before = os.getloadavg()
        timings = time_interleaved({
            "vla_ros_prefix_only": lambda: runtime.predict_prefix(images),
            "vla_ros_steps_1": lambda: runtime.predict(images, state, steps=1),
            "vla_ros_steps_10": lambda: runtime.predict(images, state, steps=10),
            "smolvla_steps_1": lambda: peer.call(1),
            f"smolvla_steps_{SMOLVLA_STEPS}": lambda: peer.call(SMOLVLA_STEPS),
        }, warmup, repeats)
        load_after = os.getloadavg()
    finally:
        peer.close()

    def ratio(numerator: str, denominator: str) -> float:
        return round(timings[numerator]["p50_ms"] / timings[denominator]["p50_ms"], 3)

    return {
        "benchmark": "peer",
        "what": "one predict per call, p50 of wall time; calls in turn, one at a time",
        "preset": preset, "vlm_dimensions": dims, "language_layers": lm_layers, "cameras": cameras,
        "image_hw": list(IMAGE_HW), "instruction_tokens": text_tokens, "dtype": dtype, "threads": threads,
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "vla_ros": {"parameters": parameters, "horizon": runtime.config.horizon,
                    "head_dtype": str(next(runtime.policy.head.parameters()).dtype).removeprefix("torch."),
                    "head": runtime.config.head.to_dict(), "recommended_steps": 1,
                    **{key[len("vla_ros_"):]: value for key, value in timings.items() if key.startswith("vla_ros_")}},
        "smolvla": {**peer.facts,
                    **{key[len("smolvla_"):]: value for key, value in timings.items() if key.startswith("smolvla_")}},
        "ratios": {
            "smolvla_default_over_vla_ros_one_step": ratio(f"smolvla_steps_{SMOLVLA_STEPS}", "vla_ros_steps_1"),
            "smolvla_one_step_over_vla_ros_one_step": ratio("smolvla_steps_1", "vla_ros_steps_1"),
            "smolvla_ten_over_one": ratio(f"smolvla_steps_{SMOLVLA_STEPS}", "smolvla_steps_1"),
            "vla_ros_ten_over_one": ratio("vla_ros_steps_10", "vla_ros_steps_1"),
            "vla_ros_one_step_over_prefix": ratio("vla_ros_steps_1", "vla_ros_prefix_only"),
            "target_smolvla_default_over_vla_ros_one_step_min": 3.0,
        },
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vla-ros bench peer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-python", default=".venv-peer/bin/python",
                        help="the interpreter `make peer-venv` builds (LeRobot 0.4.4, transformers < 5)")
    parser.add_argument("--preset", default="smolvlm2-500m", help="VLM dimensions (tiny-smolvlm2 for a quick check)")
    parser.add_argument("--cameras", type=int, default=1)
    parser.add_argument("--language-layers", type=int, default=SMOLVLA_LM_LAYERS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--head-float32", action="store_true", help="keep vla_ros's head float32 with a bfloat16 "
                        "VLM, as SmolVLA's expert stays under LeRobot")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.cameras < 1 or args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--cameras, --repeats and --threads must be >= 1, --warmup >= 0")
    try:
        report = run(args.peer_python, args.preset, args.cameras, args.language_layers, args.threads, args.dtype,
                     args.warmup, args.repeats, head_float32=args.head_float32)
    except PeerError as error:
        print(f"vla-ros bench peer: {error}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
