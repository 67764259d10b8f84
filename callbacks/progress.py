"""A training progress bar for runs bounded by ``trainer.max_time``."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Timer, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf


def batches_within_budget(done: int, elapsed_s: float, remaining_s: float) -> int:
    """Batches a run will have done when its time runs out, at its pace so far (>= ``done``)."""
    if done <= 0 or elapsed_s <= 0:
        return done
    return done + max(0, math.floor(remaining_s * done / elapsed_s))


class TimeBudgetProgressBar(TQDMProgressBar):
    """TQDM bar whose total is what fits in ``max_time``, not the nominal epoch.

    The embedded default streams a 125,000-batch nominal epoch and stops after 25 minutes; the stock
    bar then showed a 15-hour ETA. Here the total is re-estimated from the pace so far (validation
    and sample logging included) after ``warmup_batches``; without ``max_time`` it is the stock bar.
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False,
                 warmup_batches: int = 20) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self.warmup_batches = warmup_batches
        self._start = 0.0

    def on_train_start(self, *args: Any) -> None:
        super().on_train_start(*args)
        self._start = time.monotonic()  # this run's own pace (the Timer also counts resumed time)

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        bar = self.train_progress_bar
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        done_total = trainer.fit_loop.total_batch_idx + 1  # all epochs of this run
        if bar is not None and remaining is not None and done_total >= self.warmup_batches:
            left = batches_within_budget(done_total, time.monotonic() - self._start, remaining) - done_total
            nominal = convert_inf(self.total_train_batches)  # None when unknown or infinite
            estimate = batch_idx + 1 + left
            bar.total = estimate if nominal is None else min(nominal, estimate)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
