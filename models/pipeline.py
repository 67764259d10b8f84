"""AnyDoorPipeline: teleport a reference object into a target image (diffusers-style save/load).

One call: reference -> ID tokens (DINOv2 + projector); target -> square crop around the grown box
with the collage (target crop + the reference's high-frequency map in the box + location channel);
noise -> latents by a diffusers scheduler with classifier-free guidance (cond and uncond in one
batch; the uncond branch keeps the collage and uses the ID tokens of an all-black reference, as
the authors do) -> decoded crop pasted back into the full image (pixels outside the crop unchanged).
Image preparation is ``src.conditioning`` with ``rng=None``, the same code the training data uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from models.components.denoiser import AnyDoorDenoiser
from models.components.detail_extractor import load_detail_extractor
from models.components.first_stage import SpaceToDepthFirstStage, VAEFirstStage, load_first_stage, saved_class_name
from models.components.id_encoder import IDEncoder
from src.conditioning import DEFAULT_BOX_GROW, DEFAULT_CROP_GROW, prepare_reference, prepare_target
from src.image_ops import changed_box, composite_region

PARTS = ("id_encoder", "controlnet", "unet", "vae", "scheduler")
SCHEDULERS = ("ddim", "dpm")
DEFAULT_STEPS = {"ddim": 50, "dpm": 20}
DEFAULT_GUIDANCE = 5.0
DEFAULT_FEATHER = 6  # px of soft seam inside the pasted box/mask
# Optional keys of model_index.json: the sampler a model was trained for (e.g. the tiny default's one
# trailing DDIM step without guidance); used when a call does not say.
SAMPLING_KEYS = ("sample_scheduler", "sample_steps", "guidance_scale")


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


def write_model_index(directory: str | Path, first_stage: str = "AutoencoderKL",
                      scheduler: str = "DDIMScheduler", sampling: dict[str, Any] | None = None) -> Path:
    """``model_index.json``: which class each sub-folder holds (diffusers convention), plus the
    model's recommended sampling (``SAMPLING_KEYS``) when given."""
    import diffusers

    fs_lib = "diffusers" if first_stage == "AutoencoderKL" else "models.components.first_stage"
    index = {
        "_class_name": "AnyDoorPipeline",
        "_diffusers_version": diffusers.__version__,
        "id_encoder": ["models.components.id_encoder", "IDEncoder"],
        "controlnet": ["diffusers", "ControlNetModel"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": [fs_lib, first_stage],
        "scheduler": ["diffusers", scheduler],
    }
    unknown = set(sampling or {}) - set(SAMPLING_KEYS)
    if unknown:
        raise ValueError(f"unknown sampling keys {sorted(unknown)}; known: {SAMPLING_KEYS}")
    index.update(sampling or {})
    path = Path(directory) / "model_index.json"
    path.write_text(json.dumps(index, indent=2) + "\n")
    return path


def _check_uint8_image(image: Any, what: str, channels: tuple[int, ...] = (3,)) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] not in channels or image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 H x W x {'/'.join(map(str, channels))}, "
                         f"got {image.dtype} {image.shape}")
    return image


