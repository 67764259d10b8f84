"""AnyDoorPipeline: teleport a reference object into a target image (a diffusers ``DiffusionPipeline``).

One call: reference -> ID tokens (DINOv2 + projector); target -> square crop around the grown box
with the collage (target crop + the reference's high-frequency map in the box + location channel);
noise -> latents by a diffusers scheduler with classifier-free guidance (cond and uncond in one
batch; the uncond branch keeps the collage and uses the ID tokens of an all-black reference, as
the authors do) -> decoded crop pasted back into the full image (pixels outside the crop unchanged).
Image preparation is ``src.conditioning`` with ``rng=None``, the same code the training data uses.

Saving, loading, ``.to()``, ``device``/``dtype`` and ``model_index.json`` are diffusers'. The folder's
``model_index.json`` also records what a correct generation needs besides weights: ``sampling``
(the recommended scheduler, steps, guidance) and ``preprocessing`` (``src.conditioning.Preprocessing``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn

from models.checks import check_folder, check_job, check_parts, check_weights_complete
from models.components.denoiser import AnyDoorDenoiser, scene_latents
from models.components.first_stage import SpaceToDepthFirstStage, decode_latents, latent_channels, latent_factor
from models.components.id_encoder import IDEncoder
from models.components.precision import autocast, autocast_state, cached_weight_casts, check_precision
from src.conditioning import DEFAULT_PREPROCESSING, Preprocessing, prepare_reference, prepare_target
from src.image_ops import changed_box, composite_region

log = logging.getLogger(__name__)

SCHEDULERS = ("ddim", "dpm")
DEFAULT_STEPS = {"ddim": 50, "dpm": 20}
DEFAULT_FEATHER = 6  # px of soft seam inside the pasted box/mask


class SamplingSettings(NamedTuple):
    """What a generation samples with; a model folder's ``sampling`` entry holds the same three keys."""

    scheduler: str
    steps: int
    guidance: float

    @classmethod
    def from_config(cls, config: dict[str, Any], what: str = "sampling") -> "SamplingSettings":
        if set(config) != set(cls._fields):
            raise ValueError(f"{what} must have exactly the keys {cls._fields}, got {sorted(config)}")
        settings = cls(str(config["scheduler"]), int(config["steps"]), float(config["guidance"]))
        if settings.scheduler not in SCHEDULERS or settings.steps < 1:
            raise ValueError(f"{what}: scheduler must be one of {SCHEDULERS} and steps >= 1, got {dict(config)}")
        return settings

    def __str__(self) -> str:
        name = {"ddim": "DDIM", "dpm": "DPM-Solver++ 2M"}[self.scheduler]
        return f"{name}, {self.steps} step(s), guidance {self.guidance:g}"


# For a folder that recommends nothing: DPM-Solver++ 2M lands within ~1.5 grey levels of DDIM 50
# in 20 steps (docs/inference.md), 2.5x fewer network passes.
FALLBACK_SAMPLING = SamplingSettings("dpm", DEFAULT_STEPS["dpm"], 5.0)
AUTHORS_SAMPLING = SamplingSettings("ddim", 50, 5.0)  # their run_inference.py: DDIM 50, eta 0, scale 5


@dataclass
class Job:
    """One teleport. Images are uint8 ``H x W x 3`` RGB (reference may be ``H x W x 4`` RGBA, whose
    alpha is the mask); masks ``H x W`` (non-zero = object). Give ``box`` (x1, y1, x2, y2, exclusive
    ends) or ``target_mask``. ``name`` labels errors (e.g. the file names)."""

    reference: np.ndarray
    target: np.ndarray
    reference_mask: np.ndarray | None = None
    box: Sequence[int] | None = None
    target_mask: np.ndarray | None = None
    name: str = ""


