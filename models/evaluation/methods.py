"""Methods to score: anything that maps prepared jobs to generated crops.

A method is a callable ``(list[PreparedJob]) -> Tensor B x 3 x S x S`` in [0, 1]. The baselines here
see exactly what the model sees (the target crop with the box hidden, the 224 px reference), so the
comparison is fair: the background baseline knows the surroundings only; copy-paste adds the
reference object, placed the way the collage places its high-frequency map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from models.evaluation.jobs import PreparedJob, crop_generated


class Method(Protocol):
    def __call__(self, jobs: list[PreparedJob]) -> Tensor: ...


def background_fill(job: PreparedJob) -> Tensor:
    """The crop with its box filled by the mean colour of the crop outside the box (padding excluded)."""
    image = job.target.clone()
    x1, y1, x2, y2 = job.box
    vx1, vy1, vx2, vy2 = job.valid
    around = torch.zeros(image.shape[-2:], dtype=torch.bool)
    around[vy1:vy2, vx1:vx2] = True
    around[y1:y2, x1:x2] = False
    if around.any():
        mean = image[:, around].mean(dim=1)
    else:  # the box covers the whole crop: nothing is known, use mid grey
        mean = torch.full((3,), 0.5)
    image[:, y1:y2, x1:x2] = mean[:, None, None]
    return image


class BackgroundFill:
    """Baseline: surroundings only, the box a flat mean colour."""

    def __call__(self, jobs: list[PreparedJob]) -> Tensor:
        return torch.stack([background_fill(j) for j in jobs])


class CopyPaste:
    """Baseline: the 224 px reference (object on white with its margin) resized into the box and pasted
    through its mask over the background fill, exactly where the collage puts the hint."""

    def __call__(self, jobs: list[PreparedJob]) -> Tensor:
        out = []
        for job in jobs:
            image = background_fill(job)
            x1, y1, x2, y2 = job.box
            size = (y2 - y1, x2 - x1)
            obj = F.interpolate(job.reference[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
            alpha = F.interpolate(job.reference_mask[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
            region = image[:, y1:y2, x1:x2]
            image[:, y1:y2, x1:x2] = alpha * obj + (1 - alpha) * region
            out.append(image.clamp(0, 1))
        return torch.stack(out)


class FromFolder:
    """Already generated full-size images ``<folder>/<job name>.<ext>``, cut to each job's crop."""

    def __init__(self, folder: str | Path, extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")):
        self.folder, self.extensions = Path(folder), extensions
        if not self.folder.is_dir():
            raise FileNotFoundError(f"generated-images folder {self.folder} does not exist")

    def __call__(self, jobs: list[PreparedJob]) -> Tensor:
        out = []
        for job in jobs:
            hits = [self.folder / f"{job.name}{e}" for e in self.extensions if (self.folder / f"{job.name}{e}").is_file()]
            if not hits:
                raise FileNotFoundError(f"{self.folder}: no generated image for job {job.name!r} ({'|'.join(self.extensions)})")
            out.append(crop_generated(job, hits[0]))
        return torch.stack(out)


class PipelineMethod:
    """Generate with an ``AnyDoorPipeline`` loaded from a pretrained folder (or given directly).

    Each job is seeded from ``seed`` and its index in the job list order, so a method's output does not
    depend on the batch size and the untrained and trained models draw the same noise.
    """

    def __init__(
        self,
        model: str | Path | Any,
        steps: int = 25,
        guidance: float = 5.0,
        seed: int = 0,
        device: str = "cpu",
        call_kwargs: dict | None = None,
    ):
        if isinstance(model, (str, Path)):
            from models.pipeline import AnyDoorPipeline

            if not Path(model).is_dir():
                raise FileNotFoundError(f"model folder {model} does not exist")
            model = AnyDoorPipeline.from_pretrained(str(model))
        self.pipeline = model.to(device) if hasattr(model, "to") else model
        self.steps, self.guidance, self.seed, self.device = steps, guidance, seed, device
        self.call_kwargs = dict(call_kwargs or {})
        self._calls = 0

    @property
    def size(self) -> int | None:
        return getattr(self.pipeline, "image_size", None)

    def __call__(self, jobs: list[PreparedJob]) -> Tensor:
        out = []
        for job in jobs:
            generator = torch.Generator(self.device).manual_seed(self.seed + _job_seed(job.name))
            where = job.raw["where"]
            place = {"box": where} if isinstance(where, tuple) else {"mask": where}
            result = self.pipeline(
                reference=job.raw["reference"],
                reference_mask=job.raw["reference_mask"],
                target=job.raw["target"],
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                generator=generator,
                **place,
                **self.call_kwargs,
            )
            crop = _as_crop(result)
            if crop.shape[-2:] != job.target.shape[-2:]:
                raise ValueError(
                    f"the pipeline's crop is {tuple(crop.shape[-2:])}, the evaluation crop {tuple(job.target.shape[-2:])}: set size to the model's"
                )
            out.append(crop)
        return torch.stack(out)


def _job_seed(name: str) -> int:
    import zlib

    return zlib.crc32(name.encode()) % (2**31)


def _as_crop(result: Any) -> Tensor:
    """The generated crop from a pipeline result, as float 3 x S x S in [0, 1]."""
    import numpy as np

    crop = getattr(result, "crops", None)
    if crop is None:
        crop = getattr(result, "crop", None)
    if crop is None and isinstance(result, dict):
        crop = result.get("crops", result.get("crop"))
    if crop is None:
        raise TypeError(f"the pipeline returned {type(result).__name__} without a generated crop")
    if isinstance(crop, (list, tuple)):
        crop = crop[0]
    if isinstance(crop, Tensor):
        t = crop.detach().float().cpu()
        if t.dim() == 4:
            t = t[0]
        if t.shape[0] != 3 and t.shape[-1] == 3:
            t = t.permute(2, 0, 1)
        return (t / 255.0 if t.max() > 1.5 else t).clamp(0, 1)
    arr = np.asarray(crop)
    t = torch.from_numpy(np.ascontiguousarray(arr)).float()
    if t.dim() == 4:
        t = t[0]
    if t.shape[-1] == 3:
        t = t.permute(2, 0, 1)
    return (t / 255.0 if arr.dtype == np.uint8 else t).clamp(0, 1)
