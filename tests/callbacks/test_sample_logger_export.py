import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from callbacks import ExportOnTrainEnd, SampleLogger
from models.anydoor_module import AnyDoorModule
from models.pipeline import AnyDoorPipeline
from tests.fakes import TINY_MODEL_KWARGS, RandomDataModule


class NoValidation(RandomDataModule):
    def val_dataloader(self):
        return []  # what AnyDoorDataModule returns for val_shards: null


def _fit(tmp_path, callbacks, datamodule=None, max_steps=3, **kwargs):
    module = AnyDoorModule(**{**TINY_MODEL_KWARGS, "ema_decay": 0.5})
    trainer = Trainer(max_steps=max_steps, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, callbacks=callbacks, **kwargs)
    trainer.fit(module, datamodule=datamodule or RandomDataModule())
    return module, trainer


def test_sample_logger_and_export_write_files(tmp_path):
    samples, export = SampleLogger(every_n_steps=2, num_samples=2, num_steps=2), ExportOnTrainEnd()
    module, trainer = _fit(tmp_path, [samples, export, ModelCheckpoint(every_n_train_steps=2, save_last=True)],
                           logger=TensorBoardLogger(str(tmp_path), name="tb"), limit_val_batches=0)
    assert len(samples.written) == 2  # step 2 and train end (step 3)
    image = Image.open(samples.written[0])
    tile = 32 * 5  # 32 px crops enlarged 5x (nearest) to >= 160 px
    assert image.size[0] == 4 * (tile + 4) + 4 and image.size[1] > 2 * (tile + 4)  # 4 labelled columns x 2 rows
    assert list((tmp_path / "tb").rglob("events.out.tfevents*"))
    run = tmp_path / "tb" / "version_0"
    assert export.written == run / "export" / "pretrained" and not list((run / "export").glob(".*"))
    pipe = AnyDoorPipeline.from_pretrained(export.written)
    ema = dict(zip(module.trainable_parameters(), module.ema.shadow_params))
    assert torch.equal(pipe.unet.conv_out.weight, ema["denoiser.unet.conv_out.weight"])  # the EMA weights
    assert not torch.equal(pipe.unet.conv_out.weight, module.denoiser.unet.conv_out.weight)
    assert pipe.config.sampling == {"scheduler": "ddim", "steps": 2, "guidance": 1.0}
    # the checkpoint saved at step 2 is brought to the final step, and no last-v1.ckpt appears beside it
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3 and last["ema"]["optimization_step"] == 3


def test_a_short_run_keeps_one_last_checkpoint(tmp_path):
    _fit(tmp_path, [ExportOnTrainEnd(), ModelCheckpoint(every_n_train_steps=1000, save_last=True)], logger=False,
         limit_val_batches=0, max_steps=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_checkpoints_hold_the_ema_of_their_own_step(tmp_path):
    """ModelCheckpoint saves in on_train_batch_end, before the module's: the EMA must already be updated."""
    module, _ = _fit(tmp_path, [ModelCheckpoint(every_n_train_steps=1, save_top_k=-1)], logger=False,
                     limit_val_batches=0, max_steps=2)
    for step in (1, 2):
        ckpt = torch.load(tmp_path / "checkpoints" / f"epoch=0-step={step}.ckpt", weights_only=True)
        assert ckpt["ema"]["optimization_step"] == step
    assert module.ema.optimization_step == 2


def test_training_without_validation_data_runs_to_the_end_and_exports(tmp_path):
    samples, export = SampleLogger(every_n_steps=2, num_samples=2, num_steps=1), ExportOnTrainEnd()
    _fit(tmp_path, [samples, export], datamodule=NoValidation(), logger=False, val_check_interval=1,
         check_val_every_n_epoch=None)
    assert len(samples.written) == 2 and export.written.is_dir()
    assert AnyDoorPipeline.from_pretrained(export.written).unet.config.sample_size == 8
