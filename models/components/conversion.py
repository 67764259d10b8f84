"""Convert the authors' released AnyDoor checkpoint (an LDM/ControlLDM state dict) to our layout.

The renaming itself is diffusers' (``single_file_utils``: U-Net, ControlNet, VAE) and timm's
(``checkpoint_filter_fn``: DINOv2); this module adds what they do not: the AnyDoor-specific parts
(4-channel hint, the ControlNet's unused first conv, the ID projector), and a strict account of
every key. Each converted tensor is traced back to the source tensor it came from (same object or
a view of it), so a key that nothing consumed, a target the model does not have, or a shape the
architecture does not expect is an error naming the key. Works on ``meta`` tensors, so the
full-size mapping is checked without weights.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.components.ldm_configs import (
    ConversionError,
    build_vit,
    controlnet_config_from_ldm,
    load_ldm_config,
    scheduler_config_from_ldm,
    unet_config_from_ldm,
    vae_config_from_ldm,
    vit_config_from_state_dict,
)

# The authors' `configs/anydoor.yaml` (`model.params`), only the fields the conversion reads.
PREFIXES: dict[str, str] = {
    "unet": "model.diffusion_model.",
    "controlnet": "control_model.",
    "vae": "first_stage_model.",
    "dinov2": "cond_stage_model.model.",
    "projector": "cond_stage_model.projector.",
}
# The DDPM schedule is rebuilt by the diffusers scheduler from the config; `logvar` is training-only.
SCHEDULE_BUFFERS: tuple[str, ...] = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
)
# AnyDoor's ControlNet feeds the hint embedding where the first block's output would be, so its
# first conv never runs; diffusers adds conv_in(x) to the hint embedding, hence conv_in := 0.
UNUSED_CONTROLNET_CONV = ("control_model.input_blocks.0.0.weight", "control_model.input_blocks.0.0.bias")
DINOV2_MASK_TOKEN = "mask_token"  # masked-image-modelling token, used only in DINOv2 pre-training


@dataclass
class ConvertedComponent:
    """One sub-folder of the pretrained layout: its config and its (possibly meta) tensors."""

    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    sources: dict[str, str] = field(default_factory=dict)  # target key -> source key


# ----------------------------------------------------------------------------------- conversion


def _strip(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _trace(converted: Mapping[str, torch.Tensor | None], origin: Mapping[int, str], part: str) -> dict[str, str]:
    """Target key -> the source key whose tensor (or a view of it) landed there."""
    sources = {}
    for key, tensor in converted.items():
        if tensor is None:
            raise ConversionError(f"{part}: the checkpoint has no tensor for target {key!r}")
        base = tensor if tensor._base is None else tensor._base
        if id(base) not in origin:
            raise ConversionError(f"{part}: target {key!r} does not come from a checkpoint tensor")
        sources[key] = origin[id(base)]
    return sources


def check_against_model(part: str, component: ConvertedComponent, model: torch.nn.Module) -> None:
    """Strict key and shape match with a (meta) model; errors name both key spaces."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = component.state_dict
    missing = sorted(set(expected) - set(got))
    if missing:
        raise ConversionError(f"{part}: the checkpoint gives no weight for {missing[:5]} ({len(missing)} missing)")
    extra = sorted(set(got) - set(expected))
    if extra:
        src = [component.sources.get(k, k) for k in extra[:5]]
        raise ConversionError(f"{part}: checkpoint keys {src} do not fit the architecture ({len(extra)} extra)")
    for key, shape in expected.items():
        if tuple(got[key].shape) != shape:
            raise ConversionError(
                f"{part}: {component.sources.get(key, key)!r} has shape {tuple(got[key].shape)}, "
                f"the architecture expects {shape} for {key!r}"
            )


