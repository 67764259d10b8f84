"""Detail extractor: a diffusers ControlNet that sees only the collage (never the noisy latent).

In the reference the hint embedding *replaces* the output of the ControlNet's first conv. We keep
the stock ``ControlNetModel`` (so diffusers can save/load it) and make its ``conv_in`` zero and
frozen: ``conv_in(noisy) == 0``, hence ``conv_in(noisy) + hint(collage) == hint(collage)``.
Hint embedding: 4->16->16->32->32->96->96->256->width, three stride-2 convs, SiLU, last conv zero.
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

HINT_CHANNELS: tuple[int, ...] = (16, 32, 96, 256)
CONDITIONING_CHANNELS = 4  # collage RGB in [-1, 1] + mask channel


def silence_conv_in(controlnet: ControlNetModel) -> ControlNetModel:
    """Zero and freeze ``conv_in`` so the ControlNet output cannot depend on the noisy latent."""
    with torch.no_grad():
        controlnet.conv_in.weight.zero_()
        if controlnet.conv_in.bias is not None:
            controlnet.conv_in.bias.zero_()
    controlnet.conv_in.requires_grad_(False)
    return controlnet


def build_detail_extractor(
    unet: UNet2DConditionModel,
    hint_channels: Sequence[int] = HINT_CHANNELS,
    copy_unet_weights: bool = True,
    zero_hint_conv: bool = True,
) -> ControlNetModel:
    """ControlNet with the U-Net's config (encoder weights copied, as in the reference).

    ``zero_hint_conv=False`` gives the hint embedding's last conv a normal random init: the ControlNet's
    own zero output convs already protect the U-Net, and a from-scratch tiny model otherwise waits
    behind two zero gates in series before the collage reaches it (docs/training.md).
    """
    controlnet = ControlNetModel.from_unet(
        unet,
        conditioning_embedding_out_channels=tuple(hint_channels),
        load_weights_from_unet=copy_unet_weights,
        conditioning_channels=CONDITIONING_CHANNELS,
    )
    if not zero_hint_conv:
        controlnet.controlnet_cond_embedding.conv_out.reset_parameters()
    return silence_conv_in(controlnet)


def load_detail_extractor(directory: str) -> ControlNetModel:
    controlnet = ControlNetModel.from_pretrained(directory)
    if controlnet.config.conditioning_channels != CONDITIONING_CHANNELS:
        raise ValueError(f"{directory}: ControlNet has {controlnet.config.conditioning_channels} "
                         f"conditioning channels, expected {CONDITIONING_CHANNELS}")
    if controlnet.conv_in.weight.abs().max() > 0:
        raise ValueError(f"{directory}: ControlNet conv_in is not zero (it would see the noisy latent)")
    controlnet.conv_in.requires_grad_(False)
    return controlnet
