"""Identity scorers: DINO-I (timm ViT class token) and CLIP-I (open_clip image embedding).

Both compare the object cut out of the generated crop with the reference object, each placed on white
and padded square, as the DreamBooth-style benchmarks do. Weights always come from a local file: this
project never downloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.components.weights import load_state_dict_file


def object_on_white(image: Tensor, mask: Tensor | None = None, box: Sequence[int] | None = None, size: int = 224) -> Tensor:
    """Cut the object out of ``image`` (3 x H x W in [0, 1]) onto white, pad it square, resize to ``size``.

    With a mask, pixels outside it turn white and the crop is the mask's bounding box; with only a box,
    the box region is taken as is (no mask known). An empty mask is an error: there is nothing to score.
    """
    if mask is not None:
        m = mask.reshape(image.shape[-2:]).float()
        ys, xs = torch.nonzero(m > 0.5, as_tuple=True)
        if ys.numel() == 0:
            raise ValueError("object_on_white: the object mask is empty")
        image = image * m + (1.0 - m)
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    elif box is not None:
        x1, y1, x2, y2 = (int(v) for v in box)
    else:
        x1, y1, x2, y2 = 0, 0, image.shape[-1], image.shape[-2]
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"object_on_white: empty box {(x1, y1, x2, y2)}")
    obj = image[:, y1:y2, x1:x2]
    h, w = obj.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    obj = F.pad(obj, (left, side - w - left, top, side - h - top), value=1.0)
    return F.interpolate(obj[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


class Scorer(nn.Module):
    """Base of every identity scorer an eval config may name (``class_path`` must be a subclass, see
    ``evaluation.config``): ``embed`` maps ``B x 3 x H x W`` images in [0, 1] to ``B x D`` embeddings."""

    def embed(self, images: Tensor) -> Tensor:
        raise NotImplementedError


class DinoScorer(Scorer):
    """DINO-I: class token (after the final norm) of a timm ViT such as DINO ViT-S/16 or DINOv2.

    ``model_name`` is a timm architecture (e.g. ``vit_small_patch16_224`` for DINO, ``vit_giant_patch14_dinov2``
    for DINOv2); ``weights`` a local file in timm naming or the original DINO/DINOv2 release naming
    (timm's own converter maps those). ``model_kwargs`` override the architecture (tests use a tiny one).
    """

    def __init__(self, model_name: str, weights: str | Path, img_size: int = 224, model_kwargs: dict | None = None):
        super().__init__()
        import timm
        from timm.models.vision_transformer import checkpoint_filter_fn

        self.model = timm.create_model(model_name, pretrained=False, num_classes=0, img_size=img_size, **(model_kwargs or {}))
        state = load_state_dict_file(weights)
        state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
        state = checkpoint_filter_fn(state, self.model)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}  # DINO heads are not used
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights}: does not fit {model_name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.model.eval().requires_grad_(False)
        cfg = self.model.pretrained_cfg
        self.img_size = img_size
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """``B x 3 x H x W`` in [0, 1] -> ``B x D`` class tokens."""
        x = F.interpolate(images.float(), size=(self.img_size, self.img_size), mode="bicubic", antialias=True, align_corners=False)
        x = (x.clamp(0, 1) - self.mean) / self.std
        return self.model.forward_features(x)[:, 0]


class ClipScorer(Scorer):
    """CLIP-I: open_clip image embedding.

    ``model`` is a built-in open_clip architecture name (e.g. ``ViT-B-32``) with ``weights`` a local file,
    or a local folder holding ``open_clip_config.json`` and its weights (``open_clip_model.safetensors``).
    Only the image tower is kept.
    """

    def __init__(self, model: str, weights: str | Path | None = None):
        super().__init__()
        import open_clip

        if Path(model).is_dir():
            folder = Path(model)
            if not any(f.suffix in (".safetensors", ".bin", ".pth") for f in folder.iterdir()):
                raise FileNotFoundError(f"{folder}: no open_clip weight file next to its config")
            clip = open_clip.create_model(f"local-dir:{folder}", pretrained_text=False)
        else:
            if weights is None or not Path(weights).is_file():
                raise FileNotFoundError(f"CLIP weights for {model!r} must be a local file, got {weights!r}")
            clip = open_clip.create_model(model, pretrained=str(weights), pretrained_text=False)
        self.visual = clip.visual.eval().requires_grad_(False)
        cfg = self.visual.preprocess_cfg
        size = self.visual.image_size
        self.img_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        x = F.interpolate(images.float(), size=self.img_size, mode="bicubic", antialias=True, align_corners=False)
        x = (x.clamp(0, 1) - self.mean) / self.std
        return self.visual(x)
