"""The evaluation loop: prepare jobs once, run every method on them, score, write the report.

Outputs in ``out_dir``: ``metrics.json`` (summary per method, per kind, and every job's scores),
``metrics.md`` (Markdown tables), ``grid.png`` (reference | collage | ground truth | each method),
and each method's crops under ``images/<method>/`` (re-scorable later with ``FromFolder``-like reads).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from evaluation.identity import object_on_white
from evaluation.jobs import PreparedJob, prepare_jobs
from src import metrics
from src.files import atomic_write
from src.image_io import DEFAULT_MAX_PIXELS, write_image
from src.jobs import JobSpec

# What each column means, for the report; identity columns are named after their scorer.
METRIC_DOC = {
    "psnr_box": "PSNR (dB) inside the box vs the ground truth",
    "psnr_mask": "PSNR (dB) on the target object mask vs the ground truth",
    "ssim_mask": "SSIM on the target object mask vs the ground truth",
    "psnr_bg": "PSNR (dB) outside the box (crop, padding excluded) vs the input target",
    "ssim_bg": "SSIM outside the box (crop, padding excluded) vs the input target",
}


def _regions(job: PreparedJob) -> tuple[Tensor, Tensor]:
    """(box mask, background mask = valid crop minus the box), each 1 x S x S: the background scores
    (``psnr_bg``/``ssim_bg``) say how much of the scene outside the box a method kept."""
    s = job.target.shape[-1]
    box = metrics.box_mask([job.box], s, s)[0]
    valid = metrics.box_mask([job.valid], s, s)[0]
    return box, valid * (1 - box)


def score_job(job: PreparedJob, generated: Tensor, identity: Mapping[str, tuple[Any, Tensor]]) -> dict[str, float | None]:
    """All metrics of one generated crop; ``None`` where the job lacks what a metric needs."""
    g = generated[None].float()
    box, background = _regions(job)
    scores: dict[str, float | None] = dict.fromkeys(METRIC_DOC)
    target = job.target[None]
    scores["psnr_bg"] = float(metrics.masked_psnr(g, target, background)[0])
    scores["ssim_bg"] = float(metrics.masked_ssim(g, target, background)[0])
    if job.ground_truth is not None:
        gt = job.ground_truth[None]
        scores["psnr_box"] = float(metrics.psnr_in_box(g, gt, [job.box])[0])
        if job.has_mask:
            scores["psnr_mask"] = float(metrics.masked_psnr(g, gt, job.object_mask)[0])
            scores["ssim_mask"] = float(metrics.masked_ssim(g, gt, job.object_mask)[0])
    if identity:
        obj = object_on_white(generated, job.object_mask) if job.has_mask else object_on_white(generated, box=job.box)
        for name, (scorer, reference_embedding) in identity.items():
            scores[name] = float(metrics.cosine_scores(scorer.embed(obj[None]), reference_embedding[None])[0])
    return scores


def summarize(rows: list[dict[str, Any]], metric_names: list[str]) -> dict[str, dict[str, Any]]:
    """Mean of each metric over the jobs that have it (finite), with counts; see ``metrics.finite_mean``."""
    out = {}
    for name in metric_names:
        values = [r[name] for r in rows if r.get(name) is not None]
        if values:
            out[name] = metrics.finite_mean(values)
    return out


def _fmt(stat: dict[str, Any] | None) -> str:
    if not stat or stat["n"] == 0 and stat["n_inf"] == 0:
        return "–"
    if stat["n"] == 0:
        return "inf"
    text = f"{stat['mean']:.2f}" if abs(stat["mean"]) >= 2 else f"{stat['mean']:.3f}"
    return text + (f" ({stat['n_inf']} inf)" if stat["n_inf"] else "")


def markdown_table(summary: Mapping[str, Mapping[str, Any]], metric_names: list[str]) -> str:
    used = [m for m in metric_names if any(m in s for s in summary.values())]
    lines = ["| method | " + " | ".join(used) + " |", "|---|" + "---|" * len(used)]
    for method, stats in summary.items():
        lines.append(f"| {method} | " + " | ".join(_fmt(stats.get(m)) for m in used) + " |")
    return "\n".join(lines)


def _to_uint8(image: Tensor) -> np.ndarray:
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def save_grid(path: Path, jobs: list[PreparedJob], outputs: Mapping[str, Tensor], rows: int) -> None:
    """One row per job: reference | collage | ground truth (or input) | each method; labelled columns."""
    from src.grid import labelled_grid

    jobs = jobs[:rows]
    if not jobs:
        return
    s = jobs[0].target.shape[-1]
    table = []
    for r, job in enumerate(jobs):
        ref = torch.nn.functional.interpolate(job.reference[None], size=(s, s), mode="bilinear", antialias=True)[0]
        cells = [ref, job.collage[:3].add(1).div(2), job.ground_truth if job.ground_truth is not None else job.target]
        table.append([_to_uint8(c) for c in [*cells, *(out[r] for out in outputs.values())]])
    write_image(path, labelled_grid(["reference", "collage", "truth", *outputs], table))


def _clean(value: Any) -> Any:
    """JSON has no inf/NaN: write them as strings so the file stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def evaluate(
    jobs: list[JobSpec],
    methods: Mapping[str, Any],
    out_dir: str | Path,
    *,
    size: int = 512,
    scorers: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    grid_rows: int = 8,
    save_images: bool = True,
    settings: Mapping[str, Any] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> dict[str, Any]:
    """Run ``methods`` on ``jobs``, score, write the report to ``out_dir``; return the metrics dict."""
    if not jobs:
        raise ValueError("no jobs to evaluate")
    if not methods:
        raise ValueError("no methods to evaluate")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scorers = dict(scorers or {})
    prepared = prepare_jobs(jobs, size, max_pixels)
    identity_refs = {
        name: torch.cat([scorer.embed(torch.stack([p.reference_object for p in prepared[i : i + batch_size]])) for i in range(0, len(prepared), batch_size)])
        for name, scorer in scorers.items()
    }
    metric_names = list(METRIC_DOC) + list(scorers)
    outputs: dict[str, Tensor] = {}
    per_job: dict[str, list[dict[str, Any]]] = {}
    for method_name, method in methods.items():
        images = []
        with tqdm(total=len(prepared), desc=f"generate [{method_name}]", unit="job") as bar:
            for i in range(0, len(prepared), batch_size):
                batch = prepared[i : i + batch_size]
                result = method(batch)
                if not isinstance(result, Tensor) or result.shape != (len(batch), 3, size, size):
                    got = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
                    raise ValueError(f"method {method_name!r} returned {got}, expected ({len(batch)}, 3, {size}, {size})")
                images.append(result.float().clamp(0, 1).cpu())
                bar.update(len(batch))
        generated = torch.cat(images)
        outputs[method_name] = generated
        rows = []
        for k, (job, image) in enumerate(zip(prepared, generated)):
            identity = {n: (scorers[n], identity_refs[n][k]) for n in scorers}
            rows.append({"job": job.name, "kind": job.kind, **score_job(job, image, identity)})
        per_job[method_name] = rows
        if save_images:
            for job, image in zip(prepared, generated):
                write_image(out_dir / "images" / method_name / f"{job.name}.png", _to_uint8(image))

    summary = {m: summarize(rows, metric_names) for m, rows in per_job.items()}
    kinds = sorted({p.kind for p in prepared})
    by_kind = {
        kind: {m: summarize([r for r in rows if r["kind"] == kind], metric_names) for m, rows in per_job.items()} for kind in kinds
    } if len(kinds) > 1 else {}
    result = {
        "n_jobs": len(prepared),
        "crop_size": size,
        "settings": dict(settings or {}),
        "metrics": {**METRIC_DOC, **{n: f"cosine of {n} embeddings, generated object vs reference object" for n in scorers}},
        "summary": summary,
        "by_kind": by_kind,
        "jobs": per_job,
    }
    atomic_write(out_dir / "metrics.json", json.dumps(_clean(result), indent=1))
    md = [f"{len(prepared)} jobs, crop {size} px; mean over jobs (inf = identical region, counted apart).", "", markdown_table(summary, metric_names)]
    for kind, table in by_kind.items():
        md += ["", f"**{kind}** ({sum(p.kind == kind for p in prepared)} jobs)", "", markdown_table(table, metric_names)]
    md += ["", *[f"- `{k}`: {v}" for k, v in result["metrics"].items() if any(k in s for s in summary.values())]]
    atomic_write(out_dir / "metrics.md", "\n".join(md) + "\n")
    save_grid(out_dir / "grid.png", prepared, outputs, grid_rows)
    return result
