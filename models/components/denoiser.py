"""U-Net + detail extractor as one denoiser; shared by training and the inference pipeline.

Collage residual (``scene``, the tiny default only; a deviation from the authors): a model whose
prediction is the clean latent (``prediction_type: sample``) can predict it as the collage's own
first-stage latent plus the U-Net's correction. Outside the box the collage *is* the target scene, so
the model starts from a pixel-exact background and learns only what changes (docs/training.md). The
hole (where the location channel is on) starts as the mean colour of the scene around it, the
background-fill guess, rather than the black of the detail map: the map still reaches the model
through the ControlNet.
"""

from __future__ import annotations

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn

from models.components.first_stage import encode_images

DECODER_PARTS = ("up_blocks", "conv_norm_out", "conv_out")


def hole_filled(collage: torch.Tensor) -> torch.Tensor:
    """The collage's RGB (``B x 3 x S x S``) with the hole (location channel > 0.5) set to the mean
    colour of the scene pixels (location channel 0; padding and the hole excluded)."""
    rgb, location = collage[:, :3], collage[:, 3:4]
    scene = (location.abs() < 0.5).to(rgb.dtype)
    mean = (rgb * scene).sum((2, 3), keepdim=True) / scene.sum((2, 3), keepdim=True).clamp(min=1.0)
    return torch.where(location > 0.5, mean, rgb)


def scene_latents(vae: nn.Module, collage: torch.Tensor) -> torch.Tensor:
    """The collage residual's base: ``hole_filled(collage)`` through the first stage (deterministic)."""
    return encode_images(vae, hole_filled(collage), mode=True)


class AnyDoorDenoiser(nn.Module):
    """``forward(noisy, t, id_tokens, collage)``: ControlNet residuals added to U-Net skips + mid block."""

    def __init__(self, unet: UNet2DConditionModel, controlnet: ControlNetModel) -> None:
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        id_tokens: torch.Tensor,
        collage: torch.Tensor,
        scene: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The U-Net's prediction, plus ``scene`` (the collage's latent, collage residual) when given."""
        down_res, mid_res = self.controlnet(
            noisy_latents,
            timesteps,
            encoder_hidden_states=id_tokens,
            controlnet_cond=collage.to(noisy_latents.dtype),
            return_dict=False,
        )
        out = self.unet(
            noisy_latents,
            timesteps,
            encoder_hidden_states=id_tokens,
            down_block_additional_residuals=down_res,
            mid_block_additional_residual=mid_res,
            return_dict=False,
        )[0]
        # in the scene's precision: under bf16 autocast the copied background keeps its fp32 values
        return out if scene is None else out.to(scene.dtype) + scene

    def freeze_unet_encoder(self) -> None:
        """Encoder half frozen (its activations then carry no graph); decoder half trainable."""
        self.unet.requires_grad_(False)
        for name in DECODER_PARTS:
            part = getattr(self.unet, name, None)
            if part is not None:
                part.requires_grad_(True)

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()
        self.controlnet.enable_gradient_checkpointing()
