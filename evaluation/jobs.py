"""Evaluation jobs: what to put where, read from disk and prepared once for every method.

A job is a reference (image + mask, or RGBA) and a target (image + box or mask), optionally the
ground-truth result. ``prepare_job`` builds the crop, collage and box with ``src.conditioning`` and
``rng=None`` (no randomness), so every method (baselines, untrained and trained model) is scored on
the very same crops by the same metric code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from src.conditioning import prepare_reference, prepare_target
from src.image_ops import CropTransform

JOB_KEYS = {"name", "reference", "reference_mask", "target", "box", "target_mask", "ground_truth", "kind"}


@dataclass
class Job:
    """File paths of one job (absolute or relative to the job list's folder, resolved on load)."""

    name: str
    reference: Path
    target: Path
    reference_mask: Path | None = None  # None: the reference's alpha channel is the mask
    box: tuple[int, int, int, int] | None = None  # exclusive ends, target pixels
    target_mask: Path | None = None
    ground_truth: Path | None = None
    kind: str = "job"  # a label to break the scores down by (e.g. video / image)


@dataclass
class PreparedJob:
    """One job's tensors in [0, 1] (crop side S) plus the raw arrays a pipeline needs."""

    name: str
    kind: str
    reference: Tensor  # 3 x 224 x 224, object on white (the ID encoder's input)
    reference_mask: Tensor  # 1 x 224 x 224 {0, 1}
    reference_object: Tensor  # 3 x 224 x 224: object_on_white of the raw reference (identity scores)
    target: Tensor  # 3 x S x S: the input target crop
    collage: Tensor  # 4 x S x S as in training ([-1, 1] RGB + location channel)
    box: tuple[int, int, int, int]  # the box to fill, crop pixels
    object_mask: Tensor  # 1 x S x S: the target mask in the crop (the box when only a box was given)
    has_mask: bool
    valid: tuple[int, int, int, int]  # non-padding part of the crop
    transform: CropTransform  # full image <-> crop
    ground_truth: Tensor | None  # 3 x S x S, or None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)  # uint8 arrays: reference, reference_mask, target, box|mask


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: cannot read as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: Path, like: np.ndarray | None = None) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ValueError(f"{path}: cannot read as a mask image")
    if mask.ndim == 3:
        mask = mask[..., 3] if mask.shape[2] == 4 else mask.max(axis=2)
    mask = (mask > (mask.max() / 2 if mask.max() > 1 else 0)).astype(np.uint8)
    if like is not None and mask.shape != like.shape[:2]:
        raise ValueError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image {like.shape[1]}x{like.shape[0]}")
    if not mask.any():
        raise ValueError(f"{path}: the mask is empty")
    return mask


def read_reference(job: Job) -> tuple[np.ndarray, np.ndarray]:
    if job.reference_mask is not None:
        image = read_rgb(job.reference)
        return image, read_mask(job.reference_mask, image)
    rgba = cv2.imread(str(job.reference), cv2.IMREAD_UNCHANGED)
    if rgba is None or rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"{job.reference}: job {job.name!r} has no reference_mask, so the reference must be RGBA")
    image = cv2.cvtColor(rgba[..., :3], cv2.COLOR_BGR2RGB)
    mask = (rgba[..., 3] > 127).astype(np.uint8)
    if not mask.any():
        raise ValueError(f"{job.reference}: the alpha channel is empty")
    return image, mask


