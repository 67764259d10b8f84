"""Every N steps, sample a fixed batch and log rows of [reference | collage | generated | truth]."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden

from callbacks.interrupt import StopOnSignal
from src.image_io import write_image
from src.packed import unpack_batch


def sample_grid(batch: dict[str, torch.Tensor], generated: torch.Tensor) -> np.ndarray:
    """uint8 rows of [reference | collage | generated | ground truth] under labelled columns."""
    from src.grid import labelled_grid

    size = generated.shape[-1]
    ref = F.interpolate(batch["reference"].float(), size=(size, size), mode="bilinear", antialias=True)
    columns = [ref, (batch["collage"][:, :3].float() + 1) / 2, (generated.float() + 1) / 2, (batch["target"].float() + 1) / 2]
    tiles = torch.stack([c.cpu() for c in columns], dim=1).clamp(0, 1).mul(255).round().to(torch.uint8)
    rows = [[t.permute(1, 2, 0).numpy() for t in row] for row in tiles]
    return labelled_grid(["reference", "collage", "generated", "ground truth"], rows)


class SampleLogger(Callback):
    """Samples with the module's pipeline (``to_pipeline``, EMA weights when kept) and the recipe's
    sampler unless ``num_steps``/``guidance_scale`` say otherwise. The batch is the validation
    loader's first; without validation data, the first training batch."""

    def __init__(
        self,
        every_n_steps: int = 500,
        num_samples: int = 4,
        num_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        out_dir: Optional[str] = None,
        seed: int = 0,
        at_train_end: bool = True,
    ) -> None:
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.num_steps = num_steps
        self.guidance_scale = guidance_scale
        self.out_dir = out_dir
        self.seed = seed
        self.at_train_end = at_train_end
        self._batch: Optional[dict[str, torch.Tensor]] = None
        self.written: list[Path] = []

    def _keep(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {k: v[: self.num_samples].detach().clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = trainer.datamodule
        if not trainer.is_global_zero or self._batch is not None:
            return
        if dm is not None and is_overridden("val_dataloader", dm):
            batch = next(iter(dm.val_dataloader()), None)
            if batch is not None:
                self._batch = self._keep(unpack_batch(batch))  # straight from the loader: maybe packed bytes
                return
        rank_zero_info("SampleLogger: no validation data; sampling the first training batch")

    def _directory(self, trainer: Trainer) -> Path:
        base = self.out_dir or trainer.log_dir or trainer.default_root_dir
        return Path(base) / "samples"

    def log_samples(self, trainer: Trainer, pl_module: LightningModule) -> Optional[Path]:
        directory = self._directory(trainer)  # on every rank: trainer.log_dir is a collective under DDP
        if not trainer.is_global_zero or self._batch is None:
            return None
        batch = unpack_batch({k: v.to(pl_module.device) for k, v in self._batch.items()})
        gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with pl_module.ema_weights():
                images = pl_module.generate(pl_module.to_pipeline(), batch, self.num_steps, self.guidance_scale, gen)
        finally:
            pl_module.train(was_training)
        grid = sample_grid(batch, images)
        step = trainer.global_step
        path = write_image(directory / f"step_{step:07d}.png", grid)
        self.written.append(path)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image("samples", grid, step, dataformats="HWC")
        return path

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._batch is None:
            self._batch = self._keep(batch)
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self.log_samples(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        stop = next((c for c in trainer.callbacks if isinstance(c, StopOnSignal)), None)
        if stop is not None and stop.stopped_by is not None:
            rank_zero_info("SampleLogger: stopped by a signal, no end-of-run grid (saving comes first)")
            return
        if self.at_train_end:
            self.log_samples(trainer, pl_module)
