"""Detail extractor: a diffusers ControlNet that sees only the collage (never the noisy latent).

In the reference the collage embedding (their ``input_hint_block``) *replaces* the output of the
ControlNet's first conv. We keep the stock ``ControlNetModel`` (so diffusers can save/load it) and
make its ``conv_in`` zero and frozen: ``conv_in(noisy) == 0``, hence
``conv_in(noisy) + embed(collage) == embed(collage)``.
Collage embedding: 4->16->16->32->32->96->96->256->width, three stride-2 convs, SiLU, last conv zero.
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from src.collage import COLLAGE_CHANNELS

COLLAGE_EMBEDDING_CHANNELS: tuple[int, ...] = (16, 32, 96, 256)  # fixed in the authors' ControlNet


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
    embedding_channels: Sequence[int] = COLLAGE_EMBEDDING_CHANNELS,
    copy_unet_weights: bool = True,
    zero_init_embedding: bool = True,
) -> ControlNetModel:
    """ControlNet with the U-Net's config (encoder weights copied, as in the reference).

    ``zero_init_embedding=False`` gives the collage embedding's last conv a normal random init: the
    ControlNet's own zero output convs already protect the U-Net, and a from-scratch tiny model
    otherwise waits behind two zero gates in series before the collage reaches it (docs/training.md).
    """
    controlnet = ControlNetModel.from_unet(
        unet,
        conditioning_embedding_out_channels=tuple(embedding_channels),
        load_weights_from_unet=copy_unet_weights,
        conditioning_channels=COLLAGE_CHANNELS,
    )
    if not zero_init_embedding:
        controlnet.controlnet_cond_embedding.conv_out.reset_parameters()
    return silence_conv_in(controlnet)