def _meta_model(part: str, config: Mapping[str, Any]) -> torch.nn.Module:
    """``part``'s model built on the meta device: shapes without memory or random init. ``dinov2``
    is the bare timm ViT of an ID-encoder config."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    from models.components.id_encoder import IDEncoder

    cls = {"unet": UNet2DConditionModel, "controlnet": ControlNetModel, "vae": AutoencoderKL, "id_encoder": IDEncoder}
    with torch.device("meta"):
        if part == "dinov2":
            return build_vit(config)
        return cls[part](**config)


def convert_dinov2(
    state_dict: Mapping[str, torch.Tensor], num_heads: int | None = None
) -> tuple[ConvertedComponent, list[str]]:
    """Original DINOv2 names -> timm ViT; returns the component (no prefix) and the dropped keys."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    config = vit_config_from_state_dict(state_dict, num_heads)
    model = _meta_model("dinov2", config)
    converted = checkpoint_filter_fn(dict(state_dict), model)
    origin = {id(v): k for k, v in state_dict.items()}
    component = ConvertedComponent(config, converted, _trace(converted, origin, "dinov2"))
    check_against_model("dinov2", component, model)
    dropped = [DINOV2_MASK_TOKEN] if DINOV2_MASK_TOKEN in state_dict else []
    return component, dropped


def _check_schedule(state_dict: Mapping[str, torch.Tensor], scheduler_config: Mapping[str, Any]) -> None:
    """The released buffers must be the schedule the scheduler config rebuilds (skipped on meta)."""
    betas = state_dict.get("betas")
    if betas is None or betas.is_meta:
        return
    from diffusers import DDIMScheduler

    expected = DDIMScheduler.from_config(dict(scheduler_config)).betas
    if betas.shape != expected.shape or not torch.allclose(betas.double(), expected.double(), rtol=1e-4, atol=1e-7):
        raise ConversionError("'betas' in the checkpoint is not the schedule of the given config "
                              f"(linear_start/linear_end/timesteps = {scheduler_config['beta_start']}/"
                              f"{scheduler_config['beta_end']}/{scheduler_config['num_train_timesteps']})")


