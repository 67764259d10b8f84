"""U-Net + detail extractor as one denoiser; shared by training and the inference pipeline."""

from __future__ import annotations

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn

DECODER_PARTS = ("up_blocks", "conv_norm_out", "conv_out")


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
    ) -> torch.Tensor:
        down_res, mid_res = self.controlnet(
            noisy_latents,
            timesteps,
            encoder_hidden_states=id_tokens,
            controlnet_cond=collage.to(noisy_latents.dtype),
            return_dict=False,
        )
        return self.unet(
            noisy_latents,
            timesteps,
            encoder_hidden_states=id_tokens,
            down_block_additional_residuals=down_res,
            mid_block_additional_residual=mid_res,
            return_dict=False,
        )[0]

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
