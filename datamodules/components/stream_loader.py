"""A DataLoader over the batch streams that knows where each stream is (resume) and what it skipped (report).

The streams (``streams.TrainStream``/``ValStream``) yield whole batches, each with a small
``"__stream__"`` record from the worker that made it: its slot, how many inputs the slot has read
this epoch and its skip counts by reason. ``StreamLoader`` removes the record from every batch (no
model or callback ever sees it) and keeps the latest one per slot. Because batches arrive in order
(DataLoader workers take turns) and Lightning fetches a sized loader's batches just in time, what
the loader has handed out is exactly what training has consumed. From that:

- **Resume.** ``state_dict``/``load_state_dict`` make the loader *stateful* to Lightning's fit loop,
  which stores the state in every checkpoint and gives it back before the first batch of a resumed
  run: the epoch, the batches consumed and every slot's input position and skip counts (gathered
  over ranks). The next pass then fast-forwards each slot to its position (reading, not decoding)
  and rotates the workers so the next batch comes from the slot that would have made it: the
  resumed run sees the batches an uninterrupted run would have seen next. The epoch comes from the
  trainer's fit loop (the number Lightning gives samplers), or counts passes when there is no trainer.
- **Skip report.** At the end of each epoch (and of a validation pass that skipped anything) one
  log line says how many pairs were made from how many samples and what was skipped, by reason;
  ``report_run()`` gives the run's totals (the datamodule logs them at the end of ``fit``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from datamodules.components.streams import SKIP_REASONS, STREAM_KEY, Plan, SlotStart, TrainStream, init_worker, tune_malloc, worker_info

log = logging.getLogger(__name__)
STATE_VERSION = 1
_tuned_here = False


@dataclass
class _Pass:
    """One iteration over the loader: the latest record of every slot."""

    order: int
    epoch: int
    batches: int
    pairs: int
    inputs: list[int]
    skipped: list[tuple[int, ...]]

    def update(self, record: dict, pairs: int) -> None:
        self.inputs[record["slot"]], self.skipped[record["slot"]] = record["inputs"], tuple(record["skipped"])
        self.pairs += pairs

    def skip_counts(self) -> list[int]:
        return [sum(s[r] for s in self.skipped if s) for r in range(len(SKIP_REASONS))]


@dataclass
class _Run:
    """Totals of the epochs finished in this run (and before it, when resumed)."""

    epochs: int = 0
    pairs: int = 0
    inputs: int = 0
    skipped: list[int] = field(default_factory=lambda: [0] * len(SKIP_REASONS))

    def add(self, pairs: int, inputs: int, skipped: list[int], epochs: int = 1) -> None:
        self.epochs, self.pairs, self.inputs = self.epochs + epochs, self.pairs + pairs, self.inputs + inputs
        self.skipped = [a + b for a, b in zip(self.skipped, skipped)]


def report(level: int, msg: str, *args: Any) -> None:
    """Log a report line; where nothing is configured to show it (a plain ``lightning fit`` sets up
    no logging for this package, so INFO would be dropped), print it to stderr instead."""
    if log.hasHandlers():
        log.log(level, msg, *args)
    else:
        print(msg % args, file=sys.stderr, flush=True)


def describe(pairs: int, inputs: int, skipped: list[int]) -> str:
    total = sum(skipped)
    why = ", ".join(f"{r} {n}" for r, n in zip(SKIP_REASONS, skipped) if n)
    return f"{pairs} pairs from {inputs} samples read, {total} skipped" + (f" ({why})" if why else "")


def _by_name(counts: list[int], names: list[str]) -> list[int]:
    """Counts saved under ``names`` in today's ``SKIP_REASONS`` order (a reason no longer used is dropped)."""
    saved = dict(zip(names, counts))
    return [int(saved.get(r, 0)) for r in SKIP_REASONS]


