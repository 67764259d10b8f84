"""Run by test_ddp.py in a subprocess: 2-process gloo DDP on CPU over real shards (Lightning re-launches
this script per rank). Each rank writes the sample hashes it trained on and a weight checksum."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer

from datamodules.anydoor_datamodule import AnyDoorDataModule
from models.anydoor_module import AnyDoorModule
from tests.fakes import TINY_MODEL_KWARGS


class Recording(AnyDoorModule):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: list[str] = []

    def training_step(self, batch, batch_idx):
        for t in batch["target"]:
            self.seen.append(hashlib.sha1(t.numpy().tobytes()).hexdigest())
        return super().training_step(batch, batch_idx)


def main(shards: str, out: str) -> None:
    module = Recording(**TINY_MODEL_KWARGS)
    data = AnyDoorDataModule(train_shards=shards, batch_size=2, num_workers=0, image_size=32,
                             samples_per_epoch=64, seed=0, shuffle_buffer=4)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      limit_val_batches=0, default_root_dir=out)
    trainer.fit(module, datamodule=data)
    checksum = float(sum(p.double().sum() for p in module.trainable_parameters().values()))
    record = {"rank": trainer.global_rank, "world": trainer.world_size, "steps": trainer.global_step,
              "seen": module.seen, "checksum": checksum}
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
