"""Image-quality and identity metrics restricted to regions (a box, a mask, the background).

Generated crops are only partly new: the pixels outside the box come from the target, so a whole-image
score would reward copying the input. Every function here therefore takes the region it scores and
ignores the rest. Images are float tensors ``B x C x H x W`` in ``[0, data_range]``; masks and region
weights are ``B x 1 x H x W`` (or ``1 x H x W`` / ``H x W``) in ``{0, 1}``. Scores are per image
(shape ``B``): averages over a data set are the caller's choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

Box = Sequence[int]  # (x1, y1, x2, y2), exclusive ends (docs/design.md)


def _as_batch_mask(mask: Tensor, like: Tensor) -> Tensor:
    """Broadcast a mask to ``B x 1 x H x W`` float, checking its size against the images."""
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None] if mask.shape[0] == like.shape[0] and like.shape[0] != 1 else mask[None]
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != like.shape[-2:]:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(like.shape)}")
    return mask.to(like.dtype).expand(like.shape[0], 1, *like.shape[-2:])


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"expected two B x C x H x W images of one shape, got {tuple(pred.shape)} and {tuple(target.shape)}")


def box_mask(boxes: Sequence[Box] | Tensor, height: int, width: int) -> Tensor:
    """``B x 1 x H x W`` float mask that is 1 inside each box (exclusive ends), clipped to the image."""
    boxes_t = torch.as_tensor(boxes, dtype=torch.long).reshape(-1, 4)
    ys = torch.arange(height)[None, :, None]
    xs = torch.arange(width)[None, None, :]
    x1, y1, x2, y2 = (boxes_t[:, i, None, None] for i in range(4))
    inside = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
    return inside[:, None].float()


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the pixels where ``mask`` is 1 (all channels); NaN for an empty mask."""
    _check_pair(pred, target)
    weight = _as_batch_mask(mask, pred)
    squared = (pred.float() - target.float()).pow(2) * weight
    count = weight.sum(dim=(1, 2, 3)) * pred.shape[1]
    return squared.sum(dim=(1, 2, 3)) / count  # 0 / 0 -> NaN marks "nothing to score"


def masked_psnr(pred: Tensor, target: Tensor, mask: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR in dB over the masked pixels only; ``inf`` where they are identical, NaN for an empty mask."""
    mse = masked_mse(pred, target, mask)
    return 10.0 * torch.log10(data_range**2 / mse)


def psnr_in_box(pred: Tensor, target: Tensor, boxes: Sequence[Box] | Tensor, data_range: float = 1.0) -> Tensor:
    """The project's one box PSNR (eval, validation, benchmarks): ``masked_psnr`` inside each box
    (one box per image, exclusive ends); ``inf`` where the box is identical."""
    return masked_psnr(pred, target, box_mask(boxes, *pred.shape[-2:]), data_range)


def ssim_map(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-pixel SSIM (``B x 1 x H x W``, channel mean) from torchmetrics' Gaussian 11x11 window."""
    _check_pair(pred, target)
    _, full = structural_similarity_index_measure(
        pred.float(), target.float(), data_range=data_range, reduction="none", return_full_image=True
    )
    return full.mean(dim=1, keepdim=True)


def masked_ssim(pred: Tensor, target: Tensor, mask: Tensor, data_range: float = 1.0) -> Tensor:
    """Mean of the SSIM map over the masked pixels; NaN for an empty mask.

    The 11x11 window of a pixel near the mask's edge also sees pixels just across it, so a change inside
    the box lowers the background SSIM within ~5 px of the box: that seam is part of what it measures.
    """
    weight = _as_batch_mask(mask, pred)
    full = ssim_map(pred, target, data_range)
    return (full * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3))


def cosine_scores(features_a: Tensor, features_b: Tensor) -> Tensor:
    """Cosine similarity of paired embeddings (``B x D`` each): the DINO-I / CLIP-I identity score."""
    if features_a.shape != features_b.shape or features_a.dim() != 2:
        raise ValueError(f"expected two B x D embeddings of one shape, got {tuple(features_a.shape)} and {tuple(features_b.shape)}")
    return F.cosine_similarity(features_a.float(), features_b.float(), dim=1)


def finite_mean(values: Sequence[float]) -> dict[str, float | int]:
    """Mean over the finite values, with counts of the infinite (perfect) and NaN (empty region) ones.

    A single identical image would make a plain PSNR mean infinite and hide every other job, so the
    summary says how many were perfect instead of swallowing them.
    """
    t = torch.as_tensor(list(values), dtype=torch.float64)
    finite = t[torch.isfinite(t)]
    return {
        "mean": float(finite.mean()) if finite.numel() else float("nan"),
        "n": int(finite.numel()),
        "n_inf": int(torch.isinf(t).sum()),
        "n_nan": int(torch.isnan(t).sum()),
    }
