"""First stages: images in [-1, 1] <-> latents. One interface for the VAE and the tiny exact stage."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SD_LATENT_SCALE = 0.18215


class SpaceToDepthFirstStage(nn.Module):
    """Exactly invertible pixel (un)shuffle: a random-init VAE decodes garbage, this never does.

    ``scale`` multiplies latents so they have roughly unit variance like SD's scaled VAE latents.
    """

    def __init__(self, factor: int = 4, scale: float = 1.0) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self.factor = factor
        self.scale = scale
        self.latent_channels = 3 * factor * factor

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.shape[-1] % self.factor or images.shape[-2] % self.factor:
            raise ValueError(f"image side {tuple(images.shape[-2:])} is not a multiple of {self.factor}")
        return F.pixel_unshuffle(images, self.factor) * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents / self.scale, self.factor)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = {"_class_name": type(self).__name__, "factor": self.factor, "scale": self.scale}
        (directory / "config.json").write_text(json.dumps(cfg, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "SpaceToDepthFirstStage":
        cfg = json.loads((Path(directory) / "config.json").read_text())
        return cls(factor=int(cfg["factor"]), scale=float(cfg.get("scale", 1.0)))


class VAEFirstStage(nn.Module):
    """diffusers ``AutoencoderKL`` (frozen) with SD's latent scale; ``encode`` samples the posterior."""

    def __init__(self, vae: nn.Module, scale: float = SD_LATENT_SCALE) -> None:
        super().__init__()
        self.vae = vae
        self.scale = scale
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = vae.config.latent_channels
        self.vae.requires_grad_(False)
        self.vae.eval()

    def train(self, mode: bool = True) -> "VAEFirstStage":
        super().train(mode)
        self.vae.eval()
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return dist.sample(generator=generator) * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.vae.dtype) / self.scale).sample

    def save_pretrained(self, directory: str | Path) -> None:
        self.vae.save_pretrained(str(directory))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "VAEFirstStage":
        from diffusers import AutoencoderKL

        return cls(AutoencoderKL.from_pretrained(str(directory)))


def saved_class_name(first_stage: nn.Module) -> str:
    """The class ``model_index.json`` names for a first stage (a VAE is saved as diffusers' own)."""
    return "AutoencoderKL" if isinstance(first_stage, VAEFirstStage) else type(first_stage).__name__


def load_first_stage(directory: str | Path) -> nn.Module:
    """Read either first stage from a pretrained ``vae/`` folder (decided by its config)."""
    cfg = json.loads((Path(directory) / "config.json").read_text())
    if cfg.get("_class_name") == SpaceToDepthFirstStage.__name__:
        return SpaceToDepthFirstStage.from_pretrained(directory)
    return VAEFirstStage.from_pretrained(directory)
