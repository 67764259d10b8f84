"""Build the plain components from local sources: an SD-2.1-style diffusers folder or inline configs."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from models.components.first_stage import SpaceToDepthFirstStage, VAEFirstStage

# Tiny U-Net with SD-2.1's block layout (cross-attention down/up blocks, linear projections).
TINY_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=16,
    in_channels=48,
    out_channels=48,
    block_out_channels=(64, 128, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=4,
    use_linear_projection=True,
    norm_num_groups=32,
)


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Deterministic random init without touching the caller's global RNG state.

    Frozen random-init parts of the tiny model are not stored in checkpoints; rebuilding them with
    the same seed reproduces them exactly.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_unet(sd_path: str | None, unet_config: dict[str, Any] | None) -> UNet2DConditionModel:
    if sd_path:
        folder = Path(sd_path) / "unet"
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no diffusers U-Net at {folder} (expected config.json + weights)")
        return UNet2DConditionModel.from_pretrained(str(folder))
    if not unet_config:
        raise ValueError("give either sd_path (a diffusers SD folder) or unet_config (inline)")
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in unet_config.items()}
    return UNet2DConditionModel(**cfg)


def build_first_stage(sd_path: str | None, spec: dict[str, Any] | None) -> nn.Module:
    spec = dict(spec or {"type": "vae"})
    kind = spec.pop("type", "vae")
    if kind == "space_to_depth":
        return SpaceToDepthFirstStage(**spec)
    if kind == "vae":
        from diffusers import AutoencoderKL

        path = spec.pop("path", None) or (Path(sd_path) / "vae" if sd_path else None)
        if path is None or not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"no diffusers AutoencoderKL at {path}")
        return VAEFirstStage(AutoencoderKL.from_pretrained(str(path)), **spec)
    raise ValueError(f"unknown first stage type {kind!r} (use 'vae' or 'space_to_depth')")
