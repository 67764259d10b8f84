"""Quick PSNR inside the box (and on the object mask) of a tiny checkpoint vs the background baseline.

    python -m benchmarks.box_psnr --shards data/synthetic/tune [--ckpt last.ckpt] [--steps 1]

Without ``--ckpt`` it scores the untrained model (the seeded init of the config). The background
baseline fills the box with the mean colour of the crop outside it. The full evaluation with more
metrics and baselines is ``anydoor eval``; this script is the training recipe's yardstick.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from models.anydoor_module import AnyDoorModule


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample PSNR (dB) over pixels where ``mask`` (Bx1xHxW) is 1; images in [-1, 1]."""
    diff2 = ((pred.float() - target.float()) / 2).pow(2) * mask
    mse = diff2.sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * pred.shape[1]).clamp_min(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def box_masks(boxes: torch.Tensor, size: int) -> torch.Tensor:
    masks = torch.zeros(boxes.shape[0], 1, size, size)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.tolist()):
        m[:, y1:y2, x1:x2] = 1
    return masks


def background_baseline(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Target crop with the box filled by the mean colour of the (non-padding) crop outside it."""
    target, collage = batch["target"], batch["collage"]
    inside = box_masks(batch["box"], target.shape[-1])
    outside = (1 - inside) * (collage[:, 3:4] >= 0).float()
    mean = (target * outside).sum(dim=(2, 3), keepdim=True) / outside.sum(dim=(2, 3), keepdim=True).clamp_min(1)
    return target * (1 - inside) + mean * inside


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--ckpt", help="Lightning checkpoint (default: the untrained model)")
    p.add_argument("--shards", default="data/synthetic/tune")
    p.add_argument("--steps", type=int, default=1, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from datamodules.anydoor_datamodule import AnyDoorDataModule

    cfg = yaml.safe_load(Path(args.config).read_text())
    data_args = dict(cfg["data"]["init_args"], val_shards=args.shards, num_workers=0, val_samples=args.limit)
    loader = AnyDoorDataModule(**data_args).val_dataloader()
    if args.ckpt:
        module = AnyDoorModule.load_from_checkpoint(args.ckpt, map_location="cpu")
    else:
        module = AnyDoorModule(**cfg["model"]["init_args"])
    module.eval()
    gen = torch.Generator().manual_seed(args.seed)
    scores: dict[str, list[torch.Tensor]] = {k: [] for k in ("model_box", "model_object", "background_box",
                                                             "background_object")}
    for batch in loader:
        with torch.no_grad():
            out = module.sample(batch, args.steps, args.guidance, generator=gen, use_ema=not args.no_ema)
        inside = box_masks(batch["box"], out.shape[-1])
        obj = batch["object_mask"] * inside
        base = background_baseline(batch)
        scores["model_box"].append(masked_psnr(out, batch["target"], inside))
        scores["model_object"].append(masked_psnr(out, batch["target"], obj))
        scores["background_box"].append(masked_psnr(base, batch["target"], inside))
        scores["background_object"].append(masked_psnr(base, batch["target"], obj))
    result = {k: round(float(torch.cat(v).mean()), 3) for k, v in scores.items()}
    result.update(samples=int(torch.cat(scores["model_box"]).numel()), ckpt=args.ckpt or "untrained",
                  shards=args.shards, steps=args.steps, guidance=args.guidance, ema=not args.no_ema)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
