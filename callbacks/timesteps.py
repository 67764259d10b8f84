"""Frequency-aware timestep sampling: video pairs learn coarse structure (large t), image pairs fine
detail (small t), multiview everything; a share of uniform draws keeps every t covered."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from src.constants import KINDS

DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "video": (0.5, 1.0),
    "image": (0.0, 0.5),
    "multiview": (0.0, 1.0),
}


def draw_timesteps(
    kinds: torch.Tensor,
    num_train_timesteps: int,
    uniform_prob: float,
    ranges: Sequence[tuple[float, float]],
    generator: torch.Generator,
) -> torch.Tensor:
    """One int64 timestep per sample; ``ranges[k]`` is the [lo, hi) fraction of T for kind index k."""
    if not 0.0 <= uniform_prob <= 1.0:
        raise ValueError(f"uniform_prob must be in [0, 1], got {uniform_prob}")
    kinds = kinds.long().cpu()
    if kinds.numel() and (kinds.min() < 0 or kinds.max() >= len(ranges)):
        raise ValueError(f"kind index out of range 0..{len(ranges) - 1}: {kinds.tolist()}")
    bounds = torch.tensor([[round(lo * num_train_timesteps), round(hi * num_train_timesteps)] for lo, hi in ranges])
    if (bounds[:, 1] <= bounds[:, 0]).any():
        raise ValueError(f"every range needs lo < hi, got {list(ranges)}")
    lo, hi = bounds[kinds, 0], bounds[kinds, 1]
    uniform = torch.rand(kinds.shape, generator=generator) < uniform_prob
    lo = torch.where(uniform, torch.zeros_like(lo), lo)
    hi = torch.where(uniform, torch.full_like(hi, num_train_timesteps), hi)
    u = torch.rand(kinds.shape, generator=generator, dtype=torch.float64)
    return (lo + (u * (hi - lo)).floor().long()).clamp(max=num_train_timesteps - 1)


class FrequencyAwareTimesteps(Callback):
    """Adds ``batch["timesteps"]`` before every training step and logs their histogram."""

    def __init__(
        self,
        uniform_prob: float = 0.3,
        ranges: Optional[Mapping[str, Sequence[float]]] = None,
        num_train_timesteps: Optional[int] = None,
        log_every_n_steps: int = 100,
        seed: int = 0,
    ) -> None:
        merged = dict(DEFAULT_RANGES)
        for name, rng in (ranges or {}).items():
            if name not in KINDS:
                raise ValueError(f"unknown kind {name!r}; kinds are {KINDS}")
            merged[name] = (float(rng[0]), float(rng[1]))
        self.ranges = [merged[name] for name in KINDS]
        self.uniform_prob = uniform_prob
        self.num_train_timesteps = num_train_timesteps
        self.log_every_n_steps = log_every_n_steps
        self.seed = seed
        self._generator: Optional[torch.Generator] = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._generator = torch.Generator().manual_seed(self.seed + 1000 * trainer.global_rank)
        if self.num_train_timesteps is None:
            scheduler = getattr(pl_module, "noise_scheduler", None)  # the module's training schedule
            self.num_train_timesteps = int(scheduler.config.num_train_timesteps) if scheduler is not None else 1000

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        t = draw_timesteps(batch["kind"], self.num_train_timesteps, self.uniform_prob, self.ranges, self._generator)
        batch["timesteps"] = t.to(batch["kind"].device)
        step = trainer.global_step
        experiment = getattr(trainer.logger, "experiment", None)
        if trainer.is_global_zero and step % self.log_every_n_steps == 0 and hasattr(experiment, "add_histogram"):
            experiment.add_histogram("train/timesteps", t, step)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()} if self._generator is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "generator" in state_dict:
            self._generator = torch.Generator()
            self._generator.set_state(state_dict["generator"])
