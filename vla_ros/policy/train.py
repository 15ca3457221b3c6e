"""A generic trainer for flow-matching policies (fine-tuning CLI, sim-proof training, the toy).

Model contract (duck-typed, checked at construction):
- `model.compute_loss(batch, generator) -> scalar tensor`: the training loss of one batch; every
  random draw (noise, flow time) should come from `generator` so that a run is reproducible and
  resumable.
- `model.parameter_groups() -> {"backbone": [params], "head": [params]}`: the backbone trains at
  `lr * backbone_lr_scale` (or not at all with `freeze_backbone`), the head at `lr`.

Schedule: linear warmup to the peak LR, then cosine decay to `lr * min_lr_ratio` at `total_steps`.
The LR is a pure function of the step, so resuming needs only the step counter.

Checkpoints are atomic: everything is written into a hidden temporary directory next to the final
one, which is renamed into place only when complete; a failure removes the temporary directory,
so `checkpoints/step_XXXXXXXX` either exists complete or not at all. A checkpoint holds the
deployable weights (written by `save_fn`, EMA weights when EMA is on) and `trainer_state.pt`
(raw weights, optimizer, EMA, step and RNG states) for an exact resume.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

SaveFn = Callable[[nn.Module, Path], None]
TRAINER_STATE = "trainer_state.pt"
LOG_FILE = "train_log.jsonl"
CHECKPOINT_PREFIX = "step_"


@dataclass
class TrainConfig:
    """Optimisation hyper-parameters; defaults are the paper's small-model recipe."""

    lr: float = 1e-4
    warmup_steps: int = 1000
    total_steps: int = 50_000
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of the peak LR
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float | None = 0.99  # None disables EMA
    backbone_lr_scale: float = 0.1
    freeze_backbone: bool = False
    batch_size: int = 64
    seed: int = 0
    log_interval: int = 10
    checkpoint_interval: int = 1000  # 0 disables periodic checkpoints
    keep_checkpoints: int = 2  # 0 keeps all
    bf16: bool = True  # autocast to bfloat16 when training on CUDA
    distributed: str = "ddp"  # under torchrun: "ddp" (replicas) or "fsdp" (torch's fully_shard: sharded state)
    device: str = "auto"  # "auto" = cuda when available, else cpu

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        checks = [
            (self.lr > 0, "lr must be > 0"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.total_steps >= 1, "total_steps must be >= 1"),
            (0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must be in [0, 1]"),
            (all(0.0 <= b < 1.0 for b in self.betas), "betas must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.grad_clip > 0, "grad_clip must be > 0"),
            (self.ema_decay is None or 0.0 < self.ema_decay < 1.0, "ema_decay must be in (0, 1) or None"),
            (self.backbone_lr_scale >= 0, "backbone_lr_scale must be >= 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.log_interval >= 1, "log_interval must be >= 1"),
            (self.checkpoint_interval >= 0, "checkpoint_interval must be >= 0"),
            (self.keep_checkpoints >= 0, "keep_checkpoints must be >= 0"),
            (self.distributed in ("ddp", "fsdp"), "distributed must be 'ddp' or 'fsdp'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {message}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {unknown}")
        return cls(**data)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak LR used by optimizer step `step` (0-based)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.total_steps - config.warmup_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


def save_state_dict(model: nn.Module, directory: Path) -> None:
    """Default `save_fn`: the model's weights as model.safetensors (shared tensors stored once)."""
    from safetensors.torch import save_model

    save_model(model, str(Path(directory) / "model.safetensors"))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _batch_size(batch: Any) -> int:
    """Leading dim of the first tensor in the batch (for samples/s)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        size = _batch_size(value)
        if size:
            return size
    return 0


class Trainer:
    """AdamW + warmup/cosine + grad clipping + EMA, with JSON-lines logs and atomic checkpoints."""

    def __init__(self, model: nn.Module, config: TrainConfig, output_dir: str | Path,
                 save_fn: SaveFn = save_state_dict):
        for method in ("compute_loss", "parameter_groups"):
            if not callable(getattr(model, method, None)):
                raise TypeError(f"the model must implement {method}() (see vla_ros.policy.train)")
        self.config = config
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.save_fn = save_fn
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.step = 0

        groups = model.parameter_groups()
        if set(groups) != {"backbone", "head"}:
            raise ValueError(f"parameter_groups() must return keys 'backbone' and 'head', got {sorted(groups)}")
        if config.freeze_backbone:
            for p in groups["backbone"]:
                p.requires_grad_(False)
        grouped = {id(p) for ps in groups.values() for p in ps}
        missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in grouped]
        if missing:
            raise ValueError(f"trainable parameters missing from parameter_groups(): {missing[:5]}")
        scales = {"backbone": config.backbone_lr_scale, "head": 1.0}
        param_groups = []
        for name, params in groups.items():
            trainable = [p for p in params if p.requires_grad]
            if trainable and scales[name] > 0:
                param_groups.append({"params": trainable, "name": name, "lr_scale": scales[name],
                                     "lr": config.lr * scales[name]})
        if not param_groups:
            raise ValueError("no trainable parameters (frozen backbone and an empty head group?)")
        self.trainable = [p for g in param_groups for p in g["params"]]
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(param_groups, lr=config.lr, betas=config.betas,
                                           weight_decay=config.weight_decay, fused=fused)
        names = {id(p): n for n, p in model.named_parameters()}
        self.ema: dict[str, torch.Tensor] | None = None
        if config.ema_decay is not None:
            self.ema = {names[id(p)]: p.detach().float().clone() for p in self.trainable}
        self._ema_params = [(names[id(p)], p) for p in self.trainable]
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        torch.manual_seed(config.seed)
        random.seed(config.seed)

    # ---------------------------------------------------------------- training

    def current_lr(self) -> float:
        """Peak-scaled LR of the head for the next step."""
        return self.config.lr * lr_factor(self.step, self.config)

    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimizer step; returns the loss, the head LR used and the pre-clip gradient norm."""
        self.model.train()
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        batch = _to_device(batch, self.device)
        use_bf16 = self.config.bf16 and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = self.model.compute_loss(batch, self.generator)
        if loss.dim() != 0:
            raise ValueError(f"compute_loss must return a scalar, got shape {tuple(loss.shape)}")
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.step}")
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._update_ema()
        self.step += 1
        return {"loss": float(loss.detach()), "lr": lr, "grad_norm": float(grad_norm)}

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        decay = self.config.ema_decay
        for name, p in self._ema_params:
            self.ema[name].lerp_(p.detach().float(), 1.0 - decay)

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[nn.Module]:
        """Temporarily load the EMA weights into the model (no-op without EMA)."""
        if self.ema is None:
            yield self.model
            return
        with torch.no_grad():
            backup = [p.detach().clone() for _, p in self._ema_params]
            for name, p in self._ema_params:
                p.copy_(self.ema[name])
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for (_, p), saved in zip(self._ema_params, backup):
                    p.copy_(saved)

    def fit(self, batches: Iterable[Any], steps: int | None = None, progress: bool = True) -> list[dict[str, float]]:
        """Train until the step counter reaches `steps` (default: config.total_steps).

        `steps` is an absolute target, so calling fit again after `resume()` finishes the same run.
        Logs every `log_interval` steps to train_log.jsonl, checkpoints every
        `checkpoint_interval` steps and at the end. Returns the logged records.
        """
        from tqdm import tqdm

        target = self.config.total_steps if steps is None else steps
        records: list[dict[str, float]] = []
        iterator = iter(batches)
        bar = tqdm(total=target, initial=self.step, disable=not progress, dynamic_ncols=True, desc="train")
        window_start, window_samples = time.perf_counter(), 0
        saved_at = -1
        with open(self.output_dir / LOG_FILE, "a") as log:
            while self.step < target:
                try:
                    batch = next(iterator)
                except StopIteration:
                    raise ValueError(f"the batch iterator ran out at step {self.step} of {target}") from None
                metrics = self.train_step(batch)
                window_samples += _batch_size(batch)
                bar.update(1)
                if self.step % self.config.log_interval == 0 or self.step == target:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    record = {"step": self.step, **metrics, "samples_per_s": window_samples / elapsed,
                              "time": time.time()}
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    records.append(record)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                                    sps=f"{record['samples_per_s']:.0f}")
                    window_start, window_samples = time.perf_counter(), 0
                interval = self.config.checkpoint_interval
                if interval and self.step % interval == 0:
                    self.save_checkpoint()
                    saved_at = self.step
        bar.close()
        if self.config.checkpoint_interval and saved_at != self.step and self.step > 0:
            self.save_checkpoint()
        return records

    # ------------------------------------------------------------ checkpoints

    @property
    def checkpoint_root(self) -> Path:
        return self.output_dir / "checkpoints"

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (temporary directories are hidden and skipped)."""
        if not self.checkpoint_root.is_dir():
            return []
        found = [p for p in self.checkpoint_root.iterdir()
                 if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / TRAINER_STATE).is_file()]
        return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))

    def _trainer_state(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
               "generator": self.generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema,
            "rng": rng,
        }

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step_XXXXXXXX atomically; returns its path."""
        self.checkpoint_root.mkdir(parents=True, exist_ok=True)
        final = self.checkpoint_root / f"{CHECKPOINT_PREFIX}{self.step:08d}"
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=self.checkpoint_root))
        try:
            with self.ema_weights() as model:
                self.save_fn(model, staging)
            torch.save(self._trainer_state(), staging / TRAINER_STATE)
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._prune_checkpoints()
        return final

    def _prune_checkpoints(self) -> None:
        keep = self.config.keep_checkpoints
        if keep:
            for old in self.checkpoints()[:-keep]:
                shutil.rmtree(old, ignore_errors=True)

    def resume(self, checkpoint: str | Path | None = None) -> bool:
        """Restore from `checkpoint` (default: the newest in output_dir); False if there is none."""
        if checkpoint is None:
            found = self.checkpoints()
            if not found:
                return False
            checkpoint = found[-1]
        path = Path(checkpoint) / TRAINER_STATE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not a trainer checkpoint")
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if (self.ema is None) != (state["ema"] is None):
            raise ValueError("EMA setting of the checkpoint does not match TrainConfig.ema_decay")
        if self.ema is not None:
            self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.step = int(state["step"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        random.setstate(_as_python_random_state(rng["python"]))
        self.generator.set_state(rng["generator"].cpu())
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        return True


def _as_python_random_state(state: Any) -> tuple:
    """random.setstate needs tuples; a serialised state may come back with lists."""
    version, internal, gauss = state
    return version, tuple(internal), gauss
