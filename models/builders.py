"""Build the plain components from local sources: an SD-2.1-style diffusers folder or inline configs."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from models.components.first_stage import SpaceToDepthFirstStage


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
        return UNet2DConditionModel.from_pretrained(str(folder), use_safetensors=True)
    if not unet_config:
        raise ValueError("give either sd_path (a diffusers SD folder) or unet_config (inline)")
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in unet_config.items()}
    return UNet2DConditionModel(**cfg)


def build_vae(sd_path: str | None, spec: dict[str, Any] | None) -> nn.Module:
    """The first stage of a spec: ``{type: vae[, path]}`` (an AutoencoderKL folder, default
    ``sd_path/vae``), ``{type: vae, config: {...}}`` (a random-init AutoencoderKL, benchmarks) or
    ``{type: space_to_depth, factor[, scaling_factor]}``."""
    spec = dict(spec or {"type": "vae"})
    kind = spec.pop("type", "vae")
    if kind == "space_to_depth":
        return SpaceToDepthFirstStage(**spec)
    if kind == "vae":
        from diffusers import AutoencoderKL

        if "config" in spec:
            return AutoencoderKL(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.pop("config").items()})
        path = spec.pop("path", None) or (Path(sd_path) / "vae" if sd_path else None)
        if spec:
            raise ValueError(f"vae spec: unknown keys {sorted(spec)} (the scale is vae/config.json's scaling_factor)")
        if path is None or not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"no diffusers AutoencoderKL at {path}")
        return AutoencoderKL.from_pretrained(str(path), use_safetensors=True)
    raise ValueError(f"unknown first stage type {kind!r} (use 'vae' or 'space_to_depth')")
