"""The released architecture with random weights (no download), for the speed and memory benchmarks.

SD-2.1-base-shaped U-Net, ControlNet and VAE (from the authors' model config, as `anydoor convert`
reads it) and a DINOv2 ViT-g/14 ID encoder, built as the training module builds them.
"""

from __future__ import annotations

from typing import Any

from models.anydoor_module import AnyDoorModule
from models.components import ldm_configs


def released_parts() -> dict[str, Any]:
    """``AnyDoorModule`` arguments that inline the released U-Net, VAE and ViT in place of weight files."""
    ldm = ldm_configs.RELEASED_LDM_CONFIG
    return dict(unet_config=ldm_configs.unet_config_from_ldm(ldm),
                vae={"type": "vae", "config": ldm_configs.vae_config_from_ldm(ldm)},
                id_encoder={"model_name": "vit_giant_patch14_dinov2"})


def full_size_module(**overrides: Any) -> AnyDoorModule:
    args: dict[str, Any] = dict(**released_parts(), noise_schedule={"timestep_spacing": "leading"}, sample_steps=50,
                                guidance_scale=5.0)
    return AnyDoorModule(**{**args, **overrides})
