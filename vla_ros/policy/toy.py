"""`vla-ros toy`: the paper's controlled experiment on a CPU, with no downloads.

Task: a 32x32 image is a 4x4 grid of glyphs drawn from K fixed random 8x8 bitmaps (plus pixel
noise); the target "action chunk" is the 16 glyph ids in row order, each id written as a fixed
random code vector in R^d (so the chunk is 16 x d). Decoding maps every predicted vector to the
nearest code; the metric is whole-sequence exact match.

The condition fully determines the target, which is the regime where a flow head can jump from
noise to the answer in one Euler step if training spends its samples near the noise end. The
experiment trains the same model (same init, same batches, same noise) with uniform flow times
(alpha = 1) and with shifted times (alpha > 1) and decodes each with 1 and with 10 Euler steps, the
10 steps both on the uniform time grid and on the grid shifted by the model's alpha.
Pixel noise sets the difficulty: without it every setting reaches 100 % and no effect can show.

Two levers on where the training samples go (docs/toy.md reports what they do):
- draws: several (t, noise) draws per image in each batch; the head's condition keys and values
  are computed once per image and shared by its draws (the block-causal head's cache).
- zero_time_fraction: the share of draws taken at t = 0 exactly, the only time a one-step decoder
  ever queries.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

from vla_ros.policy.flow import euler_sample, flow_loss, interpolate, sample_time, velocity_target
from vla_ros.policy.head import ActionHead, HeadConfig
from vla_ros.policy.train import Trainer, TrainConfig

GRID = 4
CELL = 8
SEQUENCE = GRID * GRID


@dataclass(frozen=True)
class GlyphTask:
    """K glyph bitmaps (K, 8, 8) in {0, 1}, their codes (K, d), and the pixel noise level."""

    glyphs: Tensor
    codes: Tensor
    pixel_noise: float

    @classmethod
    def create(cls, num_glyphs: int, code_dim: int, pixel_noise: float, seed: int) -> "GlyphTask":
        if num_glyphs < 2:
            raise ValueError(f"need at least 2 glyphs, got {num_glyphs}")
        if code_dim < 1:
            raise ValueError(f"code_dim must be >= 1, got {code_dim}")
        if pixel_noise < 0:
            raise ValueError(f"pixel_noise must be >= 0, got {pixel_noise}")
        g = torch.Generator().manual_seed(seed)
        glyphs = (torch.rand(num_glyphs, CELL, CELL, generator=g) < 0.5).float()
        codes = torch.randn(num_glyphs, code_dim, generator=g)
        codes = (codes - codes.mean(0)) / codes.std(0).clamp_min(1e-6)  # normalised actions
        return cls(glyphs, codes, pixel_noise)

    def sample(self, batch: int, generator: torch.Generator) -> dict[str, Tensor]:
        """images (B, 1, 32, 32), ids (B, 16), actions (B, 16, d)."""
        ids = torch.randint(len(self.glyphs), (batch, SEQUENCE), generator=generator)
        cells = self.glyphs[ids].view(batch, GRID, GRID, CELL, CELL)
        images = cells.permute(0, 1, 3, 2, 4).reshape(batch, 1, GRID * CELL, GRID * CELL)
        images = (images - 0.5) + self.pixel_noise * torch.randn(images.shape, generator=generator)
        return {"images": images, "ids": ids, "actions": self.codes[ids]}

    def decode(self, actions: Tensor) -> Tensor:
        """(B, 16, d) -> (B, 16) ids of the nearest codes."""
        distances = torch.cdist(actions.reshape(-1, actions.shape[-1]), self.codes)
        return distances.argmin(-1).view(actions.shape[:-1])


class GlyphPolicy(nn.Module):
    """A patch encoder (one token per grid cell) as the 'backbone' and an ActionHead on top."""

    def __init__(self, code_dim: int, encoder_dim: int, head: dict[str, int], alpha: float, draws: int = 1,
                 zero_time_fraction: float = 0.0):
        super().__init__()
        self.alpha = alpha
        self.draws = draws
        self.zero_time_fraction = zero_time_fraction
        self.encoder = nn.Sequential(nn.Conv2d(1, encoder_dim, CELL, stride=CELL), nn.GELU(),
                                     nn.Conv2d(encoder_dim, encoder_dim, 1))
        self.cell_position = nn.Parameter(torch.randn(1, SEQUENCE, encoder_dim))
        self.head = ActionHead(HeadConfig(condition_dim=encoder_dim, state_dim=1, action_dim=code_dim,
                                          horizon=SEQUENCE, **head))

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder(images).flatten(2).transpose(1, 2) + self.cell_position

    def _state(self, condition: Tensor) -> Tensor:
        """The toy has no robot; a constant state keeps the head's interface intact."""
        return condition.new_zeros(condition.shape[0], 1)

    def compute_loss(self, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        """Flow loss over `draws` (t, noise) draws per image, all sharing one condition cache."""
        actions = batch["actions"].repeat_interleave(self.draws, dim=0)
        condition = self.encode(batch["images"])
        cache = self.head.encode_condition(condition, None, self._state(condition)).repeat_interleave(self.draws)
        noise = torch.randn(actions.shape, generator=generator, device=actions.device)
        t = sample_time(actions.shape[0], self.alpha, generator=generator, device=actions.device)
        if self.zero_time_fraction > 0:
            at_zero = torch.rand(t.shape, generator=generator, device=t.device) < self.zero_time_fraction
            t = t.masked_fill(at_zero, 0.0)
        velocity = self.head.step(cache, interpolate(actions, noise, t), t)
        return flow_loss(velocity, velocity_target(actions, noise))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"backbone": [*self.encoder.parameters(), self.cell_position], "head": list(self.head.parameters())}

    @torch.no_grad()
    def generate(self, images: Tensor, noise: Tensor, steps: int, grid_alpha: float = 1.0) -> Tensor:
        """Euler decoding on time_grid(steps, grid_alpha), the condition cached once."""
        condition = self.encode(images)
        cache = self.head.encode_condition(condition, None, self._state(condition))
        return euler_sample(lambda x, t: self.head.step(cache, x, t), noise, steps, alpha=grid_alpha)


