"""The first stage (the pipeline's ``vae``): images in [-1, 1] <-> scaled latents.

Two models fill that place: diffusers' ``AutoencoderKL`` (the full model) and the tiny, exactly
invertible ``SpaceToDepthFirstStage``. Both are diffusers models, so a model folder's ``vae/`` holds
either with diffusers' own save/load. The three functions below are the one place that turns
images into latents and back; the latent scale is always the model's ``config.scaling_factor`` (the
value in ``vae/config.json``, 0.18215 for SD's VAE), never a constant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class SpaceToDepthFirstStage(ModelMixin, ConfigMixin):
    """Pixel (un)shuffle by ``factor``: a random-init VAE decodes garbage, this never does.

    Parameter-free: its folder holds only ``config.json`` (``factor``, ``scaling_factor``).
    """

    @register_to_config
    def __init__(self, factor: int = 4, scaling_factor: float = 1.0) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        # Not saved: gives this weightless model the device and dtype diffusers' pipeline asks for.
        self.register_buffer("placement", torch.zeros(()), persistent=False)

    @property
    def latent_channels(self) -> int:
        return 3 * self.config.factor**2

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (``B x 3f² x H/f x W/f``)."""
        f = self.config.factor
        if images.shape[-1] % f or images.shape[-2] % f:
            raise ValueError(f"image side {tuple(images.shape[-2:])} is not a multiple of {f}")
        return F.pixel_unshuffle(images, f)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents, self.config.factor)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> "SpaceToDepthFirstStage":
        """From ``config.json`` alone (there are no weights; diffusers' loader passes weight options,
        which have nothing to act on)."""
        return cls.from_config(cls.load_config(str(pretrained_model_name_or_path)))

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        self.save_config(str(save_directory))


def latent_factor(vae: nn.Module) -> int:
    """How many pixels one latent spans per side."""
    if isinstance(vae, SpaceToDepthFirstStage):
        return int(vae.config.factor)
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_channels(vae: nn.Module) -> int:
    if isinstance(vae, SpaceToDepthFirstStage):
        return vae.latent_channels
    return int(vae.config.latent_channels)


@torch.no_grad()
def encode_images(vae: nn.Module, images: torch.Tensor, generator: torch.Generator | None = None,
                  mode: bool = False) -> torch.Tensor:
    """Scaled latents of images in [-1, 1]; a VAE's posterior is sampled with ``generator``, or its
    mode taken (``mode``: a deterministic encoding, e.g. of the collage's scene)."""
    if isinstance(vae, SpaceToDepthFirstStage):
        latents = vae.encode(images)
    else:
        posterior = vae.encode(images.to(vae.dtype)).latent_dist
        latents = posterior.mode() if mode else posterior.sample(generator=generator)
    return latents * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Images (about [-1, 1], not clamped) of scaled latents."""
    if isinstance(vae, SpaceToDepthFirstStage):
        return vae.decode(latents / vae.config.scaling_factor)
    return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