def _check_mask(mask: Any, hw: tuple[int, int], what: str) -> np.ndarray:
    """An ``H x W`` (or ``H x W x C``, first channel) mask of the image's size with an object: uint8 {0, 1}."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != tuple(hw):
        raise ValueError(f"{what} is {mask.shape[1]} x {mask.shape[0]}, its image {hw[1]} x {hw[0]}")
    if not mask.any():
        raise ValueError(f"{what} is empty (no object pixel)")
    return (mask > 0).astype(np.uint8)


def _check_box(box: Sequence[int], hw: tuple[int, int], what: str) -> tuple[int, int, int, int]:
    if len(box) != 4:
        raise ValueError(f"{what}: a box is (x1, y1, x2, y2), got {tuple(box)}")
    x1, y1, x2, y2 = (int(v) for v in box)
    h, w = hw
    if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
        raise ValueError(f"{what}: box {(x1, y1, x2, y2)} is degenerate or outside the {w} x {h} image "
                         "(need 0 <= x1 < x2 <= width, 0 <= y1 < y2 <= height, exclusive ends)")
    return x1, y1, x2, y2


class AnyDoorPipeline:
    """Components as attributes: ``id_encoder``, ``controlnet``, ``unet``, ``vae`` (first stage), ``scheduler``."""

    def __init__(self, id_encoder: IDEncoder, controlnet: nn.Module, unet: nn.Module, vae: nn.Module,
                 scheduler: Any, crop_size: int | None = None, sampling: dict[str, Any] | None = None) -> None:
        if controlnet.conv_in.weight.abs().max() > 0:
            raise ValueError("controlnet.conv_in must be zero: AnyDoor's ControlNet never sees the noisy latent")
        self.id_encoder = id_encoder.eval()
        self.controlnet = controlnet.eval()
        self.unet = unet.eval()
        self.vae = vae.eval()
        self.scheduler = scheduler
        self.denoiser = AnyDoorDenoiser(unet, controlnet)
        self._uncond_cache: tuple[Any, torch.Tensor] | None = None
        self._channels_last = False
        self.crop_size = int(crop_size or unet.config.sample_size * vae.factor)
        self.sampling_defaults = {k: v for k, v in (sampling or {}).items() if k in SAMPLING_KEYS}

    def sampling_settings(self, scheduler: str | None = None, steps: int | None = None,
                          guidance: float | None = None, default_scheduler: str = "ddim") -> tuple[str, int, float]:
        """(scheduler, steps, guidance): what the call says, else what the model folder recommends
        (``sampling_defaults``; its step count only for its own scheduler), else ``default_scheduler``
        with DDIM 50 / DPM-Solver++ 20 steps and guidance 5."""
        rec = self.sampling_defaults
        rec_scheduler = rec.get("sample_scheduler", "ddim")
        scheduler = scheduler or (rec_scheduler if "sample_steps" in rec else default_scheduler)
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
        if steps is None:
            steps = rec["sample_steps"] if "sample_steps" in rec and scheduler == rec_scheduler else DEFAULT_STEPS[scheduler]
        if guidance is None:
            guidance = rec.get("guidance_scale", DEFAULT_GUIDANCE)
        return scheduler, int(steps), float(guidance)

    # ------------------------------------------------------------------------------ persistence

    @classmethod
    def from_pretrained(cls, directory: str | Path, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None) -> "AnyDoorPipeline":
        from diffusers import UNet2DConditionModel

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"model folder {directory} does not exist")
        missing = [p for p in PARTS if not (directory / p / ("scheduler_config.json" if p == "scheduler"
                                                              else "config.json")).is_file()]
        if missing:
            raise FileNotFoundError(f"model folder {directory} is missing {', '.join(missing)} "
                                    "(expected model_index.json, id_encoder/, controlnet/, unet/, vae/, scheduler/; "
                                    "see docs/design.md; `anydoor convert` writes this layout)")
        loaders = {
            "id_encoder": lambda d: IDEncoder.from_pretrained(d),
            "controlnet": lambda d: load_detail_extractor(str(d)),
            "unet": lambda d: UNet2DConditionModel.from_pretrained(str(d)),
            "vae": load_first_stage,
            "scheduler": _load_scheduler,
        }
        parts = {}
        for name, load in loaders.items():
            try:
                parts[name] = load(directory / name)
            except (OSError, ValueError, KeyError) as err:  # diffusers reports missing weights as OSError
                raise FileNotFoundError(f"model folder {directory}: cannot load {name}/ ({err})") from err
        index_path = directory / "model_index.json"
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
        pipe = cls(**parts, sampling={k: index[k] for k in SAMPLING_KEYS if k in index})
        if torch.device(device or "cpu").type == "cpu" and torch_dtype in (None, pipe.dtype):
            # .to() below copies nothing; copy once, straight into the faster CPU layout (ViT: no convs)
            for name in ("controlnet", "unet", "vae"):
                copy_out_of_mapped_files(parts[name], torch.channels_last)
            pipe._channels_last = True
        return pipe.to(device=device, dtype=torch_dtype)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.id_encoder.save_pretrained(directory / "id_encoder")
        self.controlnet.save_pretrained(str(directory / "controlnet"))
        self.unet.save_pretrained(str(directory / "unet"))
        self.vae.save_pretrained(directory / "vae")
        self.scheduler.save_pretrained(str(directory / "scheduler"))
        write_model_index(directory, saved_class_name(self.vae), type(self.scheduler).__name__, self.sampling_defaults)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "AnyDoorPipeline":
        if dtype == self.dtype:
            dtype = None  # diffusers warns on every no-op cast
        if device is not None and torch.device(device) == self.device:
            device = None
        if device is None and dtype is None:
            return self
        for module in (self.id_encoder, self.controlnet, self.unet, self.vae):
            module.to(device=device, dtype=dtype)
        return self

    def use_channels_last(self, enabled: bool = True) -> "AnyDoorPipeline":
        """NHWC convolutions (oneDNN); measured 7-33 % faster per guided step on the 2-core CPU."""
        fmt = torch.channels_last if enabled else torch.contiguous_format
        for module in (self.controlnet, self.unet, self.vae):
            module.to(memory_format=fmt)
        self._channels_last = enabled
        return self

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    # --------------------------------------------------------------------------------- sampling

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

    def prepare(self, job: Job, *, crop_ratio: float = DEFAULT_CROP_GROW, box_ratio: float = DEFAULT_BOX_GROW,
                mask_channel: str = "box") -> tuple[np.ndarray, Any, Any]:
        """(reference 3 x 224 x 224 in [0, 1], PreparedTarget, target uint8) for one job; errors name the job."""
        label = f"{job.name}: " if job.name else ""
        try:
            ref = _check_uint8_image(job.reference, "reference image", (3, 4))
            ref_mask = job.reference_mask
            if ref_mask is None:
                if ref.shape[2] != 4:
                    raise ValueError("reference has no mask: give a reference mask or an RGBA reference")
                ref_mask = ref[..., 3] > 127
            ref = np.ascontiguousarray(ref[..., :3])
            ref_mask = _check_mask(ref_mask, ref.shape[:2], "reference mask")
            target = _check_uint8_image(job.target, "target image")
            if (job.box is None) == (job.target_mask is None):
                raise ValueError("give exactly one of a target box and a target mask")
            if job.box is not None:
                where: Any = _check_box(job.box, target.shape[:2], "target")
                mode = "box"
            else:
                where = _check_mask(job.target_mask, target.shape[:2], "target mask")
                mode = mask_channel
            reference = prepare_reference(ref, ref_mask, rng=None,
                                          size=self.id_encoder.image_size)
            prepared = prepare_target(target, where, reference, rng=None, size=self.crop_size,
                                      mask_channel=mode, box_ratio=box_ratio, crop_ratio=crop_ratio)
        except ValueError as err:
            raise ValueError(f"{label}{err}") from err
        return reference.image, prepared, target

    @torch.no_grad()
    def encode_references(self, references: torch.Tensor, guidance: bool) -> torch.Tensor:
        """ID tokens, with the black-reference tokens first when guiding: ``[uncond; cond]``."""
        cond = self.id_encoder(references)
        if not guidance:
            return cond
        return torch.cat([self.unconditional_tokens(references.shape[0]).to(cond.dtype), cond])

    @torch.no_grad()
    def unconditional_tokens(self, batch_size: int) -> torch.Tensor:
        """The black reference's ID tokens, computed once (a full DINOv2 pass) and reused while the
        ID encoder's weights stay the same."""
        weight = self.id_encoder.projector.weight
        key = (weight.device, weight.dtype, weight.data_ptr(), weight._version)
        if self._uncond_cache is None or self._uncond_cache[0] != key:
            self._uncond_cache = (key, self.id_encoder.unconditional_tokens(1, device=weight.device))
        return self._uncond_cache[1].expand(batch_size, -1, -1)

    @torch.no_grad()
    def sample(self, tokens: torch.Tensor, collage: torch.Tensor, *, num_inference_steps: int = 50,
               guidance_scale: float = 5.0, scheduler: str = "ddim", timestep_spacing: str | None = None,
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
        side = self.crop_size // self.vae.factor
        shape = (batch, self.vae.latent_channels, side, side)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)
        latents = latents.to(self.device, self.dtype) * sched.init_noise_sigma
        fmt = torch.channels_last if self._channels_last else torch.contiguous_format
        collage = collage.to(self.device, self.dtype)
        hint = (torch.cat([collage, collage]) if guided else collage).contiguous(memory_format=fmt)
        tokens = tokens.to(self.device, self.dtype)
        step_kwargs = {"eta": eta, "generator": generator} if scheduler == "ddim" else {"generator": generator}
        for t in tqdm(sched.timesteps, desc="denoising", disable=not progress, leave=False):
            x = torch.cat([latents, latents]) if guided else latents
            x = sched.scale_model_input(x, t).contiguous(memory_format=fmt)
            eps = self.denoiser(x, t.expand(x.shape[0]), tokens, hint)
            if guided:
                uncond, cond = eps.chunk(2)
                eps = uncond + guidance_scale * (cond - uncond)
            latents = sched.step(eps, t, latents, **step_kwargs).prev_sample
        return latents

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
        crop_ratio: float = DEFAULT_CROP_GROW,
        box_ratio: float = DEFAULT_BOX_GROW,
        mask_channel: str = "box",
        margin: int = 5,
        feather: int | None = None,
        composite: str = "box",
        mask_dilate: int = 4,
        latents: torch.Tensor | None = None,
        progress: bool = True,
    ) -> AnyDoorOutput:
        """Generate one image per job (a batch when several). Sampler, steps and guidance left out come
        from ``sampling_settings`` (the model folder's recommendation, else DDIM 50 steps, guidance 5).
        ``mask_channel="mask"`` puts a target mask's shape (not its box) in the collage's location
        channel. ``composite``: what is pasted back — ``box`` (default: the grown target box; the rest
        of the image keeps its bytes), ``mask`` (the target mask dilated by ``mask_dilate`` px) or
        ``crop`` (the whole generated crop, as the authors do); ``feather`` softens the seam inside the
        region (default ``DEFAULT_FEATHER`` px for box/mask, 0 for crop), ``margin`` trims the crop in ``crop`` mode (``CropTransform.paste_back``). The changed
        region's bounding box is in ``AnyDoorOutput.regions``."""
        scheduler, num_inference_steps, guidance_scale = self.sampling_settings(
            scheduler, num_inference_steps, guidance_scale)
        jobs = [jobs] if isinstance(jobs, Job) else list(jobs)
        if not jobs:
            raise ValueError("no jobs given")
        prepared = [self.prepare(j, crop_ratio=crop_ratio, box_ratio=box_ratio, mask_channel=mask_channel)
                    for j in jobs]
        refs = torch.from_numpy(np.stack([p[0] for p in prepared])).to(self.device)
        collage = torch.from_numpy(np.stack([p[1].sample["collage"] for p in prepared]))
        tokens = self.encode_references(refs, guidance_scale != 1.0)
        latents = self.sample(tokens, collage, num_inference_steps=num_inference_steps,
                              guidance_scale=guidance_scale, scheduler=scheduler, timestep_spacing=timestep_spacing,
                              eta=eta, generator=generator, latents=latents, progress=progress)
        crops = self.decode(latents)
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

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[np.ndarray]:
        """Latents -> uint8 ``S x S x 3`` crops."""
        images = self.vae.decode(latents).float().clamp(-1, 1)
        images = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return list(images)


