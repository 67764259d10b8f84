"""Every N steps, sample a fixed batch and log rows of [reference | collage | generated | truth]."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden
from torchvision.utils import make_grid, save_image


def sample_grid(batch: dict[str, torch.Tensor], generated: torch.Tensor) -> torch.Tensor:
    """Rows of [reference | collage RGB | generated | ground truth], in [0, 1], 3xHxW."""
    size = generated.shape[-1]
    ref = F.interpolate(batch["reference"].float(), size=(size, size), mode="bilinear", antialias=True)
    collage = (batch["collage"][:, :3].float() + 1) / 2
    gen = (generated.float() + 1) / 2
    truth = (batch["target"].float() + 1) / 2
    tiles = torch.stack([ref, collage, gen.to(ref.device), truth], dim=1).flatten(0, 1).clamp(0, 1)
    return make_grid(tiles.cpu(), nrow=4, padding=2, pad_value=1.0)


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
                self._batch = self._keep(batch)
                return
        rank_zero_info("SampleLogger: no validation data; sampling the first training batch")

    def _directory(self, trainer: Trainer) -> Path:
        base = self.out_dir or trainer.log_dir or trainer.default_root_dir
        return Path(base) / "samples"

    def log_samples(self, trainer: Trainer, pl_module: LightningModule) -> Optional[Path]:
        if not trainer.is_global_zero or self._batch is None:
            return None
        batch = {k: v.to(pl_module.device) for k, v in self._batch.items()}
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
        path = self._directory(trainer) / f"step_{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, str(path))
        self.written.append(path)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image("samples", grid, step)
        return path

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._batch is None:
            self._batch = self._keep(batch)
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self.log_samples(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_train_end:
            self.log_samples(trainer, pl_module)
