"""Export the trained weights: trainable-only safetensors and the full pretrained folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from safetensors.torch import save_file


def export_checkpoint(ckpt_path: str | Path, out_path: str | Path, use_ema: bool = True) -> Path:
    """Lightning checkpoint (trainable weights only) -> one safetensors file (EMA weights if kept)."""
    ckpt_path, out_path = Path(ckpt_path), Path(out_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    ckpt = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
    if "state_dict" not in ckpt:
        raise ValueError(f"{ckpt_path}: not a Lightning checkpoint (no 'state_dict')")
    state = ckpt["ema"]["shadow"] if use_ema and "ema" in ckpt else ckpt["state_dict"]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_path))
    return out_path


class ExportOnTrainEnd(Callback):
    """At the end of fit: ``checkpoints/last.ckpt`` at the final step, ``<dir>/export/trainable.safetensors``
    and ``<dir>/export/pretrained/`` (docs/design.md)."""

    def __init__(self, dirpath: Optional[str] = None, pretrained: bool = True, use_ema: bool = True) -> None:
        self.dirpath = dirpath
        self.pretrained = pretrained
        self.use_ema = use_ema

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A stop by max_time lands between ModelCheckpoint's saves: write the true last step (all ranks).
        ckpt_dir = getattr(trainer.checkpoint_callback, "dirpath", None)
        if ckpt_dir:
            trainer.save_checkpoint(str(Path(ckpt_dir) / "last.ckpt"), weights_only=False)  # resumable
        if not trainer.is_global_zero:
            return
        out = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir) / "export"
        out.mkdir(parents=True, exist_ok=True)
        save_file(pl_module.trainable_state_dict(self.use_ema), str(out / "trainable.safetensors"))
        if self.pretrained:
            pl_module.save_pretrained(str(out / "pretrained"), use_ema=self.use_ema)
