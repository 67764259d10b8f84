"""Training curves: the loss and a held-out metric over steps, from TensorBoard event files and from
scoring the saved checkpoints with the evaluation code itself.

``python -m evaluation.curves LOGDIR --out curves.png`` plots a run on its own.
"""

from __future__ import annotations

import argparse
import glob
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evaluation.methods import latest
from src.files import atomic_path


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the event files under ``logdir`` ('*' = newest match): ``{tag: [(step, value)]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = latest(logdir)
    files = sorted(glob.glob(str(folder / "**" / "events.out.tfevents.*"), recursive=True))
    if not files:
        raise FileNotFoundError(f"{folder}: no TensorBoard event files")
    scalars: dict[str, dict[int, float]] = {}
    for f in files:  # a resumed run writes several files; later values win per step
        acc = EventAccumulator(f, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            scalars.setdefault(tag, {}).update({e.step: float(e.value) for e in acc.Scalars(tag)})
    return {tag: sorted(v.items()) for tag, v in scalars.items()}


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """TensorBoard-style exponential moving average, debiased at the start."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def score_checkpoints(config: str | Path | None, pattern: str, jobs: list, size: int, seed: int = 0) -> list[dict[str, Any]]:
    """Held-out PSNR of the untrained model and of every checkpoint matching ``pattern``, by step.

    ``config`` None: the run's own ``config.yaml`` next to the checkpoints folder."""
    from evaluation.methods import ModuleMethod
    from models.components.weights import read_training_checkpoint
    from evaluation.runner import evaluate

    paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no checkpoint matches {pattern}")
    by_step: dict[int, str | None] = {0: None}
    for p in paths:
        step = int(read_training_checkpoint(p).get("global_step", -1))
        by_step.setdefault(step, p)  # last.ckpt repeats a step: keep one
    if config is None:
        config = Path(paths[0]).parent.parent / "config.yaml"
    rows = []
    for step, path in sorted(by_step.items()):
        method = ModuleMethod(config, checkpoint=path, seed=seed)
        with tempfile.TemporaryDirectory() as tmp:
            result = evaluate(jobs, {"model": method}, tmp, size=size, save_images=False, grid_rows=0)
        summary = result["summary"]["model"]
        rows.append({"step": step, "checkpoint": path, **{k: summary[k]["mean"] for k in ("psnr_box", "psnr_mask") if k in summary}})
    return rows


def plot_training(
    logdir: str | Path,
    out_png: str | Path,
    checkpoint_series: Sequence[Mapping[str, Any]] | None = None,
    baselines: Mapping[str, float] | None = None,
) -> Path:
    """Left: train loss (raw and smoothed) and validation loss. Right: held-out PSNR in the box over steps
    (the module's validation metric, the checkpoints scored by `anydoor eval`, baselines as lines)."""
    from matplotlib.figure import Figure

    scalars = read_scalars(logdir)
    fig = Figure(figsize=(11, 4), dpi=110)
    ax_loss, ax_psnr = fig.subplots(1, 2)
    if "train/loss" in scalars:
        steps, values = zip(*scalars["train/loss"])
        ax_loss.plot(steps, values, color="tab:blue", alpha=0.25, lw=0.8, label="train/loss")
        ax_loss.plot(steps, smooth(values), color="tab:blue", lw=1.6, label="train/loss (smoothed)")
    if "val/loss" in scalars:
        steps, values = zip(*scalars["val/loss"])
        ax_loss.plot(steps, values, "o-", color="tab:orange", label="val/loss (training validation set)")
    ax_loss.set(xlabel="step", ylabel="diffusion loss", title="loss")
    ax_loss.set_yscale("log")
    ax_loss.legend(fontsize=8)
    if "val/psnr_box" in scalars:
        steps, values = zip(*scalars["val/psnr_box"])
        ax_psnr.plot(steps, values, "o-", color="tab:green", label="val/psnr_box (training validation)")
    if checkpoint_series:
        for key, colour in (("psnr_box", "tab:red"), ("psnr_mask", "tab:purple")):
            pts = [(r["step"], r[key]) for r in checkpoint_series if r.get(key) is not None]
            if pts:
                ax_psnr.plot(*zip(*pts), "s-", color=colour, label=f"{key} (anydoor eval, held-out jobs)")
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax_psnr.axhline(value, ls="--", lw=1, color=f"C{i + 5}", label=f"{name} baseline ({value:.1f} dB)")
    ax_psnr.set(xlabel="step", ylabel="PSNR (dB)", title="PSNR in the box / on the object")
    if ax_psnr.has_data():
        ax_psnr.legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    return out_png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", help="TensorBoard run folder ('*' = newest match)")
    parser.add_argument("--out", default="training_curves.png")
    args = parser.parse_args(argv)
    print(plot_training(args.logdir, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
