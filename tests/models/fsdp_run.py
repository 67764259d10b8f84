"""Run by test_fsdp.py in a subprocess: 2-process FSDP2 on CPU (gloo) through Lightning's
ModelParallelStrategy, a few steps of the tiny model, a sharded checkpoint, then a resume from it.

Lightning's own ``strategy="fsdp"`` (FSDP1) refuses CPU ("The strategy `fsdp` requires a GPU
accelerator"); FSDP2 (``fully_shard``) through ``ModelParallelStrategy`` runs on gloo, with the
sharding plan of ``AnyDoorModule.configure_model``. Checkpoints are saved whole
(``save_distributed_checkpoint=False``): the module keeps only trainable weights in them, and
Lightning's sharded (DCP) load asks for every key ("Missing key in checkpoint state_dict:
state_dict.id_encoder.vit.cls_token"). ``ExportOnTrainEnd`` writes OUT/export/pretrained from it.

    python -m tests.models.fsdp_run OUT train     # 3 steps, checkpoint OUT/ckpt/last.ckpt (a folder)
    python -m tests.models.fsdp_run OUT resume    # from it to step 5
    python -m tests.models.fsdp_run OUT train '{"lora": {"rank": 4}}'   # module options (JSON; "precision": the trainer's)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy

from callbacks.export import ExportOnTrainEnd
from models.anydoor_module import AnyDoorModule
from tests.fakes import TINY_MODEL_KWARGS, RandomDataModule


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def checksum(module: AnyDoorModule) -> float:
    return float(sum(full(p.detach()).double().sum() for p in module.trainable_parameters().values()))


class Record(Callback):
    def __init__(self) -> None:
        self.start = None

    def on_train_start(self, trainer, module) -> None:
        self.start = checksum(module)


def main(out: str, phase: str, options: str = "{}") -> None:
    torch.set_num_threads(1)
    options = json.loads(options)
    precision = options.pop("precision", "32-true")
    module = AnyDoorModule(**TINY_MODEL_KWARGS, **options)
    record = Record()
    ckpt_dir = Path(out) / "ckpt"
    trainer = Trainer(accelerator="cpu", devices=2,
                      strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1,
                                                     save_distributed_checkpoint=False),
                      precision=precision, max_steps=3 if phase == "train" else 5, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, default_root_dir=out,
                      callbacks=[record, ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=3,
                                                         save_top_k=0), ExportOnTrainEnd()])
    trainer.fit(module, datamodule=RandomDataModule(batch_size=2, length=16),
                ckpt_path=str(ckpt_dir / "last.ckpt") if phase == "resume" else None)
    params = module.trainable_parameters()
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params.values())
    total = sum(p.numel() for p in params.values())
    rec = {"rank": trainer.global_rank, "world": trainer.world_size, "steps": trainer.global_step,
           "start": record.start, "end": checksum(module), "local_numel": local, "total_numel": total,
           "sharded": [type(p).__name__ for p in params.values()][:1]}
    Path(out, f"{phase}{trainer.global_rank}.json").write_text(json.dumps(rec))


if __name__ == "__main__":
    main(*sys.argv[1:])
