"""Methods to score: anything that maps prepared jobs to generated crops.

A method is a callable ``(list[PreparedJob]) -> Tensor B x 3 x S x S`` in [0, 1]. The baselines here
see exactly what the model sees (the target crop with the box hidden, the 224 px reference), so the
comparison is fair: the background baseline knows the surroundings only; copy-paste adds the
reference object, placed the way the collage places its high-frequency map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from evaluation.jobs import PreparedJob, crop_generated


class Method:
    """Base of every method an eval config may name (``class_path`` must be a subclass, see
    ``evaluation.config``): maps prepared jobs to generated crops ``B x 3 x S x S`` in [0, 1]."""

    def __call__(self, jobs: list[PreparedJob]) -> Tensor:
        raise NotImplementedError


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


class BackgroundFill(Method):
    """Baseline: surroundings only, the box a flat mean colour."""

    def __call__(self, jobs: list[PreparedJob]) -> Tensor:
        return torch.stack([background_fill(j) for j in jobs])


class CopyPaste(Method):
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


class FromFolder(Method):
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


def latest(pattern: str | Path) -> Path:
    """``pattern`` itself, or with a ``*`` the newest match (e.g. the last training run's checkpoint)."""
    pattern = str(pattern)
    if "*" not in pattern:
        return Path(pattern)
    import glob

    hits = sorted(glob.glob(pattern), key=lambda p: Path(p).stat().st_mtime)
    if not hits:
        raise FileNotFoundError(f"nothing matches {pattern} (train first: `make train`)")
    return Path(hits[-1])


class PipelineMethod(Method):
    """Generate with an ``AnyDoorPipeline`` from a model folder (``*`` picks the newest match) or a
    pipeline object.

    ``scheduler`` / ``steps`` / ``guidance`` resolve with ``AnyDoorPipeline.sampling_settings`` (the
    folder's recommendation, else its fallback). The crop geometry is the evaluation's (every method
    is scored on the same crops), passed to the pipeline explicitly. Each job's noise is seeded with
    the job file's ``seed`` when it gives one, else from ``seed`` and the job's name, so outputs do
    not depend on the batch and every model draws the same noise for the same job.

    ``composite``: ``None`` scores the model's own crop (before anything is pasted back); ``crop``,
    ``box`` or ``mask`` score the image the user gets with that compositing mode (the pipeline's
    ``composite``), cut to the evaluation's crop, so the background metrics compare the modes.
    """

    def __init__(
        self,
        model: str | Path | Any,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        scheduler: str | None = None,
        device: str = "cpu",
        composite: str | None = None,
    ):
        from src.image_ops import COMPOSITE_MODES

        if composite is not None and composite not in COMPOSITE_MODES:
            raise ValueError(f"composite must be one of {COMPOSITE_MODES} or null (the raw crop), got {composite!r}")
        self.composite = composite
        if isinstance(model, (str, Path)):
            from models.pipeline import AnyDoorPipeline

            folder = latest(model)
            model = AnyDoorPipeline.from_pretrained(folder)
            self.source = str(folder)
        else:
            self.source = type(model).__name__
        self.pipeline = model.to(device)
        self.scheduler, self.steps, self.guidance = self.pipeline.sampling_settings(scheduler, steps, guidance)
        self.seed, self.device = seed, device

    @property
    def size(self) -> int:
        return int(self.pipeline.crop_size)

    def describe(self) -> dict[str, Any]:
        return {"model": self.source, "steps": self.steps, "guidance": self.guidance, "scheduler": self.scheduler,
                "seed": self.seed, "composite": self.composite or "none (raw crop)"}

    def __call__(self, jobs: list[PreparedJob]) -> Tensor:
        from models.pipeline import Job as PipelineJob
        from src.conditioning import DEFAULT_PREPROCESSING

        calls = [PipelineJob(**job.raw) for job in jobs]
        generators = [torch.Generator(self.device).manual_seed(j.seed if j.seed is not None else self.seed + _job_seed(j.name))
                      for j in jobs]
        result = self.pipeline(
            calls, num_inference_steps=self.steps, guidance_scale=self.guidance, scheduler=self.scheduler, generator=generators,
            progress=False, composite=self.composite or "box", **DEFAULT_PREPROCESSING._asdict(),  # as evaluation.jobs
        )
        for job, box in zip(jobs, result.boxes):
            if tuple(box) != tuple(job.transform.box):
                raise ValueError(f"job {job.name!r}: the pipeline cropped {tuple(box)}, the evaluation {tuple(job.transform.box)}")
        if self.composite is None:
            crops = torch.stack([torch.from_numpy(c).permute(2, 0, 1).float() / 255.0 for c in result.crops])
        else:  # the composited full image, cut to the same crop (padding as the target's)
            crops = torch.stack([torch.from_numpy(job.transform.apply(image, pad_value=0)).permute(2, 0, 1).float() / 255.0
                                 for job, image in zip(jobs, result.images)])
        if crops.shape[-1] != jobs[0].target.shape[-1]:
            raise ValueError(f"the pipeline's crop is {crops.shape[-1]} px, the evaluation's {jobs[0].target.shape[-1]}: set size to {crops.shape[-1]}")
        return crops


class ModuleMethod(PipelineMethod):
    """A model as ``lightning fit`` builds it from a config, optionally with a training checkpoint.

    Without a checkpoint this is the untrained model (the same seeded initialisation training starts
    from); with one, its trainable weights (EMA when kept and ``use_ema``) are loaded and the frozen
    parts rebuilt from the config, as Lightning does. ``config`` and ``checkpoint`` may hold a ``*``
    (newest match); without ``config``, the ``config.yaml`` Lightning saved in the checkpoint's run
    folder is used, so the model is rebuilt with the recipe it was trained with. Generates through
    the module's own pipeline (``AnyDoorModule.to_pipeline``).
    """

    def __init__(
        self,
        config: str | Path | None = None,
        checkpoint: str | Path | None = None,
        use_ema: bool = True,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        scheduler: str | None = None,
        device: str = "cpu",
        composite: str | None = None,
    ):
        from models.anydoor_module import AnyDoorModule

        path = latest(checkpoint) if checkpoint is not None else None
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        if config is None:
            if path is None:
                raise ValueError("ModuleMethod needs a training config, a checkpoint, or both")
            config = path.parent.parent / "config.yaml"  # <run>/checkpoints/x.ckpt -> <run>/config.yaml
        config = latest(config)
        module = AnyDoorModule.from_config_file(config).eval()
        source = f"{config} (untrained)"
        if path is not None:
            step, has_ema = module.load_training_checkpoint(path)
            ema = use_ema and has_ema
            if ema:
                module.ema.copy_to(module.trainable_parameters().values())  # this module only samples from now on
            source = f"{path} (step {step}{', EMA' if ema else ''})"
        super().__init__(module.to_pipeline(), steps=steps, guidance=guidance, seed=seed, scheduler=scheduler, device=device,
                         composite=composite)
        self.source = source


def _job_seed(name: str) -> int:
    import zlib

    return zlib.crc32(name.encode()) % (2**31)