def copy_out_of_mapped_files(module: nn.Module, conv_format: torch.memory_format = torch.contiguous_format
                             ) -> nn.Module:
    """Give every weight its own memory instead of a view of its memory-mapped safetensors file.

    A mapped file stays mapped while any of its tensors lives, and each page once read counts in the
    process's RSS. Channels-last copies of the convolutions left ~3.7 GB of such dead pages behind:
    a full-size CPU generation peaked at 14.4 GiB RSS instead of 11.2. The ViT (no convolutions)
    stays mapped: lazy, and never copied. ``conv_format`` lays out 4-D weights (channels-last on CPU)
    in the same copy, so a later ``use_channels_last`` copies nothing."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            fmt = conv_format if tensor.ndim == 4 else torch.contiguous_format
            tensor.data = tensor.data.clone(memory_format=fmt)
    return module


def _load_scheduler(directory: Path) -> Any:
    import diffusers

    config = json.loads((directory / "scheduler_config.json").read_text())
    cls = getattr(diffusers, config.get("_class_name", "DDIMScheduler"), None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ValueError(f"{directory}: unknown scheduler class {config.get('_class_name')!r}")
    return cls.from_pretrained(str(directory))


# Tiny stand-in (random init) for tests and `--size tiny` benchmarks: 32 px crops, exact first stage.
TINY_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=8, in_channels=48, out_channels=48, block_out_channels=(32, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1, cross_attention_dim=32, attention_head_dim=4, use_linear_projection=True, norm_num_groups=8,
)
TINY_ID_ENCODER: dict[str, Any] = dict(
    model_name="vit_custom", out_dim=32, image_size=28,
    vit_kwargs=dict(patch_size=14, embed_dim=32, depth=1, num_heads=2, init_values=1e-5, img_size=518),
)


def random_pipeline(size: str = "tiny", seed: int = 0) -> AnyDoorPipeline:
    """A random-init pipeline: ``tiny`` (above) or ``full`` (the released architecture, fp32, ~2.4 B params)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from models.components import conversion
    from models.components.detail_extractor import build_detail_extractor

    sched = DDIMScheduler.from_config(conversion.scheduler_config_from_ldm(conversion.RELEASED_LDM_CONFIG))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if size == "tiny":
            unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
            controlnet = build_detail_extractor(unet, (16, 32, 96))
            vae: nn.Module = SpaceToDepthFirstStage(factor=4)
            id_encoder = IDEncoder(**TINY_ID_ENCODER)
        elif size == "full":
            ldm = conversion.RELEASED_LDM_CONFIG
            unet = UNet2DConditionModel(**conversion.unet_config_from_ldm(ldm))
            controlnet = build_detail_extractor(unet)
            vae = VAEFirstStage(AutoencoderKL(**conversion.vae_config_from_ldm(ldm)))
            id_encoder = IDEncoder(out_dim=unet.config.cross_attention_dim)
        else:
            raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    return AnyDoorPipeline(id_encoder, controlnet, unet, vae, sched)
