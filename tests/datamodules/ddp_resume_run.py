"""Run by test_resume.py in a subprocess: 2-process gloo DDP on CPU (Lightning re-launches this script per
rank), 2 loader workers per rank. Each rank writes the hashes of the batches it trained on.

    python -m tests.datamodules.ddp_resume_run SHARDS OUT STEPS [EVERY|-] [CKPT]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.datamodules.test_resume import Recorder, datamodule


def main(shards: str, out: str, steps: int, every: int | None, ckpt: str | None) -> None:
    model = Recorder()
    callbacks = [ModelCheckpoint(dirpath=out, every_n_train_steps=every, save_top_k=-1)] if every else []
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=bool(every), callbacks=callbacks,
                      limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=out)
    trainer.fit(model, datamodule=datamodule(shards, 2), ckpt_path=ckpt)
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps(model.seen))


if __name__ == "__main__":
    torch.set_num_threads(1)
    args = sys.argv[1:] + [None] * (5 - len(sys.argv[1:]))
    main(args[0], args[1], int(args[2]), None if args[3] in (None, "-") else int(args[3]), args[4])
