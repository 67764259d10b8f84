"""Evaluation jobs from held-out WebDataset shards (e.g. the synthetic set built with a disjoint seed).

Deterministic, no randomness: a video track gives (first frame -> last frame), the pair furthest apart
in time; a still image gives its horizontally flipped self as the reference (the flip is one of the
training augmentations, so the model has to move the object's details rather than copy pixels).
The target frame is its own ground truth, its object mask the target mask. Files are written as PNG
with a ``jobs.json``, so the result is an ordinary job list (``src.jobs``) that `anydoor eval` reads
like any other.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from src.files import atomic_write
from src.image_io import write_image


def jobs_from_shards(shards: str | Path | list[str], out_dir: str | Path, limit: int | None = None) -> Path:
    """Write one job per shard sample (up to ``limit``) under ``out_dir``; return its ``jobs.json``.

    Samples that cannot be decoded are skipped, counted and named in ``jobs.json``'s ``skipped``.
    """
    import webdataset as wds

    from datamodules.components.pairs import load_view
    from datamodules.components.shard_lists import resolve

    sources, counts = resolve(str(shards) if isinstance(shards, Path) else shards)
    urls = sorted(u for us in sources.values() for u in us)
    out_dir = Path(out_dir)
    files = out_dir / "files"
    files.mkdir(parents=True, exist_ok=True)
    jobs, skipped = [], []
    total = sum(counts.values()) or None
    if limit is not None and total is not None:
        total = min(total, limit)
    stream = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())
    for sample in tqdm(stream, total=total, desc="held-out jobs", unit="job"):
        if limit is not None and len(jobs) >= limit:
            break
        key = sample["__key__"]
        try:
            meta = json.loads(sample["json"])
            n = len(meta["boxes"])
            if n == 0:
                raise ValueError("no frames")
            target, target_mask = load_view(sample, meta, n - 1, 1)
            if meta.get("kind") == "image" or n == 1:
                reference, reference_mask = target[:, ::-1], target_mask[:, ::-1]
            else:
                reference, reference_mask = load_view(sample, meta, 0, 1)
        except (KeyError, ValueError, json.JSONDecodeError) as err:
            skipped.append({"key": key, "url": sample.get("__url__"), "reason": str(err)})
            continue
        name = key
        paths = {k: files / f"{name}.{k}.png" for k in ("reference", "reference_mask", "target", "target_mask")}
        write_image(paths["reference"], np.ascontiguousarray(reference))
        write_image(paths["reference_mask"], np.ascontiguousarray(reference_mask) * 255)
        write_image(paths["target"], target)
        write_image(paths["target_mask"], target_mask * 255)
        entry = {k: str(p.relative_to(out_dir)) for k, p in paths.items()}
        entry.update(name=name, ground_truth=entry["target"], kind=meta.get("kind", "video"))
        jobs.append(entry)
    if not jobs:
        raise ValueError(f"{shards}: no usable samples ({len(skipped)} skipped: {skipped[:3]})")
    out = out_dir / "jobs.json"
    atomic_write(out, json.dumps({"source": [str(u) for u in urls], "skipped": skipped, "jobs": jobs}, indent=1))
    return out
