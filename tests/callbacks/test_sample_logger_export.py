import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from safetensors.torch import load_file

from callbacks import ExportOnTrainEnd, SampleLogger, export_checkpoint
from models.anydoor_module import AnyDoorModule
from tests.fakes import TINY_MODEL_KWARGS, RandomDataModule


def test_sample_logger_and_export_write_files(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    samples = SampleLogger(every_n_steps=2, num_samples=2, num_steps=2)
    trainer = Trainer(max_steps=3, accelerator="cpu", logger=logger, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
                      callbacks=[samples, ExportOnTrainEnd()])
    module = AnyDoorModule(**{**TINY_MODEL_KWARGS, "ema_decay": 0.5})
    trainer.fit(module, datamodule=RandomDataModule())
    assert len(samples.written) == 2  # step 2 and train end (step 3)
    image = Image.open(samples.written[0])
    assert image.size == (4 * 32 + 5 * 2, 2 * 32 + 3 * 2)  # [ref | collage | generated | truth] x 2 rows
    assert list((tmp_path / "tb").rglob("events.out.tfevents*"))
    export = tmp_path / "tb" / "version_0" / "export"
    state = load_file(str(export / "trainable.safetensors"))
    assert set(state) == set(module.trainable_parameters())
    assert torch.equal(state["denoiser.unet.conv_out.weight"], module.ema.shadow["denoiser.unet.conv_out.weight"])
    assert (export / "pretrained" / "model_index.json").is_file()
    ckpt = tmp_path / "tb" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 3
    out = export_checkpoint(ckpt, tmp_path / "from_ckpt.safetensors", use_ema=False)
    raw = load_file(str(out))
    assert torch.equal(raw["denoiser.unet.conv_out.weight"], module.denoiser.unet.conv_out.weight)
