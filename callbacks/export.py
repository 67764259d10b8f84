"""At the end of fit: the model folder (``<run>/export/pretrained``) and a ``last.ckpt`` of the final step."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from src.conditioning import Preprocessing


def training_preprocessing(trainer: Trainer) -> Preprocessing:
    """The centre of the ranges the run's training pairs were drawn from (the datamodule's pair
    builder when it says, else ``src.conditioning``'s ranges)."""
    builder = getattr(trainer.datamodule, "train_builder", None)
    ranges = [getattr(builder, name, None) for name in ("reference_grow", "box_grow", "crop_grow")]
    return Preprocessing.centre_of(*ranges) if all(r is not None for r in ranges) else Preprocessing.centre_of()


def write_model_folder(pl_module: LightningModule, out: str | Path, preprocessing: Preprocessing,
                       use_ema: bool = True) -> Path:
    """``pl_module.to_pipeline(plain=True)`` saved atomically at ``out`` (EMA weights when kept and
    ``use_ema``): an ordinary fp32 model folder, LoRA adapters merged into their layers."""
    from contextlib import nullcontext

    from src.files import atomic_dir

    with pl_module.ema_weights() if use_ema else nullcontext(), atomic_dir(out) as tmp:
        pl_module.to_pipeline(preprocessing, plain=True).save_pretrained(tmp)
    return Path(out)


def is_sharded(pl_module: LightningModule) -> bool:
    """Whether the module's weights are FSDP2 shards (``DTensor``): no single rank holds them whole."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in pl_module.parameters())


class ExportOnTrainEnd(Callback):
    """In ``on_train_end`` (so a run stopped by ``max_time`` or a signal that sets
    ``trainer.should_stop`` exports too): ``<dir>/export/pretrained/``, the model folder of
    docs/design.md, written atomically; and ``last.ckpt`` brought to the final step when the
    checkpoint callback's last one is older (one ``last.ckpt``: never a ``last-v1.ckpt`` beside it).
    A sharded (FSDP2) run exports as ``anydoor export`` does: from that whole-file checkpoint, into a
    module rebuilt unsharded from the run's hyper-parameters on global rank 0's CPU."""

    def __init__(self, dirpath: Optional[str] = None, use_ema: bool = True) -> None:
        self.dirpath = dirpath
        self.use_ema = use_ema
        self.written: Optional[Path] = None

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        last = None
        if isinstance(ckpt, ModelCheckpoint) and ckpt.save_last and ckpt.last_model_path:
            # Saved before, not at this step (a stop between its every-N saves): overwrite its last.
            # When it saved nothing yet, its own on_train_end writes last.ckpt at this step.
            last = ckpt.last_model_path
            if getattr(ckpt, "_last_global_step_saved", None) != trainer.global_step:
                trainer.save_checkpoint(last)  # every rank: a collective for sharded strategies
        out = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir) / "export" / "pretrained"
        sharded = is_sharded(pl_module)
        if sharded and last is None:
            last = str(out.parent / "last.ckpt")
            trainer.save_checkpoint(last)  # every rank
        if not trainer.is_global_zero:  # log_dir above on every rank: it is a collective under DDP
            return
        preprocessing = training_preprocessing(trainer)
        if sharded:
            whole = type(pl_module)(**pl_module.hparams).eval()
            _, has_ema = whole.load_training_checkpoint(last)
            pl_module = whole
            use_ema = self.use_ema and has_ema
        else:
            use_ema = self.use_ema
        self.written = write_model_folder(pl_module, out, preprocessing, use_ema)
