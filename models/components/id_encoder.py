"""ID encoder: a frozen DINOv2 ViT (timm) + a trainable Linear into the U-Net's cross-attention width.

The released DINOv2 weights carry a 37x37 position grid (518 px). The original code resamples it at
run time with ``scale_factor=(g + 0.1) / 37`` bicubic without antialias; timm resamples at load time
with antialias and a target size, which changes features by up to ~0.03. We keep the 37x37 grid in
the module and resample in ``forward`` exactly like the original so converted weights match.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from models.components.weights import load_state_dict_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Tiny stand-in of the same architecture (random init), used by configs/tiny.yaml and tests.
TINY_VIT_KWARGS: dict[str, Any] = dict(
    patch_size=14, embed_dim=64, depth=2, num_heads=2, init_values=1e-5, img_size=518
)


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


def load_vit_state_dict(path: str | Path, vit: nn.Module) -> dict[str, torch.Tensor]:
    """Read a DINOv2 release ``.pth`` or a timm ``.safetensors``/``.pth`` file into timm key names."""
    state = load_state_dict_file(path)
    state = {k.removeprefix("vit."): v for k, v in state.items()}
    # Original release keys (mask_token, blocks.N.mlp.w12/w3, block chunks) -> timm names.
    state = {_unchunk(k): v for k, v in state.items()}
    if "mask_token" in state:
        state.pop("mask_token")
        state = {k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2."): v for k, v in state.items()}
    return state


def _unchunk(key: str) -> str:
    """``blocks.C.N.x`` (DINOv2 block chunks) -> ``blocks.N.x``."""
    parts = key.split(".")
    if len(parts) > 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2].isdigit():
        return ".".join([parts[0]] + parts[2:])
    return key


class IDEncoder(nn.Module):
    """Reference image -> ID tokens ``[B, 1 + g*g, width]`` for the U-Net's cross-attention."""

    def __init__(
        self,
        model_name: str = "vit_giant_patch14_dinov2",
        vit_kwargs: dict[str, Any] | None = None,
        out_dim: int = 1024,
        weights: str | None = None,
        train_projector: bool = True,
        image_size: int = 224,
    ) -> None:
        super().__init__()
        self.config = dict(model_name=model_name, vit_kwargs=dict(vit_kwargs or {}), out_dim=out_dim,
                           image_size=image_size)
        kwargs = dict(img_size=518)
        kwargs.update(vit_kwargs or {})
        if model_name == "vit_custom":
            from timm.models.vision_transformer import VisionTransformer

            self.vit = VisionTransformer(num_classes=0, **kwargs)
        else:
            self.vit = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
        if getattr(self.vit, "num_reg_tokens", 0) or getattr(self.vit, "no_embed_class", False):
            raise ValueError("IDEncoder supports DINOv2 without registers (class token shares the position grid)")
        self.vit.patch_embed.strict_img_size = False
        self.image_size = image_size
        if weights:
            self.load_vit_weights(weights)
        self.projector = nn.Linear(self.vit.embed_dim, out_dim)
        self._register_normalisation()
        self.vit.requires_grad_(False)
        self.vit.eval()
        self.projector.requires_grad_(train_projector)

    def _register_normalisation(self) -> None:
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "IDEncoder":
        super().train(mode)
        self.vit.eval()  # frozen: never dropout / drop-path
        return self

    def load_vit_weights(self, path: str | Path) -> None:
        state = load_vit_state_dict(path, self.vit)
        missing, unexpected = self.vit.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not fit {self.config['model_name']}: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")

    def features(self, reference: torch.Tensor) -> torch.Tensor:
        """DINOv2 tokens after the final norm: [class, patches]; no grad (frozen)."""
        if reference.ndim != 4 or reference.shape[1] != 3:
            raise ValueError(f"reference must be Bx3xHxW in [0,1], got {tuple(reference.shape)}")
        vit = self.vit
        with torch.no_grad():
            x = (reference.to(self.mean.dtype) - self.mean) / self.std
            x = x.to(vit.cls_token.dtype)
            p = vit.patch_embed.patch_size
            grid = (x.shape[-2] // p[0], x.shape[-1] // p[1])
            x = vit.patch_embed(x)
            if x.ndim == 4:  # NHWC output when the patch embed keeps the grid
                x = x.flatten(1, 2)
            x = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = x + resample_pos_embed_like_dinov2(vit.pos_embed, grid)
            x = vit.norm_pre(x)
            x = vit.blocks(x)
            x = vit.norm(x)
        return x

    def forward(self, reference: torch.Tensor) -> torch.Tensor:
        feats = self.features(reference)
        return self.projector(feats.to(self.projector.weight.dtype))

    def unconditional_tokens(self, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        """ID tokens of an all-black reference (the reference's unconditional input for CFG)."""
        device = device or self.projector.weight.device
        black = torch.zeros(1, 3, self.image_size, self.image_size, device=device)
        return self(black).expand(batch_size, -1, -1)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "IDEncoder":
        directory = Path(directory)
        cfg_path, weights_path = directory / "config.json", directory / "model.safetensors"
        for p in (cfg_path, weights_path):
            if not p.is_file():
                raise FileNotFoundError(f"ID encoder folder is missing {p}")
        # Built on the meta device and filled by assignment: a random ViT-g init costs ~20 s and a
        # second 4.3 GB copy of the weights.
        with torch.device("meta"):
            model = cls(**json.loads(cfg_path.read_text()))
        missing, unexpected = model.load_state_dict(load_file(str(weights_path)), strict=False, assign=True)
        if missing or unexpected:
            raise ValueError(f"{weights_path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        model._register_normalisation()  # not in the file: meta until now
        left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left:
            raise ValueError(f"{weights_path}: no values for {left[:5]}")
        return model
