"""Helpers that training-CLI subprocess tests add through the config (tests only)."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from tests.fakes import RandomDataModule, RandomPairs


class StepLog(Callback):
    """Appends ``{"rank": r, "step": global_step}`` after every training batch: tests wait on it before
    signalling and compare where each rank stopped and where a resumed run starts."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"rank": trainer.global_rank, "step": trainer.global_step}) + "\n")


def logged_steps(path: Path, rank: int = 0) -> list[int]:
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return [r["step"] for r in records if r["rank"] == rank]


class WorkerPairs(RandomDataModule):
    """RandomDataModule with data worker processes (the shard loader's situation: Ctrl-C reaches them too)."""

    def __init__(self, batch_size: int = 2, length: int = 100_000, size: int = 32, num_workers: int = 1) -> None:
        super().__init__(batch_size=batch_size, length=length, size=size)
        self.num_workers = num_workers

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomPairs(self.length, self.size), batch_size=self.batch_size,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)


class Evil:
    """Unpickling calls ``open(marker, "w")``: the marker file appears if the pickle's code runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "global_step": 1, "payload": Evil(marker)}, path)
    return path


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """An ``http.server`` on 127.0.0.1 serving ``folder``; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
