"""The demo's one door to the model: load a pipeline, read its defaults, run one teleport.

Everything the web app knows about ``models.pipeline`` is in this module (``load_pipeline``,
``model_defaults``, ``generate``), so when the pipeline's API changes only this file follows. The
app passes plain arrays and settings in and gets plain arrays and numbers back.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from src.geometry import Box
from src.image_ops import COMPOSITE_MODES

SCHEDULERS = ("ddim", "dpm")  # what `anydoor generate --scheduler` offers; left out, the sampler follows
# the model folder's recommendation, else DPM-Solver++ 20 steps (`AnyDoorPipeline.sampling_settings`)


@dataclass
class Teleport:
    """One job: uint8 ``H x W x 3`` images, ``H x W`` masks (non-zero = object); ``box`` or ``target_mask``."""

    reference: np.ndarray
    reference_mask: np.ndarray
    target: np.ndarray
    box: Box | None = None
    target_mask: np.ndarray | None = None


@dataclass(frozen=True)
class Settings:
    scheduler: str
    steps: int
    guidance: float
    seed: int
    composite: str = "box"  # what is pasted back: box / mask / crop (src.image_ops.composite_region)
    feather: int | None = None  # None: the pipeline's default for the compositing mode (``default_feather``)
    shape_control: bool = False  # a target mask's shape (not only its box) in the location channel

    @property
    def feather_px(self) -> int:
        return default_feather(self.composite) if self.feather is None else self.feather


@dataclass(frozen=True)
class Defaults:
    scheduler: str
    steps: int
    guidance: float
    from_model: bool  # the model folder recommends them (else the built-in fallback)


@dataclass
class Outcome:
    image: np.ndarray  # the target with the object, full size, uint8
    collage: np.ndarray  # float32 4 x S x S: what the model saw
    crop_box: Box  # where the crop lies in the target
    region: Box | None  # bounding box of the pixels that differ from the target (None: none do)
    location: str  # what the collage's location channel held: the target "box" or the "mask" shape
    started: float  # wall clock (time.time) when sampling began and ended
    finished: float

    @property
    def seconds(self) -> float:
        return self.finished - self.started


def load_pipeline(model: str | Path, device: str | None = None, dtype: str | None = None) -> tuple[Any, str]:
    """(pipeline, "device dtype"): cuda when there is one, float16 on a GPU, float32 on a CPU, like
    ``anydoor generate``. Raises ``FileNotFoundError``/``ValueError`` naming the folder."""
    import torch

    from models.pipeline import AnyDoorPipeline

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = getattr(torch, dtype) if dtype else (torch.float16 if dev.type == "cuda" else torch.float32)
    pipe = AnyDoorPipeline.from_pretrained(model, torch_dtype=torch_dtype, device=dev)
    pipe.use_channels_last(dev.type == "cpu")  # faster oneDNN convolutions (docs/inference.md)
    return pipe, f"{dev} {str(torch_dtype).removeprefix('torch.')}"


def crop_size(pipe: Any) -> int:
    return int(pipe.crop_size)


def model_defaults(pipe: Any, scheduler: str | None = None) -> Defaults:
    """Sampler, steps and guidance the model folder recommends (for ``scheduler`` when given)."""
    name, steps, guidance = pipe.sampling_settings(scheduler, None, None)
    return Defaults(name, steps, guidance, pipe.recommended_sampling is not None)


def default_feather(composite: str) -> int:
    """The seam the pipeline uses for a compositing mode when a call does not say (as `anydoor generate`
    without --feather): 0 for the whole crop, else the pipeline's ``DEFAULT_FEATHER`` where it has one."""
    from models.pipeline import DEFAULT_FEATHER

    return 0 if composite == "crop" else DEFAULT_FEATHER


def generate(pipe: Any, job: Teleport, settings: Settings, progress: bool = True) -> Outcome:
    """Run one teleport. Bad input raises ``ValueError`` with a message meant for a person."""
    import torch

    from models.pipeline import Job

    if settings.composite not in COMPOSITE_MODES:
        raise ValueError(f"compositing must be one of {COMPOSITE_MODES}, got {settings.composite!r}")
    if settings.scheduler not in SCHEDULERS:
        raise ValueError(f"sampler must be one of {SCHEDULERS}, got {settings.scheduler!r}")
    if settings.steps < 1:
        raise ValueError(f"steps must be at least 1, got {settings.steps}")
    location = "mask" if settings.shape_control and job.target_mask is not None else "box"
    from models.components.precision import default_precision

    started = time.time()
    try:
        out = pipe(
            Job(reference=job.reference, target=job.target, reference_mask=job.reference_mask,
                box=job.box, target_mask=job.target_mask),
            num_inference_steps=settings.steps, guidance_scale=settings.guidance, scheduler=settings.scheduler,
            generator=torch.Generator(device="cpu").manual_seed(settings.seed),
            mask_channel=location,
            composite=settings.composite, progress=progress,
            feather=settings.feather_px,
            precision=default_precision(pipe.device, pipe.dtype),  # as anydoor generate: bf16 where the CPU has it
        )
    except torch.OutOfMemoryError as err:  # a message in the page, and the server keeps serving
        raise MemoryError(f"the model ran out of memory on {pipe.device}: try a smaller target or fewer "
                          f"steps ({str(err).splitlines()[0][:200]})") from None
    return Outcome(image=out.images[0], collage=out.collages[0], crop_box=tuple(out.boxes[0]),
                   region=out.regions[0], location=location, started=started, finished=time.time())


def describe(outcome: Outcome, settings: Settings) -> dict[str, Any]:
    """The numbers of a generation, for the page and for API clients."""
    h, w = outcome.image.shape[:2]
    return {"size": [w, h], "region": None if outcome.region is None else list(outcome.region),
            "crop_box": list(outcome.crop_box), "location": outcome.location, "seconds": round(outcome.seconds, 3),
            "started": outcome.started, "finished": outcome.finished, **asdict(settings), "feather": settings.feather_px}
