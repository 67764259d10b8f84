"""ID encoder: a frozen DINOv2 ViT (timm) + a trainable Linear into the U-Net's cross-attention width.

The ViT is timm's, built from timm's registry (``vit_giant_patch14_dinov2`` for the release; any
registered ViT with ``vit_kwargs`` overrides, e.g. ``vit_small_patch14_dinov2`` with
``embed_dim``/``depth``/``num_heads`` for the tiny model) and run with timm's own forward. One step is
ours: the released DINOv2 weights carry a 37x37 position grid (518 px), and the original code
resamples it at run time with ``scale_factor=(g + 0.1) / 37``, bicubic, no antialias; timm resamples
by target size with antialias, which moves features by up to ~0.03. ``_dinov2_pos_embed`` replaces
timm's position-embedding step with the original resampling so converted weights match exactly.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import MethodType
from typing import Any

import timm
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from models.components.weights import load_state_dict_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Configs written before the registry was used said "vit_custom" for a plain timm VisionTransformer;
# a registered DINOv2 name with every architecture argument spelled out builds the same model (same
# keys, same random init under a seed).
LEGACY_CUSTOM_VIT = "vit_custom"
_VISION_TRANSFORMER_DEFAULTS = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, init_values=None)


def resample_pos_embed_like_dinov2(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample ``[1, 1 + N*N, C]`` (class + square grid) to ``grid`` the way the DINOv2 release does."""
    n = pos_embed.shape[1] - 1
    side = int(math.isqrt(n))
    if side * side != n:
        raise ValueError(f"position embedding has {n} patch entries, not a square grid")
    if grid == (side, side):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    patch_pos = patch_pos.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(
        patch_pos,
        scale_factor=((grid[0] + 0.1) / side, (grid[1] + 0.1) / side),
        mode="bicubic",
        antialias=False,
    )
    if tuple(patch_pos.shape[-2:]) != tuple(grid):
        raise RuntimeError(f"resampled grid {tuple(patch_pos.shape[-2:])} != requested {grid}")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)


def _dinov2_pos_embed(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's ``_pos_embed`` for a ``B x H x W x C`` patch grid, with the release's resampling."""
    b, h, w, c = x.shape
    x = torch.cat([vit.cls_token.expand(b, -1, -1), x.reshape(b, h * w, c)], dim=1)
    return vit.pos_drop(x + resample_pos_embed_like_dinov2(vit.pos_embed, (h, w)))


def resolve_vit_name(model_name: str, vit_kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(timm registry name, arguments); maps the legacy ``vit_custom`` onto the registry."""
    if model_name == LEGACY_CUSTOM_VIT:
        return "vit_small_patch14_dinov2", {**_VISION_TRANSFORMER_DEFAULTS, **vit_kwargs}
    return model_name, dict(vit_kwargs)


def _unchunk(key: str) -> str:
    """``blocks.C.N.x`` (DINOv2 FSDP block chunks; timm does not undo them) -> ``blocks.N.x``."""
    return re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)


class IDEncoder(ModelMixin, ConfigMixin):
    """Reference image ``B x 3 x S x S`` in [0, 1] -> ID tokens ``B x (1 + g*g) x out_dim``.

    ``weights``: a DINOv2 release ``.pth`` or a timm-named ``.safetensors``/``.pth`` for the ViT
    (training from the release); not part of the saved config: a saved folder holds the weights.
    """

    ignore_for_config = ["weights", "train_projector"]

    @register_to_config
    def __init__(
        self,
        model_name: str = "vit_giant_patch14_dinov2",
        vit_kwargs: dict[str, Any] | None = None,
        out_dim: int = 1024,
        image_size: int = 224,
        weights: str | None = None,
        train_projector: bool = True,
    ) -> None:
        super().__init__()
        name, kwargs = resolve_vit_name(model_name, dict(vit_kwargs or {}))
        if name != model_name:
            self.register_to_config(model_name=name, vit_kwargs=dict(kwargs))
        kwargs.setdefault("img_size", 518)
        # NHWC patch grid: the position step below needs the grid's height and width.
        self.vit = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs)
        if getattr(self.vit, "num_reg_tokens", 0) or getattr(self.vit, "no_embed_class", False):
            raise ValueError("IDEncoder supports DINOv2 without registers (class token shares the position grid)")
        self.vit._pos_embed = MethodType(_dinov2_pos_embed, self.vit)
        for block in self.vit.modules():  # fused SDPA whatever TIMM_FUSED_ATTN says (same maths, less memory)
            if hasattr(block, "fused_attn"):
                block.fused_attn = True
        if weights:
            self.load_vit_weights(weights)
        self.projector = nn.Linear(self.vit.embed_dim, out_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.vit.requires_grad_(False)
        self.vit.eval()
        self.projector.requires_grad_(train_projector)

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    def train(self, mode: bool = True) -> "IDEncoder":
        super().train(mode)
        self.vit.eval()  # frozen: never dropout / drop-path
        return self

    def load_vit_weights(self, path: str | Path) -> None:
        """A DINOv2 release file (original names: timm's ``checkpoint_filter_fn`` renames them) or a
        timm-named file, optionally prefixed ``vit.``; strict."""
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = {_unchunk(k.removeprefix("vit.")): v for k, v in load_state_dict_file(path).items()}
        missing, unexpected = self.vit.load_state_dict(checkpoint_filter_fn(state, self.vit), strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not fit {self.config.model_name}: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")

    def features(self, reference: torch.Tensor) -> torch.Tensor:
        """DINOv2 tokens after the final norm: [class, patches]; no grad (frozen)."""
        if reference.ndim != 4 or reference.shape[1] != 3:
            raise ValueError(f"reference must be Bx3xHxW in [0,1], got {tuple(reference.shape)}")
        with torch.no_grad():
            x = (reference.to(self.mean.dtype) - self.mean) / self.std
            return self.vit.forward_features(x.to(self.vit.cls_token.dtype))

    def forward(self, reference: torch.Tensor) -> torch.Tensor:
        feats = self.features(reference)
        return self.projector(feats.to(self.projector.weight.dtype))

    def unconditional_tokens(self, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        """ID tokens of an all-black reference (the reference's unconditional input for CFG)."""
        device = device or self.projector.weight.device
        black = torch.zeros(1, 3, self.image_size, self.image_size, device=device)
        return self(black).expand(batch_size, -1, -1)
