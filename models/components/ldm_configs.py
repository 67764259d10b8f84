"""The authors' model YAML (their ``configs/anydoor.yaml``, ``model.params``) -> diffusers/timm configs.

The released architecture is ``RELEASED_LDM_CONFIG``; ``anydoor convert --config`` reads another of
the same family. The U-Net and VAE configs are diffusers' own derivations (``single_file_utils``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from models.components.detail_extractor import COLLAGE_EMBEDDING_CHANNELS

_LDM_UNET_PARAMS: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_head_channels": 64,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "transformer_depth": 1,
    "context_dim": 1024,
    "legacy": False,
}
RELEASED_LDM_CONFIG: dict[str, Any] = {
    "model": {
        "params": {
            "linear_start": 0.00085,
            "linear_end": 0.0120,
            "timesteps": 1000,
            "image_size": 64,
            "channels": 4,
            "scale_factor": 0.18215,
            "control_stage_config": {"params": {**_LDM_UNET_PARAMS, "hint_channels": 4}},
            "unet_config": {"params": dict(_LDM_UNET_PARAMS)},
            "first_stage_config": {
                "params": {
                    "embed_dim": 4,
                    "ddconfig": {
                        "double_z": True,
                        "z_channels": 4,
                        "resolution": 256,
                        "in_channels": 3,
                        "out_ch": 3,
                        "ch": 128,
                        "ch_mult": [1, 2, 4, 4],
                        "num_res_blocks": 2,
                        "attn_resolutions": [],
                    },
                }
            },
        }
    }
}


class ConversionError(ValueError):
    """A checkpoint does not match the architecture; the message names the key."""


# ----------------------------------------------------------------------------------------- input


def load_ldm_config(path: str | Path | None) -> dict[str, Any]:
    """The authors' model YAML (``model.params`` with ``unet_config`` ...), default the released one."""
    if path is None:
        return copy.deepcopy(RELEASED_LDM_CONFIG)
    import yaml

    with open(path) as f:
        config = yaml.safe_load(f)
    try:
        params = config["model"]["params"]
        for name in ("unet_config", "control_stage_config", "first_stage_config"):
            params[name]["params"]
    except (KeyError, TypeError) as err:
        raise ConversionError(f"{path}: not the authors' model YAML (their configs/anydoor.yaml format: "
                              "model.params.unet_config / control_stage_config / first_stage_config with "
                              f"params); missing {err}") from err
    return config


# ------------------------------------------------------------------------------------- configs


def _ldm_for_unet(config: Mapping[str, Any], unet_params: Mapping[str, Any]) -> dict[str, Any]:
    params = config["model"]["params"]
    return {"model": {"params": {"unet_config": {"params": dict(unet_params)},
                                 "first_stage_config": params["first_stage_config"]}}}


def unet_config_from_ldm(config: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers UNet2DConditionModel config from the authors' ``unet_config``."""
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    params = config["model"]["params"]
    out = create_unet_diffusers_config_from_ldm(_ldm_for_unet(config, params["unet_config"]["params"]), {})
    out["sample_size"] = int(params.get("image_size", 64))
    return out


def controlnet_config_from_ldm(config: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers ControlNetModel config from ``control_stage_config`` (not from the U-Net's)."""
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    control = dict(config["model"]["params"]["control_stage_config"]["params"])
    control.setdefault("out_channels", control["in_channels"])
    unet = create_unet_diffusers_config_from_ldm(_ldm_for_unet(config, control), {})
    keep = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
            "attention_head_dim", "use_linear_projection", "transformer_layers_per_block")
    return {**{k: unet[k] for k in keep}, "conditioning_channels": int(control["hint_channels"]),
            "conditioning_embedding_out_channels": list(COLLAGE_EMBEDDING_CHANNELS)}


def vae_config_from_ldm(config: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers AutoencoderKL config (scaling factor from ``scale_factor``)."""
    from diffusers.loaders.single_file_utils import create_vae_diffusers_config_from_ldm

    out = create_vae_diffusers_config_from_ldm(config, {})
    ddconfig = config["model"]["params"]["first_stage_config"]["params"]["ddconfig"]
    out["sample_size"] = int(config["model"]["params"].get("image_size", 64)) * 2 ** (len(ddconfig["ch_mult"]) - 1)
    return out


def scheduler_config_from_ldm(config: Mapping[str, Any]) -> dict[str, Any]:
    """DDIM config reproducing the authors' DDPM schedule and their DDIM sampler's timesteps.

    ``make_beta_schedule('linear')`` is linear in sqrt(beta) = diffusers' "scaled_linear"; their
    uniform DDIM discretisation (range(0, T, T // n) + 1, alpha_prev of the last step =
    alphas_cumprod[0]) is "leading" spacing with steps_offset 1 and set_alpha_to_one False.
    """
    params = config["model"]["params"]
    return {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": int(params.get("timesteps", 1000)),
        "beta_start": float(params.get("linear_start", 0.00085)),
        "beta_end": float(params.get("linear_end", 0.012)),
        "beta_schedule": "scaled_linear",
        "prediction_type": "v_prediction" if params.get("parameterization") == "v" else "epsilon",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    }


def vit_config_from_state_dict(state_dict: Mapping[str, torch.Tensor], num_heads: int | None = None) -> dict[str, Any]:
    """timm ``create_model`` arguments for an original-DINOv2 state dict, from tensor shapes.

    Head count is not visible in the weights; DINOv2 uses 64-dim heads, so it defaults to dim // 64.
    """
    try:
        dim = state_dict["cls_token"].shape[-1]
        patch = state_dict["patch_embed.proj.weight"].shape[-1]
        tokens = state_dict["pos_embed"].shape[1] - 1
        fc1 = state_dict["blocks.0.mlp.w12.weight" if "blocks.0.mlp.w12.weight" in state_dict
                         else "blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as err:
        raise ConversionError(f"DINOv2 weights lack {err.args[0]!r}") from err
    depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ConversionError(f"DINOv2 pos_embed has {tokens} patch tokens, not a square grid")
    if num_heads is None:
        if dim % 64:
            raise ConversionError(f"DINOv2 width {dim} is not a multiple of 64: pass the number of heads")
        num_heads = dim // 64
    swiglu = "blocks.0.mlp.w12.weight" in state_dict
    return {
        "model_name": "vit_giant_patch14_dinov2" if swiglu else "vit_large_patch14_dinov2",
        "vit_kwargs": {
            "img_size": grid * patch,
            "patch_size": int(patch),
            "embed_dim": int(dim),
            "depth": int(depth),
            "num_heads": int(num_heads),
            "mlp_ratio": (fc1 + 0.5) / dim,  # timm takes int(dim * ratio) hidden units
            "init_values": 1e-5 if "blocks.0.ls1.gamma" in state_dict else None,
        },
    }


def build_vit(config: Mapping[str, Any]) -> torch.nn.Module:
    """The timm ViT of an ID-encoder config (``model_name`` + ``vit_kwargs``, as IDEncoder stores it)."""
    import timm

    return timm.create_model(config["model_name"], pretrained=False, num_classes=0, **config["vit_kwargs"])