class StreamLoader(torch.utils.data.DataLoader):
    """DataLoader over a ``TrainStream``/``ValStream``; see the module docstring.

    Args:
        trainer_fn: returns the Lightning trainer (or None): the epoch, the rank count and the loggers.
        tune_allocator: ``streams.tune_malloc`` in each worker (in this process when ``num_workers=0``).
        name: for the log lines; default "train" for a ``TrainStream``, else "validation".
    """

    def __init__(self, dataset: torch.utils.data.IterableDataset, *, num_workers: int = 0, pin_memory: bool = False,
                 tune_allocator: bool = True, trainer_fn: Callable[[], Any] | None = None, name: str | None = None) -> None:
        super().__init__(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                         worker_init_fn=partial(init_worker, tune_allocator) if num_workers > 0 else None)
        self.tune_allocator, self.trainer_fn = tune_allocator, trainer_fn
        self.name = name or ("train" if isinstance(dataset, TrainStream) else "validation")
        self._passes = 0  # passes started; the epoch when there is no trainer
        self._live: list[_Pass] = []
        self._last: _Pass | None = None
        self._run = _Run()
        self._restore: dict | None = None

    # ---- iteration ----

    def _trainer(self) -> Any:
        return self.trainer_fn() if self.trainer_fn is not None else None

    def _epoch(self) -> int:
        trainer = self._trainer()
        if trainer is not None and getattr(trainer, "training", False):
            return int(trainer.fit_loop.epoch_progress.current.processed)
        return self._passes

    def __iter__(self) -> Iterator[dict]:  # a generator: nothing starts before the first batch is asked for
        global _tuned_here
        if self.num_workers == 0 and self.tune_allocator and not _tuned_here:
            _tuned_here = tune_malloc()
            log.info("data: glibc malloc tuned in this process (num_workers=0): %s", "yes" if _tuned_here else "not available")
        epoch = self._epoch()
        self._passes += 1
        plan, current = self._plan(epoch)
        if isinstance(self.dataset, TrainStream):
            self.dataset.plan = plan  # read by every worker, which starts below (workers copy the dataset)
        self._live.append(current)
        try:
            for batch in super().__iter__():
                record = batch.pop(STREAM_KEY)
                pairs = len(next(iter(batch.values()))) if batch else 0
                current.update(record, pairs)
                if not batch:
                    continue  # a record without pairs (end of a validation slot)
                if isinstance(self.dataset, TrainStream):
                    current.batches += 1
                    if current.batches == len(self.dataset):
                        self._epoch_done(current)
                yield batch
            if not isinstance(self.dataset, TrainStream) and sum(current.skip_counts()):
                report(logging.WARNING, "data: %s%s pass: %s", self._who(), self.name,
                       describe(current.pairs, sum(current.inputs), current.skip_counts()))
        finally:
            self._live.remove(current)
            self._last = current

    def _new_pass(self, epoch: int, batches: int, starts: tuple[SlotStart, ...] | None) -> _Pass:
        workers = max(self.num_workers, 1)
        starts = starts or tuple(SlotStart(0, (), 0) for _ in range(workers))
        per = self.dataset.batch_size if isinstance(self.dataset, TrainStream) else 0
        return _Pass(self._passes, epoch, batches, batches * per, [s.inputs for s in starts],
                     [s.skipped or (0,) * len(SKIP_REASONS) for s in starts])

    def _plan(self, epoch: int) -> tuple[Plan, _Pass]:
        """This pass: from the start of ``epoch``, or where a restored state says the stream stopped."""
        state, self._restore = self._restore, None
        fresh = (Plan(epoch=epoch), self._new_pass(epoch, 0, None))
        if not isinstance(self.dataset, TrainStream) or not state:
            return fresh
        rank, world = worker_info()[0], self.dataset.world
        names = state["reasons"]
        rows = state["ranks"]
        mine = rows[rank] if len(rows) == world else rows[0]
        run = mine["run"]
        self._run.add(run["pairs"], run["inputs"], _by_name(run["skipped"], names), run["epochs"])
        slots = mine["slots"]
        skipped = [tuple(_by_name(s["skipped"], names)) for s in slots]
        k = int(state["batches"])
        if state["epoch"] != epoch:  # the saved epoch had ended: count it and start this one afresh
            self._run.add(k * self.dataset.batch_size, sum(s["inputs"] for s in slots),
                          [sum(c) for c in zip(*skipped)] if skipped else [0] * len(SKIP_REASONS))
            return fresh
        ds, workers = self.dataset, self.dataset.workers
        if state["layout"] != ds.layout() or len(rows) != world:
            changed = {key: (state["layout"].get(key), v) for key, v in ds.layout().items() if state["layout"].get(key) != v}
            report(logging.WARNING, "data: the checkpoint's data stream cannot be continued exactly (changed: %s); epoch %d goes on "
                        "from batch %d with fresh sample orders", changed or {"ranks": (len(rows), world)}, epoch, k)
            self._run.add(0, sum(s["inputs"] for s in slots), [sum(c) for c in zip(*skipped)], epochs=0)
            left = max(0, len(ds) - k)
            starts = tuple(SlotStart(0, (), left // workers + (s < left % workers)) for s in range(workers))
            return Plan(epoch, 0, k + 1, starts), self._new_pass(epoch, k, starts)
        q = ds.batches_per_slot
        starts = tuple(SlotStart(int(slots[s]["inputs"]), skipped[s], q - max(0, (k - s + workers - 1) // workers))
                       for s in range(workers))
        report(logging.INFO, "data: resuming epoch %d after batch %d: each slot skips the samples it had read (%s) without "
               "decoding them", epoch, k, ", ".join(str(s.inputs) for s in starts))
        return Plan(epoch, k % workers, 0, starts), self._new_pass(epoch, k, starts)

    # ---- reports ----

    def _who(self) -> str:
        rank, world = worker_info()[:2]
        return f"rank {rank}: " if world > 1 else ""

    def _epoch_done(self, done: _Pass) -> None:
        skipped = done.skip_counts()
        self._run.add(done.pairs, sum(done.inputs), skipped)
        report(logging.INFO, "data: %sepoch %d done: %s", self._who(), done.epoch, describe(done.pairs, sum(done.inputs), skipped))
        trainer = self._trainer()
        for logger in getattr(trainer, "loggers", None) or []:
            metrics = {"data/skipped": float(sum(skipped))} | {f"data/skipped_{r}": float(n) for r, n in zip(SKIP_REASONS, skipped) if n}
            logger.log_metrics(metrics, step=trainer.global_step)

    def report_run(self) -> str:
        """The run's totals so far: finished epochs plus the unfinished one."""
        run = _Run(self._run.epochs, self._run.pairs, self._run.inputs, list(self._run.skipped))
        current = self._current()
        if current is not None and not (isinstance(self.dataset, TrainStream) and current.batches == len(self.dataset)):
            run.add(current.pairs, sum(current.inputs), current.skip_counts(), epochs=0)
        return f"{self._who()}{run.epochs} epoch(s) finished; {describe(run.pairs, run.inputs, run.skipped)}"

    # ---- state (Lightning's stateful-loader protocol) ----

    def _current(self) -> _Pass | None:
        return min(self._live, key=lambda p: p.order) if self._live else self._last

    def state_dict(self) -> dict:
        """Where the training stream is; called on every rank when a checkpoint is written (gathers over ranks)."""
        current = self._current()
        if not isinstance(self.dataset, TrainStream) or current is None:
            return {}
        workers = self.dataset.workers
        ended = current.batches == len(self.dataset)
        run = _Run(self._run.epochs, self._run.pairs, self._run.inputs, list(self._run.skipped))
        if ended:  # already counted in the run totals: save it as a finished epoch with nothing in progress
            run.add(-current.pairs, -sum(current.inputs), [-n for n in current.skip_counts()], epochs=0)
        row = [run.epochs, run.pairs, run.inputs, *run.skipped]
        for s in range(workers):
            row += [current.inputs[s], *current.skipped[s]]
        rows = self._gather(row)
        n = len(SKIP_REASONS)

        def unpack(r: list[int]) -> dict:
            slots = [{"inputs": r[3 + n + s * (n + 1)], "skipped": r[4 + n + s * (n + 1): 4 + n + s * (n + 1) + n]}
                     for s in range(workers)]
            return {"run": {"epochs": r[0], "pairs": r[1], "inputs": r[2], "skipped": r[3:3 + n]}, "slots": slots}

        return {"version": STATE_VERSION, "epoch": current.epoch, "batches": current.batches, "layout": self.dataset.layout(),
                "reasons": list(SKIP_REASONS), "ranks": [unpack(r) for r in rows]}

    def _gather(self, row: list[int]) -> list[list[int]]:
        trainer = self._trainer()
        if self.dataset.world == 1 or trainer is None:
            return [row]
        strategy = trainer.strategy
        gathered = strategy.all_gather(torch.tensor(row, dtype=torch.int64, device=strategy.root_device))
        return gathered.reshape(self.dataset.world, len(row)).tolist()

    def load_state_dict(self, state: dict) -> None:
        """Applied by the next pass (Lightning calls this before the resumed run's first batch)."""
        if state and state.get("version") != STATE_VERSION:
            raise ValueError(f"data stream state version {state.get('version')} is not {STATE_VERSION}: cannot resume it")
        self._restore = state or None
