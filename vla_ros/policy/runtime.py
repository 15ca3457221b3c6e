"""Inference runtime: one observation in, one denormalised action chunk out, at control rate.

predict(images, state) validates the observation, copies the camera images into reused host
buffers, preprocesses all cameras on the device in one batched call, computes the VLM prefix ONCE
and runs 1 (default: the checkpoint's recommended count) or N Euler steps of the action head over
it. Deterministic mode starts from zero noise (replay comparisons, tests); otherwise the noise
comes from the runtime's own seeded generator, written into a preallocated buffer and shaped by the
sampling options of vla_ros.policy.noise (scale, correlation along the horizon, one draw per
episode). By default every call draws fresh noise with the correlation the checkpoint recommends
(white noise for checkpoints that recommend none, as before the options existed).

A checkpoint trained with an action prefix (config.action_prefix_steps > 0) also takes the targets
the robot will execute anyway from the observation's capture on (`action_prefix`, absolute joint
targets): they are held fixed and the chunk is decoded to continue them (flow.py), so that
consecutive chunks agree instead of each starting from its own noise draw.

On CUDA the model runs in bfloat16 (the normaliser stays float32), and the fixed-shape part
(pixels + tokens + state + noise -> actions) is compiled with torch.compile(mode="reduce-overhead"),
i.e. captured as CUDA graphs, and warmed up at construction so the first real tick is not slow.
Compiled graphs keep the instruction padded to max_text_tokens (one shape for every instruction);
eager runs drop the padding, since padded tokens are masked keys that change nothing but the cost.

One lock serialises predict and set_instruction, so a runtime may be shared with a worker thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from vla_ros.policy import checkpoint as checkpoints
from vla_ros.policy.crop import crop_frames
from vla_ros.policy.delta import to_delta
from vla_ros.policy.model import VLAPolicy
from vla_ros.policy.noise import InitialNoise
from vla_ros.robot.profile import RobotProfile

WARMUP_CALLS = 3  # compile, record the CUDA graph, then one replay


class PolicyRuntime:
    """A loaded checkpoint ready to act; see the module docstring."""

    def __init__(self, checkpoint_dir: str | os.PathLike, device: str | torch.device = "cpu",
                 steps: int | None = None, deterministic: bool = False, seed: int = 0,
                 dtype: torch.dtype | None = None, compile: bool | None = None,
                 profile: RobotProfile | None = None, pad_text: bool | None = None, noise_scale: float | None = None,
                 noise_correlation: float | None = None, noise_per_episode: bool = False):
        """profile: if given, refuse a checkpoint that does not fit that robot (dims, cameras).
        dtype/compile default to bfloat16 + compiled on CUDA, float32 + eager elsewhere.
        pad_text: keep the instruction padded to max_text_tokens (default: only when compiled).
        noise_*: the sampling options of vla_ros.policy.noise.InitialNoise (ignored when deterministic);
        noise_scale / noise_correlation None: the checkpoint's recommended_noise_scale / _correlation."""
        self.checkpoint_dir = Path(checkpoint_dir)
        policy = checkpoints.load_checkpoint(self.checkpoint_dir, profile=profile)
        self._setup(policy, device, steps, deterministic, seed, dtype, compile, pad_text,
                    (noise_scale, noise_correlation, noise_per_episode))

    @classmethod
    def from_policy(cls, policy: VLAPolicy, device: str | torch.device = "cpu", steps: int | None = None,
                    deterministic: bool = False, seed: int = 0, dtype: torch.dtype | None = None,
                    compile: bool | None = None, pad_text: bool | None = None, noise_scale: float | None = None,
                    noise_correlation: float | None = None, noise_per_episode: bool = False) -> "PolicyRuntime":
        """A runtime around an in-memory policy (benchmarks, training-time evaluation); the
        runtime takes the policy over: it is moved to `device` and its backbone/head cast to dtype."""
        runtime = cls.__new__(cls)
        runtime.checkpoint_dir = None
        runtime._setup(policy, device, steps, deterministic, seed, dtype, compile, pad_text,
                       (noise_scale, noise_correlation, noise_per_episode))
        return runtime

    def _setup(self, policy, device, steps, deterministic, seed, dtype, compile, pad_text, noise_options) -> None:
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
        self.config = policy.config
        self.steps = self._check_steps(self.config.recommended_steps if steps is None else steps)
        self.deterministic = bool(deterministic)
        self.policy = policy.eval().to(self.device)
        # The normaliser stays float32: denormalised joint targets need the precision.
        self.policy.backbone.cast(self.dtype)
        self.policy.head.to(self.dtype)
        self._lock = threading.Lock()
        self._generator = torch.Generator(self.device).manual_seed(seed)
        scale, correlation, per_episode = noise_options
        if correlation is None:
            correlation = self.config.recommended_noise_correlation
        if scale is None:
            scale = self.config.recommended_noise_scale
        self.initial_noise = InitialNoise(self._generator, scale, correlation, per_episode)
        self._pin = cuda
        config = self.config
        self._noise = torch.zeros(1, config.horizon, config.action_dim, device=self.device)
        self._state_host = self._host_tensor((1, config.real_state_dim), torch.float32)
        self._actions_host = torch.empty(config.horizon, config.real_action_dim, dtype=torch.float32)
        # Fixed-shape prefix buffers (a compiled graph sees one shape whatever the prefix length).
        self._given = torch.zeros(1, config.horizon, dtype=torch.bool, device=self.device)
        self._given_raw = torch.zeros(1, config.horizon, config.real_action_dim, device=self.device)
        self._image_hosts: dict[tuple, torch.Tensor] = {}
        self._text: tuple[torch.Tensor, torch.Tensor] | None = None
        self.instruction: str | None = None
        use_compile = cuda if compile is None else bool(compile)
        self.pad_text = use_compile if pad_text is None else bool(pad_text)
        self._core = torch.compile(self._forward, mode="reduce-overhead", dynamic=False) if use_compile \
            else self._forward
        self._prefix_core = torch.compile(self._prefix, mode="reduce-overhead", dynamic=False) if use_compile \
            else self._prefix
        if cuda:
            self._warm_up()

    # ---- public API --------------------------------------------------------------------------
    @property
    def camera_keys(self) -> tuple[str, ...]:
        return self.config.camera_keys

    def check_compatible(self, profile: RobotProfile) -> None:
        """Raise CheckpointError (naming both sides) if this policy cannot drive `profile`."""
        checkpoints.check_compatible(self.config, profile)

    def set_instruction(self, text: str) -> None:
        """Tokenize the instruction once; every later predict reuses the tokens."""
        if not isinstance(text, str):
            raise ValueError(f"instruction must be a str, got {type(text).__name__}")
        with self._lock:
            ids, mask = self.policy.backbone.tokenize([text])
            if not self.pad_text:  # real tokens come first, padding after them
                length = max(1, int(mask.sum()))
                ids, mask = ids[:, :length], mask[:, :length]
            self._text = (ids.to(self.device), mask.to(self.device))
            self.instruction = text

    def new_episode(self) -> None:
        """A new episode starts (the node's enable): per-episode noise is drawn again on the next predict."""
        with self._lock:
            self.initial_noise.new_episode()

    @property
    def action_prefix_steps(self) -> int:
        """How many leading chunk entries predict() can take as given (0: this checkpoint takes none)."""
        return self.config.action_prefix_steps

    def prefix_steps_for(self, requested: int) -> int:
        """The prefix length to give: `requested` capped at what the checkpoint learnt; < 0: all of it
        (policy_node's and rollout's `action_prefix_steps`)."""
        return self.action_prefix_steps if requested < 0 else min(requested, self.action_prefix_steps)

    def predict(self, images: Mapping[str, np.ndarray], state: np.ndarray, steps: int | None = None,
                action_prefix: np.ndarray | None = None) -> np.ndarray:
        """images: camera key -> HxWx3 uint8; state: raw (state dims,) -> (horizon, action dims) float64.

        action_prefix: (k, action dims) absolute targets for the chunk's first k entries (from the
        observation's capture on, one tick apart), kept as they are in the returned chunk; entries
        beyond action_prefix_steps are not used. Only for checkpoints trained with a prefix."""
        steps = self.steps if steps is None else self._check_steps(steps)
        state_array = self._check_state(state)
        arrays = self._check_images(images)
        prefix = None if action_prefix is None else self._check_action_prefix(action_prefix)
        with self._lock, torch.inference_mode():
            text = self._require_instruction()
            pixels = self._pixels(arrays)
            self._state_host.copy_(torch.from_numpy(state_array))
            state_tensor = self._state_host.to(self.device, non_blocking=self._pin)
            if self.deterministic:
                self._noise.zero_()
            else:
                self.initial_noise.fill(self._noise)
            given = None
            if self.action_prefix_steps:
                self._given.zero_()
                if prefix is not None and len(prefix):
                    self._given[0, :len(prefix)] = True
                    self._given_raw[0, :len(prefix)] = torch.from_numpy(prefix).to(self.device)
                given = (self._given, self._given_raw)
            actions = self._core(pixels, text[0], text[1], state_tensor, self._noise, steps, given)
            self._actions_host.copy_(actions[0])
            return self._actions_host.numpy().astype(np.float64)

    def predict_prefix(self, images: Mapping[str, np.ndarray]) -> None:
        """Preprocess + VLM prefix only, synchronised: the floor a one-step predict is measured against."""
        arrays = self._check_images(images)
        with self._lock, torch.inference_mode():
            text = self._require_instruction()
            self._prefix_core(self._pixels(arrays), text[0], text[1])
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

    # ---- internals ---------------------------------------------------------------------------
    def _forward(self, pixels, text_ids, text_mask, state, noise, steps: int, given=None) -> torch.Tensor:
        prefix = self.policy.encode_pixels(pixels, text_ids, text_mask)
        given_mask = given_values = None
        if given is not None:
            given_mask, raw = given
            if self.config.delta_actions:
                raw = to_delta(raw, state, self.policy.delta_source, self.policy.delta_mask)
            given_values = self.policy.prepare_actions(raw)
        normalised = self.policy.sample(prefix, self.policy.prepare_state(state), steps, noise, given_mask, given_values)
        return self.policy.finish_actions(normalised, state)  # delta actions: offsets from state

    def _prefix(self, pixels, text_ids, text_mask) -> torch.Tensor:
        return self.policy.encode_pixels(pixels, text_ids, text_mask).tokens

    def _warm_up(self) -> None:
        config = self.config
        size = config.image_size
        pixels = torch.zeros(len(config.camera_keys), 3, size, size, device=self.device)
        ids, mask = (t.to(self.device) for t in self.policy.backbone.tokenize([""]))
        state = torch.zeros(1, config.real_state_dim, device=self.device)
        with torch.inference_mode():
            given = (self._given, self._given_raw) if self.action_prefix_steps else None
            for _ in range(WARMUP_CALLS):
                self._core(pixels, ids, mask, state, self._noise, self.steps, given)
                self._prefix_core(pixels, ids, mask)
        torch.cuda.synchronize(self.device)

    def _host_tensor(self, shape, dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=self._pin)

    def _pixels(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """All cameras -> (C, 3, S, S) on the device: one host copy per camera into a reused
        (pinned) buffer, one transfer and one preprocessing call per distinct image size."""
        groups: dict[tuple, list[int]] = {}
        for index, array in enumerate(arrays):
            groups.setdefault(array.shape, []).append(index)
        parts, order = [], []
        for shape, indices in groups.items():
            key = (len(indices), *shape)
            host = self._image_hosts.get(key)
            if host is None:
                host = self._image_hosts[key] = self._host_tensor(key, torch.uint8)
            host_view = host.numpy()
            for slot, index in enumerate(indices):
                np.copyto(host_view[slot], arrays[index])
            parts.append(self.policy.backbone.preprocess(host.to(self.device, non_blocking=self._pin)))
            order.extend(indices)
        if len(parts) == 1:
            return parts[0]
        pixels = torch.cat(parts)
        return pixels[torch.as_tensor(np.argsort(order), device=self.device)]

    def _require_instruction(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._text is None:
            raise RuntimeError("no instruction: call set_instruction(text) before predict")
        return self._text

    @staticmethod
    def _check_steps(steps) -> int:
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"number of decoding steps must be a positive integer, got {steps!r}")
        return int(steps)

    def _check_state(self, state) -> np.ndarray:
        expected = self.config.real_state_dim
        try:
            array = np.asarray(state, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise ValueError(f"state must be a numeric array of shape ({expected},): {error}") from error
        if array.shape != (expected,):
            raise ValueError(f"state must have shape ({expected},) ({', '.join(self.config.state_names[:3])}, ...), "
                             f"got {array.shape}")
        if not np.isfinite(array).all():
            bad = [self.config.state_names[i] for i in np.flatnonzero(~np.isfinite(array))]
            raise ValueError(f"state has non-finite values in {bad}")
        return array.reshape(1, expected)

    def _check_action_prefix(self, prefix) -> np.ndarray:
        if not self.action_prefix_steps:
            raise ValueError("this checkpoint was not trained with an action prefix (action_prefix_steps is 0)")
        dims = self.config.real_action_dim
        try:
            array = np.asarray(prefix, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise ValueError(f"action_prefix must be a numeric (k, {dims}) array: {error}") from error
        if array.ndim != 2 or array.shape[1] != dims:
            raise ValueError(f"action_prefix must have shape (k, {dims}), got {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError("action_prefix has non-finite values")
        return array[: self.action_prefix_steps]

    def _check_images(self, images) -> list[np.ndarray]:
        if not isinstance(images, Mapping):
            raise ValueError(f"images must be a mapping camera key -> HxWx3 uint8 array, got {type(images).__name__}")
        missing = [key for key in self.config.camera_keys if key not in images]
        if missing:
            raise ValueError(f"missing camera images {missing}: this policy needs {list(self.config.camera_keys)}, "
                             f"got {sorted(images)}")
        arrays = []
        for key in self.config.camera_keys:
            image = images[key]
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                    or image.shape[2] != 3 or min(image.shape[:2]) < 1:
                described = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
                raise ValueError(f"camera '{key}': expected an HxWx3 uint8 array, got {described}")
            arrays.append(crop_frames(image, self.config.camera_crops.get(key)))
        return arrays