def convert_anydoor_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    ldm_config: Mapping[str, Any] | None = None,
    vit_num_heads: int | None = None,
    reference_size: int = 224,
    check: bool = True,
) -> dict[str, ConvertedComponent]:
    """Split and rename a ControlLDM state dict into ``unet``, ``controlnet``, ``vae``, ``id_encoder``
    (``vit.*`` + ``projector.*``) and ``scheduler``; every key is consumed or deliberately dropped."""
    from diffusers.loaders.single_file_utils import (
        convert_controlnet_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    config = copy.deepcopy(dict(ldm_config)) if ldm_config is not None else load_ldm_config(None)
    unknown = [k for k in state_dict if k not in SCHEDULE_BUFFERS and not any(k.startswith(p) for p in PREFIXES.values())]
    if unknown:
        raise ConversionError(f"unrecognised checkpoint key {unknown[0]!r} ({len(unknown)} such keys)")
    origin = {id(v): k for k, v in state_dict.items()}
    out: dict[str, ConvertedComponent] = {}

    cfg = unet_config_from_ldm(config)
    sd = convert_ldm_unet_checkpoint(state_dict, cfg)
    out["unet"] = ConvertedComponent(cfg, sd, _trace(sd, origin, "unet"))

    cfg = controlnet_config_from_ldm(config)
    sd = convert_controlnet_checkpoint(state_dict, cfg)  # block counting needs input_blocks.0 present
    sd.pop("conv_in.weight", None), sd.pop("conv_in.bias", None)
    sources = _trace(sd, origin, "controlnet")
    ref = state_dict.get(UNUSED_CONTROLNET_CONV[0])
    if ref is None:
        raise ConversionError(f"controlnet: the checkpoint has no {UNUSED_CONTROLNET_CONV[0]!r}")
    bias = state_dict.get(UNUSED_CONTROLNET_CONV[1])
    sd["conv_in.weight"] = torch.zeros(ref.shape, dtype=ref.dtype, device=ref.device)
    sd["conv_in.bias"] = torch.zeros(bias.shape if bias is not None else ref.shape[:1], dtype=ref.dtype, device=ref.device)
    out["controlnet"] = ConvertedComponent(cfg, sd, sources)

    cfg = vae_config_from_ldm(config)
    sd = convert_ldm_vae_checkpoint(state_dict, cfg)
    out["vae"] = ConvertedComponent(cfg, sd, _trace(sd, origin, "vae"))

    vit, dropped_vit = convert_dinov2(_strip(state_dict, PREFIXES["dinov2"]), vit_num_heads)
    id_sd = {f"vit.{k}": v for k, v in vit.state_dict.items()}
    id_sources = {f"vit.{k}": PREFIXES["dinov2"] + s for k, s in vit.sources.items()}
    for name in ("weight", "bias"):
        key = PREFIXES["projector"] + name
        if key not in state_dict:
            raise ConversionError(f"id_encoder: the checkpoint has no {key!r}")
        id_sd[f"projector.{name}"] = state_dict[key]
        id_sources[f"projector.{name}"] = key
    proj = state_dict[PREFIXES["projector"] + "weight"]
    if proj.ndim != 2 or proj.shape[1] != vit.config["vit_kwargs"]["embed_dim"]:
        raise ConversionError(f"id_encoder: {PREFIXES['projector']}weight has shape {tuple(proj.shape)}, "
                              f"expected (*, {vit.config['vit_kwargs']['embed_dim']})")
    context_dim = out["unet"].config["cross_attention_dim"]
    if proj.shape[0] != context_dim:
        raise ConversionError(f"id_encoder: projector gives {proj.shape[0]}-dim tokens, the U-Net attends "
                              f"to {context_dim}")
    id_config = {**vit.config, "out_dim": int(proj.shape[0]), "image_size": int(reference_size)}  # IDEncoder's
    out["id_encoder"] = ConvertedComponent(id_config, id_sd, id_sources)

    sched = scheduler_config_from_ldm(config)
    _check_schedule(state_dict, sched)
    out["scheduler"] = ConvertedComponent(sched, {})

    if check:
        for part in ("unet", "controlnet", "vae"):
            check_against_model(part, out[part], _meta_model(part, out[part].config))
    dropped = set(SCHEDULE_BUFFERS) | set(UNUSED_CONTROLNET_CONV) | {PREFIXES["dinov2"] + k for k in dropped_vit}
    used = {s for c in out.values() for s in c.sources.values()}
    left = sorted(k for k in state_dict if k not in used and k not in dropped)
    if left:
        raise ConversionError(f"checkpoint key {left[0]!r} is not used by the conversion ({len(left)} such keys)")
    return out


def dropped_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys the conversion deliberately leaves out (for the report)."""
    drop = set(SCHEDULE_BUFFERS) | set(UNUSED_CONTROLNET_CONV) | {PREFIXES["dinov2"] + DINOV2_MASK_TOKEN}
    return sorted(k for k in state_dict if k in drop)


# ---------------------------------------------------------------------------------------- output

def materialize(part: str, component: ConvertedComponent, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The model of ``part`` holding the converted tensors (assigned, not copied)."""
    model = _meta_model(part, component.config)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
             for k, v in component.state_dict.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def save_converted(components: Mapping[str, ConvertedComponent], out_dir: str | Path, dtype: torch.dtype | None = None,
                   sampling: Mapping[str, Any] | None = None, preprocessing: Mapping[str, Any] | None = None) -> None:
    """Write a model folder one part at a time (peak RAM ~ the largest part), each with diffusers'
    ``save_pretrained``; ``model_index.json`` is the config of a pipeline of meta-device parts."""
    from diffusers import DDIMScheduler

    from models.pipeline import AnyDoorPipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for part in ("unet", "controlnet", "vae", "id_encoder"):
        model = materialize(part, components[part], dtype)
        model.save_pretrained(out_dir / part, safe_serialization=True)
        del model
    scheduler = DDIMScheduler.from_config(components["scheduler"].config)
    scheduler.save_pretrained(out_dir / "scheduler")
    parts = {p: _meta_model(p, components[p].config) for p in ("id_encoder", "controlnet", "unet", "vae")}
    AnyDoorPipeline(**parts, scheduler=scheduler, sampling=sampling, preprocessing=preprocessing).save_config(out_dir)