def _batches(task: GlyphTask, batch_size: int, seed: int) -> Iterator[dict[str, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield task.sample(batch_size, generator)


def decoders(steps: list[int], alpha: float) -> dict[str, tuple[int, float]]:
    """Name -> (Euler steps, grid alpha): every step count on the uniform grid ("10"), and
    multi-step counts also on the grid shifted by the training alpha ("10@alpha")."""
    named = {str(n): (n, 1.0) for n in steps}
    if alpha > 1.0:
        named.update({f"{n}@alpha": (n, alpha) for n in steps if n > 1})
    return named


def evaluate(model: GlyphPolicy, task: GlyphTask, data: dict[str, Tensor], steps: list[int],
             seed: int, chunk: int = 256) -> dict[str, dict[str, float]]:
    """Exact match and per-glyph accuracy for each decoder of `decoders` (same noise for all)."""
    model.eval()
    noise = torch.randn(data["actions"].shape, generator=torch.Generator().manual_seed(seed))
    results: dict[str, dict[str, float]] = {"exact_match": {}, "glyph_accuracy": {}}
    for name, (n, grid_alpha) in decoders(steps, model.alpha).items():
        correct = []
        for start in range(0, len(noise), chunk):
            generated = model.generate(data["images"][start:start + chunk], noise[start:start + chunk], n, grid_alpha)
            correct.append(task.decode(generated) == data["ids"][start:start + chunk])
        correct_all = torch.cat(correct)
        results["exact_match"][name] = float(correct_all.all(dim=1).float().mean())
        results["glyph_accuracy"][name] = float(correct_all.float().mean())
    return results


@dataclass
class ToySettings:
    alphas: tuple[float, ...] = (1.0, 3.0, 4.0, 8.0)
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 50
    num_glyphs: int = 10
    code_dim: int = 2
    pixel_noise: float = 0.5
    encoder_dim: int = 32
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 128
    eval_size: int = 1000
    decode_steps: tuple[int, ...] = (1, 10)
    draws: int = 1  # (t, noise) draws per image per batch
    zero_time_fraction: float = 0.0  # share of draws at t = 0
    seed: int = 0


# Two alphas and a shorter run: well above chance, in well under a minute on an idle 2-core CPU.
QUICK = dict(alphas=(1.0, 4.0), steps=400, eval_size=100)


def run_alpha(alpha: float, settings: ToySettings, task: GlyphTask, eval_data: dict[str, Tensor],
              log_dir: Path, progress: bool) -> dict:
    """Train one model with time shift `alpha` and evaluate it; identical init, data and noise."""
    torch.manual_seed(settings.seed)
    head = dict(width=settings.width, depth=settings.depth, heads=settings.heads, mlp_dim=settings.mlp_dim)
    model = GlyphPolicy(settings.code_dim, settings.encoder_dim, head, alpha, settings.draws,
                        settings.zero_time_fraction)
    config = TrainConfig(lr=settings.lr, warmup_steps=settings.warmup_steps, total_steps=settings.steps,
                         min_lr_ratio=0.1, weight_decay=0.0, ema_decay=0.99, backbone_lr_scale=1.0,
                         batch_size=settings.batch_size, seed=settings.seed,
                         log_interval=max(1, settings.steps // 50), checkpoint_interval=0, device="cpu")
    trainer = Trainer(model, config, log_dir)
    started = time.perf_counter()
    records = trainer.fit(_batches(task, settings.batch_size, settings.seed + 1), settings.steps, progress=progress)
    train_seconds = time.perf_counter() - started
    with trainer.ema_weights():
        metrics = evaluate(model, task, eval_data, list(settings.decode_steps), seed=settings.seed + 3)
    return {"alpha": alpha, **metrics, "final_loss": records[-1]["loss"], "train_seconds": train_seconds,
            "loss_curve": [[r["step"], r["loss"]] for r in records]}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    names = list(dict.fromkeys(name for r in results for name in r["exact_match"]))
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(max(11, 5 + 0.5 * len(results)), 5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [k + (i - (len(names) - 1) / 2) * width for k in range(len(results))]
        steps, _, shifted = name.partition("@")
        label = f"{steps} Euler step(s)" + (", grid shifted by alpha" if shifted else "")
        bars.bar(xs, [100 * r["exact_match"].get(name, 0.0) for r in results], width, label=label)
    labels = [f"{r['variant']}\nalpha={r['alpha']:g}" for r in results]
    bars.set_xticks(range(len(results)), labels, rotation=90, fontsize=7)
    bars.set_ylabel("whole-sequence exact match (%)")
    bars.set_title("held-out exact match")
    bars.legend()
    for r in results:
        steps, losses = zip(*r["loss_curve"])
        curves.plot(steps, losses, label=f"{r['variant']}, alpha={r['alpha']:g}")
    curves.set_yscale("log")
    curves.set_xlabel("step")
    curves.set_ylabel("flow loss (train batch)")
    curves.set_title("training loss")
    curves.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# Named changes to the training recipe, compared by `vla-ros toy --variants ...` (docs/toy.md).
# A variant that names its own alphas runs at those only (the sweep has to fit a shared CPU).
VARIANTS: dict[str, dict] = {
    "baseline": {},
    "draws4_same_compute": dict(draws=4, batch_size=16, alphas=(8.0,)),  # 4 draws per image, as many head samples
    "zero_time_25pct": dict(zero_time_fraction=0.25, alphas=(8.0,)),  # a quarter of the draws at t = 0
    "zero_time_50pct": dict(zero_time_fraction=0.5, alphas=(8.0,)),
    "zero_time_100pct": dict(zero_time_fraction=1.0, alphas=(8.0,)),  # one-step regression: no longer a flow
    "budget_4x": dict(steps=3200, alphas=(1.0, 8.0)),  # 4x the training steps
    "budget_4x_zero_time_75pct": dict(steps=3200, zero_time_fraction=0.75, alphas=(8.0,)),
}


def run(settings: ToySettings, output_dir: Path, progress: bool = True, variants: tuple[str, ...] = ("baseline",)) -> dict:
    """Train and evaluate every (variant, alpha) on the same task and held-out set; write the report."""
    output_dir.mkdir(parents=True, exist_ok=True)
    task = GlyphTask.create(settings.num_glyphs, settings.code_dim, settings.pixel_noise, settings.seed)
    eval_data = task.sample(settings.eval_size, torch.Generator().manual_seed(settings.seed + 2))
    report = {
        "task": "4x4 grid of random glyphs -> 16 glyph codes in row order",
        "settings": asdict(settings),
        "variants": {name: VARIANTS[name] for name in variants},
        "chance": {"glyph_accuracy": 1.0 / settings.num_glyphs,
                   "exact_match": math.pow(1.0 / settings.num_glyphs, SEQUENCE)},
        "results": [],
    }
    for variant in variants:
        varied = replace(settings, **VARIANTS[variant])
        varied.warmup_steps = min(varied.warmup_steps, varied.steps)
        for alpha in varied.alphas:
            with tempfile.TemporaryDirectory(dir=output_dir) as log_dir:
                result = {"variant": variant, **run_alpha(alpha, varied, task, eval_data, Path(log_dir), progress)}
            report["results"].append(result)
            summary = ", ".join(f"{name} step(s) {100 * value:.1f}%" for name, value in result["exact_match"].items())
            print(f"{variant}, alpha={alpha:g}: exact match {summary} ({result['train_seconds']:.0f} s)", flush=True)
            # Written after every run, so an interrupted sweep keeps what it measured.
            (output_dir / "toy_report.json").write_text(json.dumps(report, indent=2))
    plot(report, output_dir / "toy_report.png")
    return report


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _alpha(text: str) -> float:
    value = float(text)
    if not value >= 1.0:
        raise argparse.ArgumentTypeError(f"alpha must be >= 1, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    defaults = ToySettings()
    parser = argparse.ArgumentParser(prog="vla-ros toy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("toy_output"))
    parser.add_argument("--quick", action="store_true", help="a smaller model and run (about a minute)")
    parser.add_argument("--steps", type=_positive_int, help=f"training steps per alpha (default {defaults.steps})")
    parser.add_argument("--alphas", type=_alpha, nargs="+", help=f"time shifts (default {list(defaults.alphas)})")
    parser.add_argument("--batch-size", type=_positive_int)
    parser.add_argument("--eval-size", type=_positive_int)
    parser.add_argument("--pixel-noise", type=float, help="difficulty: std of the pixel noise")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--draws", type=_positive_int, help="(t, noise) draws per image per batch (default 1)")
    parser.add_argument("--zero-time-fraction", type=float, help="share of draws at t = 0 (default 0)")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["baseline"],
                        help="training recipes to compare, each at every alpha (default: baseline)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.pixel_noise is not None and args.pixel_noise < 0:
        parser.error("--pixel-noise must be >= 0")
    if args.zero_time_fraction is not None and not 0.0 <= args.zero_time_fraction <= 1.0:
        parser.error("--zero-time-fraction must be in [0, 1]")

    overrides = dict(QUICK) if args.quick else {}
    for name in ("steps", "batch_size", "eval_size", "pixel_noise", "seed", "draws", "zero_time_fraction"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.alphas:
        overrides["alphas"] = tuple(args.alphas)
    settings = ToySettings(**overrides)
    settings.warmup_steps = min(settings.warmup_steps, settings.steps)
    report = run(settings, args.output_dir, progress=not args.no_progress, variants=tuple(args.variants))
    print(f"report: {args.output_dir / 'toy_report.json'}, plot: {args.output_dir / 'toy_report.png'}")
    return 0 if report["results"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
