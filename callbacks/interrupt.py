"""Ctrl-C and SIGTERM end a training run the way ``max_time`` does: a checkpoint, the export, a message.

Without this, Lightning turns Ctrl-C into a ``KeyboardInterrupt`` ("attempting graceful shutdown") that
skips ``on_train_end``, and SIGTERM into a ``SIGTERMException`` that does the same: no checkpoint, no
export. Here the first SIGINT/SIGTERM only raises a flag; after the current optimizer step every rank
agrees on it (``reduce_boolean_decision``: one rank's signal stops all ranks at the same step), sets
``trainer.should_stop`` and the loop ends normally, so every ``on_train_end`` runs (the export callback
writes ``last.ckpt`` and the model folder). A second signal raises ``KeyboardInterrupt`` at once.

The SIGINT handler is installed in ``on_fit_start``, before the data workers fork: they inherit it, and it
ignores signals outside the process that installed it, so a Ctrl-C to the whole process group stops the
trainer, not the workers (which would die mid-batch). SIGTERM is blocked from ``on_fit_start`` until our
handler replaces Lightning's in ``on_train_start``: workers forked in between keep it blocked for good (a
cluster's SIGTERM to every process reaches the trainer only), and one that arrives meanwhile is
delivered to our handler. SLURM's ``SIGUSR1`` requeue is Lightning's own and stays untouched.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer


def written_since(root: Path, since: float, skip: set[Path]) -> list[Path]:
    """Files under ``root`` modified at or after ``since`` (minus ``skip`` and event logs); a folder whose
    files are all new is listed once instead of file by file (an export folder is one line)."""
    if not root.is_dir():
        return []
    found: list[Path] = []
    files = [p for p in root.rglob("*") if p.is_file() and p not in skip and "tfevents" not in p.name]
    new = {p for p in files if p.stat().st_mtime >= since}

    def visit(folder: Path) -> None:
        for child in sorted(folder.iterdir()):
            if child.is_dir():
                inside = [p for p in files if child in p.parents]
                if inside and all(p in new for p in inside) and not any(p.suffix == ".ckpt" for p in inside):
                    found.append(child)
                else:
                    visit(child)
            elif child in new:
                found.append(child)

    visit(root)
    return found


class StopOnSignal(Callback):
    """First SIGINT/SIGTERM: stop after the current step and save; second: quit at once (see module doc)."""

    def __init__(self) -> None:
        self.received: Optional[int] = None  # first signal seen by this process
        self.stopped_by: Optional[int] = None  # set when the run ended because of a signal (any rank's)
        self._stop_time = 0.0
        self._log_dir = Path(".")
        self._pid = 0
        self._active = False
        self._blocked = False
        self._previous: dict[int, Any] = {}
        self._rank_zero = True

    # ------------------------------------------------------------------ signal plumbing
    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a data worker forked from the trainer: the trainer process handles the stop
        if not self._active:  # still installed after fit (Lightning restores what it found): the default
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = signum
            if self._rank_zero:  # os.write: a buffered print here can collide with the progress bar's
                os.write(2, f"\n{name}: finishing this step, then saving and exporting "
                            f"({name} again quits at once, without saving)\n".encode())
            return
        os.write(2, f"\n{name} again: quitting now, without saving\n".encode())
        self._restore_handlers()
        raise KeyboardInterrupt

    def _install(self, signum: int) -> None:
        if self._is_main_thread():
            self._previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._handle)

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, previous)
        self._previous = {}

    def _finish(self) -> None:
        self._active = False
        if self._blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            self._blocked = False
        self._restore_handlers()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.received = self.stopped_by = None
        self._pid, self._rank_zero, self._active = os.getpid(), trainer.is_global_zero, True
        self._install(signal.SIGINT)  # before the data workers fork: they inherit it, and it ignores them
        if hasattr(signal, "pthread_sigmask") and self._is_main_thread():
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # Lightning's handler comes next
            self._blocked = True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._install(signal.SIGTERM)  # over Lightning's (its SIGTERMException skips on_train_end)
        if self._blocked:  # a SIGTERM that came meanwhile is delivered now, to our handler
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            self._blocked = False

    @staticmethod
    def _is_main_thread() -> bool:
        return threading.current_thread() is threading.main_thread()

    # ------------------------------------------------------------------ the stop
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # stop only where an optimizer step has just been taken
        if trainer.strategy.reduce_boolean_decision(self.received is not None, all=False) and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_by = self.received or signal.SIGTERM  # another rank's signal: reported as SIGTERM
            self._stop_time = time.time()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Runs after the export callback (the CLI appends this callback last): if no resumable checkpoint
        of the final step was written, write ``last.ckpt`` (configs without the export callback)."""
        if self.stopped_by is None:
            return
        self._log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective: every rank asks
        io = trainer.strategy.checkpoint_io
        saved = getattr(io, "saved", {})
        on_disk = any(step == trainer.global_step and Path(p).is_file() for p, step in saved.items())
        if not trainer.strategy.broadcast(on_disk, src=0):
            callback = trainer.checkpoint_callback  # ModelCheckpoint's folder and name for "last", if any
            folder = getattr(callback, "dirpath", None) or self._log_dir / "checkpoints"
            name = getattr(callback, "CHECKPOINT_NAME_LAST", None) or "last"
            trainer.save_checkpoint(str(Path(folder) / f"{name}{getattr(callback, 'FILE_EXTENSION', '.ckpt')}"),
                                    weights_only=False)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish()
        if self.stopped_by is None or not trainer.is_global_zero:
            return
        saved = getattr(trainer.strategy.checkpoint_io, "saved", {})
        ckpts = sorted((Path(p) for p, step in saved.items() if step == trainer.global_step and Path(p).is_file()),
                       key=lambda p: (not p.name.startswith("last"), len(p.name)))  # last.ckpt first
        others = written_since(self._log_dir, self._stop_time - 1.0, set(ckpts))  # 1 s: coarse file clocks
        lines = [f"Stopped by {signal.Signals(self.stopped_by).name} at step {trainer.global_step}. Saved:"]
        lines += [f"  checkpoint  {p}" for p in ckpts]
        lines += [f"  {'folder' if p.is_dir() else 'file':<10}  {p}{os.sep if p.is_dir() else ''}" for p in others]
        if ckpts:
            lines.append(f"Resume: the same command with --ckpt_path {ckpts[0]}")
        else:
            lines.append("No checkpoint of this step is on disk (was checkpointing turned off?).")
        sys.stderr.write("\n".join(lines) + "\n")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._finish()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._finish()  # also when fit ended before on_train_start: never leave SIGTERM blocked