def _tensor(image: np.ndarray) -> Tensor:
    """uint8 H x W x 3 -> float 3 x H x W in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


def prepare_job(job: Job, size: int) -> PreparedJob:
    """Read a job's files and build its crop, collage and box deterministically (crop side ``size``)."""
    from evaluation.identity import object_on_white

    ref_image, ref_mask = read_reference(job)
    target = read_rgb(job.target)
    if (job.box is None) == (job.target_mask is None):
        raise ValueError(f"job {job.name!r}: give exactly one of box and target_mask")
    where: Any = read_mask(job.target_mask, target) if job.target_mask is not None else tuple(int(v) for v in job.box)
    reference = prepare_reference(ref_image, ref_mask)
    prepared = prepare_target(target, where, reference, size=size)
    sample, transform = prepared.sample, prepared.transform
    gt = None
    if job.ground_truth is not None:
        gt_image = read_rgb(job.ground_truth)
        if gt_image.shape != target.shape:
            raise ValueError(f"{job.ground_truth}: ground truth is {gt_image.shape[1]}x{gt_image.shape[0]}, target {target.shape[1]}x{target.shape[0]}")
        gt = _tensor(transform.apply(gt_image, pad_value=0))
    return PreparedJob(
        name=job.name,
        kind=job.kind,
        reference=torch.from_numpy(reference.image),
        reference_mask=torch.from_numpy(reference.mask)[None].float(),
        reference_object=object_on_white(_tensor(ref_image), torch.from_numpy(ref_mask)[None]),
        target=_tensor(transform.apply(target, pad_value=0)),  # exact uint8 / 255, as the ground truth
        collage=torch.from_numpy(sample["collage"]),
        box=tuple(int(v) for v in sample["box"]),
        object_mask=torch.from_numpy(sample["object_mask"]),
        has_mask=job.target_mask is not None,
        valid=tuple(int(v) for v in transform.valid_box()),
        transform=transform,
        ground_truth=gt,
        raw={"reference": ref_image, "reference_mask": ref_mask, "target": target, "where": where},
    )


def crop_generated(job: PreparedJob, path: Path) -> Tensor:
    """A generated full-size image cut to the job's crop, for scoring images made elsewhere."""
    image = read_rgb(path)
    if image.shape != job.raw["target"].shape:
        raise ValueError(f"{path}: generated image is {image.shape[1]}x{image.shape[0]}, its target {job.raw['target'].shape[1]}x{job.raw['target'].shape[0]}")
    return _tensor(job.transform.apply(image, pad_value=0))


def _job_from_dict(entry: dict, base: Path, index: int, source: Path) -> Job:
    unknown = set(entry) - JOB_KEYS
    if unknown:
        raise ValueError(f"{source}: job {index} has unknown keys {sorted(unknown)} (known: {sorted(JOB_KEYS)})")
    for key in ("reference", "target"):
        if key not in entry:
            raise ValueError(f"{source}: job {index} lacks {key!r}")

    def path(key: str) -> Path | None:
        value = entry.get(key)
        if value is None:
            return None
        p = Path(value)
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise FileNotFoundError(f"{source}: job {index} {key}: {p} does not exist")
        return p

    box = entry.get("box")
    if box is not None and (len(box) != 4 or not all(isinstance(v, (int, float)) for v in box)):
        raise ValueError(f"{source}: job {index} box must be [x1, y1, x2, y2], got {box!r}")
    return Job(
        name=str(entry.get("name", f"job{index:04d}")),
        reference=path("reference"),
        target=path("target"),
        reference_mask=path("reference_mask"),
        box=tuple(int(v) for v in box) if box is not None else None,
        target_mask=path("target_mask"),
        ground_truth=path("ground_truth"),
        kind=str(entry.get("kind", "job")),
    )


def _folder_job(folder: Path) -> Job:
    """A DreamBooth-style job folder: reference.png [reference_mask.png] target.png (target_mask.png | box.json) [ground_truth.png]."""

    def find(stem: str) -> Path | None:
        hits = sorted(p for p in folder.glob(f"{stem}.*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        return hits[0] if hits else None

    entry: dict[str, Any] = {"name": folder.name}
    for key in ("reference", "reference_mask", "target", "target_mask", "ground_truth"):
        if (p := find(key)) is not None:
            entry[key] = str(p)
    if (folder / "box.json").is_file():
        entry["box"] = json.loads((folder / "box.json").read_text())
    return _job_from_dict(entry, folder, 0, folder)


def load_jobs(path: str | Path) -> list[Job]:
    """Jobs from a JSON list (or ``{"jobs": [...]}``), a folder holding ``jobs.json``, or a folder of job folders."""
    path = Path(path)
    if path.is_dir() and (path / "jobs.json").is_file():
        path = path / "jobs.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        entries = data.get("jobs") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a list of jobs or {{'jobs': [...]}}")
        jobs = [_job_from_dict(e, path.parent, i, path) for i, e in enumerate(entries)]
    elif path.is_dir():
        folders = sorted(p for p in path.iterdir() if p.is_dir())
        if not folders:
            raise FileNotFoundError(f"{path}: no jobs.json and no job folders")
        jobs = [_folder_job(f) for f in folders]
    else:
        raise FileNotFoundError(f"{path}: no such job list or folder")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: job names must be unique")
    return jobs
