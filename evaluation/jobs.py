"""Evaluation jobs prepared once for every method.

The jobs themselves are ``src.jobs.JobSpec`` (the schema ``anydoor generate`` reads too).
``prepare_job`` reads one with the shared reader and builds the crop, collage and box with
``src.conditioning`` and ``rng=None`` (no randomness), so every method (baselines, untrained and
trained model) is scored on the very same crops by the same metric code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from src.conditioning import prepare_reference, prepare_target
from src.image_io import DEFAULT_MAX_PIXELS, read_image
from src.image_ops import CropTransform
from src.jobs import JobImages, JobSpec


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
    seed: int | None = None  # the job file's seed, else the method's own per-job seed
    raw: JobImages | None = field(repr=False, default=None)  # the arrays: models.pipeline.Job(**raw)


def _tensor(image: np.ndarray) -> Tensor:
    """uint8 H x W x 3 -> float 3 x H x W in [0, 1] (a copy: Pillow's arrays are read-only)."""
    return torch.tensor(image).permute(2, 0, 1).float() / 255.0


def prepare_job(job: JobSpec, size: int, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> PreparedJob:
    """Read a job's files and build its crop, collage and box deterministically (crop side ``size``)."""
    from evaluation.identity import object_on_white

    images = job.read(max_pixels)
    target = images["target"]
    where = images["target_mask"] if images["target_mask"] is not None else images["box"]
    reference = prepare_reference(images["reference"], images["reference_mask"])
    prepared = prepare_target(target, where, reference, size=size)
    sample, transform = prepared.sample, prepared.transform
    gt_image = job.read_ground_truth(target.shape[:2], max_pixels)
    return PreparedJob(
        name=job.name,
        kind=job.kind,
        reference=torch.from_numpy(reference.image),
        reference_mask=torch.from_numpy(reference.mask)[None].float(),
        reference_object=object_on_white(_tensor(images["reference"]), torch.from_numpy(images["reference_mask"])[None]),
        target=_tensor(transform.apply(target, pad_value=0)),  # exact uint8 / 255, as the ground truth
        collage=torch.from_numpy(sample["collage"]),
        box=tuple(int(v) for v in sample["box"]),
        object_mask=torch.from_numpy(sample["object_mask"]),
        has_mask=images["target_mask"] is not None,
        valid=tuple(int(v) for v in transform.valid_box()),
        transform=transform,
        ground_truth=None if gt_image is None else _tensor(transform.apply(gt_image, pad_value=0)),
        seed=job.seed,
        raw=images,
    )


def prepare_jobs(jobs: Sequence[JobSpec], size: int, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 progress: bool = True) -> list[PreparedJob]:
    """``prepare_job`` for every job; a ``ValueError`` lists every bad job (one line each), so a
    benchmark is never scored on a silently smaller set."""
    from tqdm import tqdm

    prepared, errors = [], []
    for job in tqdm(jobs, desc="prepare jobs", unit="job", disable=not progress):
        try:
            prepared.append(prepare_job(job, size, max_pixels))
        except ValueError as err:  # ImageError included: the message names the file and the reason
            message = str(err)
            errors.append(message if job.source and message.startswith(job.source) else f"{job.source or job.name}: {message}")
    if errors:
        raise ValueError("\n".join(errors))
    return prepared


def crop_generated(job: PreparedJob, path: Path) -> Tensor:
    """A generated full-size image cut to the job's crop, for scoring images made elsewhere."""
    image = read_image(path, "RGB")
    target = job.raw["target"]
    if image.shape != target.shape:
        raise ValueError(f"{path}: generated image is {image.shape[1]} x {image.shape[0]}, "
                         f"its target {target.shape[1]} x {target.shape[0]}")
    return _tensor(job.transform.apply(image, pad_value=0))