@dataclass
class AnyDoorOutput:
    images: list[np.ndarray]  # full-size uint8 RGB with the generated crop pasted back
    crops: list[np.ndarray] = field(default_factory=list)  # uint8 S x S x 3 generated crops
    collages: list[np.ndarray] = field(default_factory=list)  # float32 4 x S x S model inputs
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # crop boxes in the full image
    regions: list[tuple[int, int, int, int] | None] = field(default_factory=list)  # bounding box of changed pixels


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """``B x 3 x S x S`` in [-1, 1] -> uint8 ``S x S x 3`` arrays."""
    images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return list(images.permute(0, 2, 3, 1).cpu().numpy())


def _nchw_input(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (args[0].contiguous(),)


class AnyDoorPipeline(DiffusionPipeline):
    """Parts: ``id_encoder``, ``controlnet``, ``unet``, ``vae`` (AutoencoderKL or the tiny
    space-to-depth first stage), ``scheduler``; ``sampling`` / ``preprocessing``: the folder's
    recommendations (``None``: the fallbacks, with a warning at load); ``collage_residual``: the model
    predicts the clean latent as the collage's latent plus the U-Net's output (the tiny default;
    ``models.components.denoiser``)."""

    model_cpu_offload_seq = "id_encoder->controlnet->unet->vae"

    def __init__(
        self,
        id_encoder: IDEncoder,
        controlnet: ControlNetModel,
        unet: UNet2DConditionModel,
        vae: Union[AutoencoderKL, SpaceToDepthFirstStage],
        scheduler: SchedulerMixin,
        sampling: Optional[dict] = None,
        preprocessing: Optional[dict] = None,
        collage_residual: bool = False,
    ) -> None:
        super().__init__()
        if collage_residual and scheduler.config.prediction_type != "sample":
            raise ValueError("collage_residual needs a model that predicts the clean latent (prediction_type "
                             f"'sample'); the scheduler says {scheduler.config.prediction_type!r}")
        check_parts(id_encoder, controlnet, unet, vae)
        if sampling is not None:
            sampling = SamplingSettings.from_config(dict(sampling))._asdict()
        if preprocessing is not None:
            preprocessing = Preprocessing.from_config(dict(preprocessing))._asdict()
        self.register_modules(id_encoder=id_encoder, controlnet=controlnet, unet=unet, vae=vae, scheduler=scheduler)
        self.register_to_config(sampling=sampling, preprocessing=preprocessing, collage_residual=bool(collage_residual))
        self._uncond_cache: tuple[Any, torch.Tensor] | None = None
        self._layout_hooks: list[Any] = []

    # ------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> "AnyDoorPipeline":
        """diffusers' loader (safetensors only) after checks that name the folder: missing parts,
        pickled weights, a folder of an earlier layout, parts that do not fit together. ``device``
        moves the loaded pipeline there."""
        folder = Path(pretrained_model_name_or_path)
        device = kwargs.pop("device", None)
        check_folder(folder)
        kwargs["use_safetensors"] = True
        if "torch_dtype" in kwargs:  # diffusers' earlier name (deprecated there)
            kwargs["dtype"] = kwargs.pop("torch_dtype")
        try:
            pipe = super().from_pretrained(str(folder), **kwargs)
        except (OSError, ValueError) as err:
            raise ValueError(f"model folder {folder}: {err}") from err
        check_weights_complete(folder, {name: getattr(pipe, name) for name in ("id_encoder", "controlnet", "unet", "vae")})
        if pipe.config.sampling is None:
            log.warning("%s recommends no sampler: using %s unless told", folder, FALLBACK_SAMPLING)
        if pipe.config.preprocessing is None:
            log.warning("%s recommends no preprocessing: using %s unless told", folder, DEFAULT_PREPROCESSING)
        return pipe.to(device) if device is not None else pipe

    def use_channels_last(self, enabled: bool = True) -> "AnyDoorPipeline":
        """NHWC convolutions (oneDNN on CPU: faster per step, docs/inference.md), GroupNorm kept NCHW.

        PyTorch's CPU GroupNorm loses precision in channels-last when a group's mean is large against
        its spread (tiny ControlNet, offset collage embedding: residuals 8.6e-4 off in relative norm,
        1.2e-5 in NCHW, 6e-6 with this NCHW GroupNorm), so its input is made contiguous. Weights are
        copied once, out of their memory-mapped files, into the new layout. Off by default: the
        layout diffusers' own loader gives, and the one the module trains in."""
        for hook in self._layout_hooks:
            hook.remove()
        self._layout_hooks = []
        for module in (self.controlnet, self.unet, self.vae):
            if enabled:
                copy_out_of_mapped_files(module, torch.channels_last)
                self._layout_hooks += [m.register_forward_pre_hook(_nchw_input) for m in module.modules()
                                       if isinstance(m, nn.GroupNorm)]
            else:
                module.to(memory_format=torch.contiguous_format)
        return self

    @property
    def channels_last(self) -> bool:
        return bool(self._layout_hooks)

    # ------------------------------------------------------------------------------ settings

    @property
    def crop_size(self) -> int:
        return int(self.unet.config.sample_size) * latent_factor(self.vae)

    def sampling_settings(self, scheduler: str | None = None, steps: int | None = None,
                          guidance: float | None = None) -> SamplingSettings:
        """The one resolver of sampler, steps and guidance: what the call says, else what the model
        folder recommends (its step count only for its own scheduler), else ``FALLBACK_SAMPLING``
        (DPM-Solver++ 20 steps, guidance 5; DDIM's fallback steps 50)."""
        rec = self.recommended_sampling
        scheduler = scheduler or (rec.scheduler if rec else FALLBACK_SAMPLING.scheduler)
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
        if steps is None:
            steps = rec.steps if rec and rec.scheduler == scheduler else DEFAULT_STEPS[scheduler]
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if guidance is None:
            guidance = rec.guidance if rec else FALLBACK_SAMPLING.guidance
        return SamplingSettings(scheduler, int(steps), float(guidance))

    @property
    def recommended_sampling(self) -> SamplingSettings | None:
        return SamplingSettings.from_config(self.config.sampling) if self.config.sampling else None

    def preprocessing_settings(self, **overrides: float | None) -> Preprocessing:
        """The folder's preprocessing (else ``DEFAULT_PREPROCESSING``) with the given values replaced."""
        base = self.config.preprocessing
        settings = Preprocessing.from_config(base) if base else DEFAULT_PREPROCESSING
        return settings._replace(**{k: float(v) for k, v in overrides.items() if v is not None})

    def make_scheduler(self, name: str = "ddim", timestep_spacing: str | None = None) -> Any:
        """A fresh scheduler: ``ddim`` (eta 0, the authors' sampler; spacing from the saved config, the
        authors' "leading") or ``dpm`` (DPM-Solver++ 2M, default "trailing" spacing)."""
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        if name == "ddim":
            overrides = {} if timestep_spacing is None else {"timestep_spacing": timestep_spacing}
            return DDIMScheduler.from_config(self.scheduler.config, **overrides)
        if name == "dpm":  # trailing: the first step starts at t=999, closest to DDIM 500 on the tiny model
            return DPMSolverMultistepScheduler.from_config(
                self.scheduler.config, algorithm_type="dpmsolver++", solver_order=2,
                timestep_spacing=timestep_spacing or "trailing")
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {name!r}")

    # ------------------------------------------------------------------------------ the steps

    def prepare(self, job: Job, *, mask_channel: str = "box", **preprocessing: float | None,
                ) -> tuple[np.ndarray, Any, np.ndarray]:
        """(reference 3 x R x R in [0, 1], PreparedTarget, target uint8) for one job; ``preprocessing``
        overrides the folder's (``reference_margin``, ``box_ratio``, ``crop_ratio``, ``mask_pad_value``);
        errors name the job."""
        geometry = self.preprocessing_settings(**preprocessing)
        try:
            ref, ref_mask, target, where = check_job(job)
            reference = prepare_reference(ref, ref_mask, rng=None, margin=geometry.reference_margin,
                                          size=self.id_encoder.image_size)
            prepared = prepare_target(target, where, reference, rng=None, size=self.crop_size,
                                      mask_channel=mask_channel if job.box is None else "box",
                                      box_ratio=geometry.box_ratio, crop_ratio=geometry.crop_ratio,
                                      mask_pad_value=geometry.mask_pad_value)
        except ValueError as err:
            raise ValueError(f"{job.name}: {err}" if job.name else str(err)) from err
        return reference.image, prepared, target

    @torch.no_grad()
    def encode_references(self, references: torch.Tensor, guidance: bool) -> torch.Tensor:
        """ID tokens, with the black-reference tokens first when guiding: ``[uncond; cond]``."""
        cond = self.id_encoder(references.to(self.device))
        if not guidance:
            return cond
        return torch.cat([self.unconditional_tokens(references.shape[0]).to(cond.dtype), cond])

    @torch.no_grad()
    def unconditional_tokens(self, batch_size: int) -> torch.Tensor:
        """The black reference's ID tokens, computed once (a full DINOv2 pass) and reused while the
        ID encoder's weights stay the same."""
        weight = self.id_encoder.projector.weight
        key = (weight.device, weight.dtype, weight.data_ptr(), weight._version, autocast_state(weight.device))
        if self._uncond_cache is None or self._uncond_cache[0] != key:
            self._uncond_cache = (key, self.id_encoder.unconditional_tokens(1, device=weight.device))
        return self._uncond_cache[1].expand(batch_size, -1, -1)

    @torch.no_grad()
    def denoise(self, tokens: torch.Tensor, collage: torch.Tensor, *, num_inference_steps: int,
                guidance_scale: float, scheduler: str = "ddim", timestep_spacing: str | None = None,
                eta: float = 0.0, generator: torch.Generator | list[torch.Generator] | None = None,
                latents: torch.Tensor | None = None, progress: bool = True) -> torch.Tensor:
        """Latents from noise; ``tokens`` is ``[uncond; cond]`` when ``guidance_scale != 1``."""
        from diffusers.utils.torch_utils import randn_tensor
        from tqdm.auto import tqdm

        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        guided = guidance_scale != 1.0
        batch = collage.shape[0]
        if tokens.shape[0] != (2 * batch if guided else batch):
            raise ValueError(f"{tokens.shape[0]} token sets for {batch} collages (guided={guided})")
        sched = self.make_scheduler(scheduler, timestep_spacing)
        sched.set_timesteps(num_inference_steps, device=self.device)
        side = self.crop_size // latent_factor(self.vae)
        shape = (batch, latent_channels(self.vae), side, side)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)
        latents = latents.to(self.device, self.dtype) * sched.init_noise_sigma
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        collage = collage.to(self.device, self.dtype)
        collages = (torch.cat([collage, collage]) if guided else collage).contiguous(memory_format=fmt)
        tokens = tokens.to(self.device, self.dtype)
        scene = None
        if self.config.get("collage_residual", False):  # folders written before it have no such entry
            scene = scene_latents(self.vae, collages).to(self.dtype)
        denoiser = AnyDoorDenoiser(self.unet, self.controlnet)
        step_kwargs = {"eta": eta, "generator": generator} if scheduler == "ddim" else {"generator": generator}
        for t in tqdm(sched.timesteps, desc="denoising", disable=not progress, leave=False):
            x = torch.cat([latents, latents]) if guided else latents
            x = sched.scale_model_input(x, t).contiguous(memory_format=fmt)
            eps = denoiser(x, t.expand(x.shape[0]), tokens, collages, scene).to(latents.dtype)  # bf16 under autocast
            if guided:
                uncond, cond = eps.chunk(2)
                eps = uncond + guidance_scale * (cond - uncond)
            latents = sched.step(eps, t, latents, **step_kwargs).prev_sample
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> crops ``B x 3 x S x S`` in [-1, 1] (float32)."""
        return decode_latents(self.vae, latents).float().clamp(-1, 1)

    @torch.no_grad()
    def __call__(
        self,
        jobs: Job | Sequence[Job],
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        scheduler: str | None = None,
        timestep_spacing: str | None = None,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        reference_margin: float | None = None,
        box_ratio: float | None = None,
        crop_ratio: float | None = None,
        mask_pad_value: float | None = None,
        mask_channel: str = "box",
        margin: int = 5,
        feather: int | None = None,
        composite: str = "box",
        mask_dilate: int = 4,
        latents: torch.Tensor | None = None,
        progress: bool = True,
        precision: str = "fp32",
    ) -> AnyDoorOutput:
        """Generate one image per job (a batch when several). Sampler, steps and guidance left out come
        from ``sampling_settings``, the geometry left out from ``preprocessing_settings`` (the model
        folder's, else the fallbacks). ``mask_channel="mask"`` puts a target mask's shape (not its box)
        in the collage's location channel. ``composite``: what is pasted back — ``box`` (default: the
        grown target box; the rest of the image keeps its bytes), ``mask`` (the target mask dilated by
        ``mask_dilate`` px) or ``crop`` (the whole generated crop, as the authors do); ``feather``
        softens the seam inside the region (default ``DEFAULT_FEATHER`` px for box/mask, 0 for crop),
        ``margin`` trims the crop in ``crop`` mode (``CropTransform.paste_back``). The bounding box of
        the pixels that changed is in ``AnyDoorOutput.regions``. ``precision="bf16"``: bf16 autocast
        around the ID encoder, the steps and the decode (``models.components.precision``)."""
        check_precision(precision)
        settings = self.sampling_settings(scheduler, num_inference_steps, guidance_scale)
        jobs = [jobs] if isinstance(jobs, Job) else list(jobs)
        if not jobs:
            raise ValueError("no jobs given")
        geometry = dict(reference_margin=reference_margin, box_ratio=box_ratio, crop_ratio=crop_ratio,
                        mask_pad_value=mask_pad_value)
        prepared = [self.prepare(j, mask_channel=mask_channel, **geometry) for j in jobs]
        refs = torch.from_numpy(np.stack([p[0] for p in prepared]))
        collage = torch.from_numpy(np.stack([p[1].sample["collage"] for p in prepared]))
        # one autocast per part: its cache of bf16 weight copies is freed before the next part runs
        with autocast(precision, self.device):
            tokens = self.encode_references(refs, settings.guidance != 1.0)
        with autocast(precision, self.device), cached_weight_casts(self.unet, self.controlnet):
            latents = self.denoise(tokens, collage, num_inference_steps=settings.steps,
                                   guidance_scale=settings.guidance, scheduler=settings.scheduler,
                                   timestep_spacing=timestep_spacing, eta=eta, generator=generator,
                                   latents=latents, progress=progress)
        with autocast(precision, self.device):
            crops = to_uint8(self.decode(latents))
        out = AnyDoorOutput(images=[], crops=crops, collages=[p[1].sample["collage"] for p in prepared])
        if feather is None:
            feather = 0 if composite == "crop" else DEFAULT_FEATHER
        for job, crop, (_, target_prep, target) in zip(jobs, crops, prepared):
            region = composite_region(composite, target.shape[:2], target_prep.box, job.target_mask, mask_dilate)
            out.images.append(target_prep.transform.paste_back(target, crop, margin=margin, feather=feather,
                                                               region=region))
            out.boxes.append(target_prep.transform.box)
            out.regions.append(changed_box(out.images[-1], target))
        return out


def copy_out_of_mapped_files(module: nn.Module, conv_format: torch.memory_format = torch.contiguous_format
                             ) -> nn.Module:
    """Give every weight its own memory instead of a view of its memory-mapped safetensors file.

    A mapped file stays mapped while any of its tensors lives, and each page once read counts in the
    process's RSS. Channels-last copies of the convolutions alone left ~3.7 GB of such dead pages
    behind: a full-size CPU generation peaked at 14.4 GiB RSS instead of 11.2. ``conv_format`` lays
    out 4-D weights in the same copy."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            fmt = conv_format if tensor.ndim == 4 else torch.contiguous_format
            tensor.data = tensor.data.clone(memory_format=fmt)
    return module
