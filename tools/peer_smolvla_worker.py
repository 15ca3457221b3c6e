"""LeRobot's SmolVLA with random weights, timed on request by `vla-ros bench peer`.

Runs in the peer interpreter (`make peer-venv`: LeRobot 0.4.4 needs transformers < 5, the
project pins 5.x), never inside vla_ros. The driver (vla_ros/policy/peer_bench.py) gives the VLM's
dimensions as JSON, so both sides build the same SigLIP + pixel shuffle + Llama from one set of
numbers. Protocol, one line each way: the worker prints `ready {json}` once built, then answers
every `call STEPS` with `done` after one `predict_action_chunk` decoded in STEPS Euler steps, and
exits on `quit` or end of input.

PyPI has no CPU build of torchvision for the CPU torch (its wheels link libtorch_cuda), and
LeRobot imports torchvision only for dataset transforms, which inference never runs: the worker
puts a stand-in module in its place (`_stand_in_torchvision`), so a code path that did use it
would fail loudly rather than measure something else.

No weights, tokenizer or processor files exist offline: the VLM is built from its config (as
SmolVLA does with load_vlm_weights false), the instruction arrives as token ids (what LeRobot's
preprocessor would hand the policy), and the processor, of which SmolVLA only reads two special
token ids, is a stand-in.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import sys
import tempfile
import types


class _Absent:
    """What the torchvision stand-in hands out: usable as a base class or a decorator at import
    time, failing when anything calls it."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision is not installed in the peer interpreter (see the module docstring)")

    def __init_subclass__(cls, **kwargs):
        pass


def _absent_attribute(name: str):
    if name.startswith("__"):  # module metadata (__file__, __path__, ...): absent, as Python expects
        raise AttributeError(name)
    return _Absent


def _stand_in_torchvision() -> None:
    """Register modules named torchvision[.transforms[.v2|.functional]] whose attributes are _Absent."""
    def module(name: str) -> types.ModuleType:
        stand_in = types.ModuleType(name)
        stand_in.__spec__ = importlib.machinery.ModuleSpec(name, None)
        stand_in.__getattr__ = _absent_attribute
        sys.modules[name] = stand_in
        return stand_in

    root = module("torchvision")
    root.transforms = module("torchvision.transforms")
    root.transforms.v2 = module("torchvision.transforms.v2")
    root.transforms.functional = module("torchvision.transforms.functional")
    root.transforms.v2.functional = module("torchvision.transforms.v2.functional")


def build(args, dims: dict):
    import torch
    from transformers import LlamaConfig, SmolVLMConfig

    import lerobot.policies.smolvla.smolvlm_with_expert as with_expert
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE

    model_dir = tempfile.mkdtemp(prefix="smolvlm2_config_")
    SmolVLMConfig(vision_config=dims["vision"], text_config=LlamaConfig(**dims["text"]).to_dict(),
                  scale_factor=dims["scale_factor"], image_token_id=dims["image_token_id"]).save_pretrained(model_dir)
    tokenizer = types.SimpleNamespace(fake_image_token_id=0, global_image_token_id=1)
    with_expert.AutoProcessor = types.SimpleNamespace(from_pretrained=lambda *_a, **_k: types.SimpleNamespace(
        tokenizer=tokenizer))

    cameras = [f"observation.images.cam_{k}" for k in range(args.cameras)]
    height, width = args.image_hw
    config = SmolVLAConfig(
        vlm_model_name=model_dir, load_vlm_weights=False, num_vlm_layers=args.num_vlm_layers, device="cpu",
        input_features={OBS_STATE: PolicyFeature(type=FeatureType.STATE, shape=(args.state_dim,)),
                        **{key: PolicyFeature(type=FeatureType.VISUAL, shape=(3, height, width)) for key in cameras}},
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(args.state_dim,))},
    )
    torch.manual_seed(0)
    policy = SmolVLAPolicy(config).eval()
    if args.dtype == "bfloat16":  # the VLM only, as SmolVLA loads pretrained VLM weights (the rest stays fp32)
        policy.model.vlm_with_expert.vlm.to(torch.bfloat16)
    policy.reset()
    generator = torch.Generator().manual_seed(0)
    batch = {OBS_STATE: torch.zeros(1, args.state_dim),
             OBS_LANGUAGE_TOKENS: torch.randint(2, min(1000, dims["text"]["vocab_size"]), (1, args.text_tokens),
                                                generator=generator),
             OBS_LANGUAGE_ATTENTION_MASK: torch.ones(1, args.text_tokens, dtype=torch.bool),
             **{key: torch.rand(1, 3, height, width, generator=generator) for key in cameras}}
    parameters = sum(p.numel() for p in policy.parameters())
    return policy, batch, {"parameters": parameters, "dtype": args.dtype, "chunk_size": config.chunk_size,
                           "default_num_steps": config.num_steps, "num_vlm_layers": args.num_vlm_layers,
                           "resize_imgs_with_padding": list(config.resize_imgs_with_padding),
                           "expert_width_multiplier": config.expert_width_multiplier,
                           "attention_mode": config.attention_mode}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", required=True, help="the VLM's dimensions as JSON")
    parser.add_argument("--cameras", type=int, default=1)
    parser.add_argument("--image-hw", type=int, nargs=2, default=(480, 640))
    parser.add_argument("--state-dim", type=int, default=14)
    parser.add_argument("--text-tokens", type=int, required=True)
    parser.add_argument("--num-vlm-layers", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    # transformers first, with every class SmolVLA uses: it records that torchvision is absent
    # and never reaches for it
    import transformers
    from transformers import AutoModel, AutoModelForImageTextToText, GenerationMixin, SmolVLMForConditionalGeneration  # noqa: F401

    try:
        import torchvision  # noqa: F401
    except ImportError:
        _stand_in_torchvision()
    policy, batch, facts = build(args, json.loads(args.dims))
    import lerobot

    facts.update(lerobot=lerobot.__version__, transformers=transformers.__version__, torch=torch.__version__)
    print("ready " + json.dumps(facts), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        policy.config.num_steps = int(command[1])
        policy.reset()
        with torch.inference_mode():
            policy.predict_action_chunk(dict(batch))
        print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
