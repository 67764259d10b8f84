"""frozen_dtype: the frozen parts stored in bf16 for training, trained weights fp32, exports fp32."""

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import default_collate

from models.anydoor_module import AnyDoorModule
from models.pipeline import AnyDoorPipeline
from tests.fakes import TINY_MODEL_KWARGS, RandomDataModule, make_sample


def _batch(n: int = 2) -> dict:
    batch = default_collate([make_sample(i) for i in range(n)])
    batch["timesteps"] = torch.tensor([150, 850])[:n]
    return batch


def test_frozen_parts_are_bf16_and_trained_weights_stay_fp32():
    module = AnyDoorModule(**TINY_MODEL_KWARGS, frozen_dtype="bfloat16", ema_decay=0.9)
    trainable = module.trainable_parameters()
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    frozen = {n: p.dtype for n, p in module.named_parameters() if n not in trainable}
    assert set(frozen.values()) == {torch.bfloat16}
    assert any(n.startswith("id_encoder.vit.") for n in frozen) and any(n.startswith("denoiser.unet.down_blocks.")
                                                                       for n in frozen)
    assert {p.dtype for p in module.ema.shadow_params} == {torch.float32}
    with pytest.raises(ValueError, match="frozen_dtype must be one of"):
        AnyDoorModule(**TINY_MODEL_KWARGS, frozen_dtype="int8")


def test_loss_under_autocast_is_the_fp32_models_within_bf16_rounding():
    """Under bf16 autocast matmuls see bf16 weights either way; norms see bf16-rounded instead of fp32
    weights. Same noise and timesteps: the losses agree to well under 1%."""
    batch = _batch()
    losses = []
    for frozen_dtype in (None, "bfloat16"):
        module = AnyDoorModule(**TINY_MODEL_KWARGS, frozen_dtype=frozen_dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = module.diffusion_loss(batch, batch["timesteps"], torch.Generator().manual_seed(0))
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
                   for p in module.trainable_parameters().values() if p.grad is not None)
        losses.append(float(loss.detach()))
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)


class _Losses(Callback):
    def __init__(self) -> None:
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_a_few_bf16_mixed_steps_train_and_a_32_true_run_is_refused(tmp_path):
    module = AnyDoorModule(**TINY_MODEL_KWARGS, frozen_dtype="bfloat16")
    frozen_before = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    record = _Losses()
    trainer = Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=4, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, enable_checkpointing=False,
                      default_root_dir=tmp_path, callbacks=[record])
    trainer.fit(module, datamodule=RandomDataModule(batch_size=2, length=8))
    assert len(record.losses) == 4 and all(0 < loss < 10 for loss in record.losses)
    assert all(torch.equal(p, frozen_before[n]) for n, p in module.named_parameters() if not p.requires_grad)
    assert {p.dtype for p in module.trainable_parameters().values()} == {torch.float32}
    # Sampling outside a training step (SampleLogger) runs under autocast too.
    crops = module.generate(module.to_pipeline(), _batch(), generator=torch.Generator().manual_seed(0))
    assert crops.dtype == torch.float32 and torch.isfinite(crops).all()

    refused = Trainer(accelerator="cpu", precision="32-true", max_steps=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="needs trainer.precision bf16-mixed or 16-mixed, got 32-true"):
        refused.fit(AnyDoorModule(**TINY_MODEL_KWARGS, frozen_dtype="bfloat16"),
                    datamodule=RandomDataModule(batch_size=2, length=4))


def test_export_is_an_fp32_folder_of_the_same_weights(tmp_path):
    module = AnyDoorModule(**TINY_MODEL_KWARGS, frozen_dtype="bfloat16").eval()
    module.to_pipeline(plain=True).save_pretrained(tmp_path / "model")
    loaded = AnyDoorPipeline.from_pretrained(tmp_path / "model")
    for part, live in [(loaded.unet, module.denoiser.unet), (loaded.id_encoder, module.id_encoder)]:
        saved = part.state_dict()
        for name, p in live.state_dict().items():
            assert saved[name].dtype == torch.float32 and torch.equal(saved[name], p.float()), name
    assert module.denoiser.unet.conv_in.weight.dtype == torch.bfloat16  # the live module keeps its dtypes
    crops = module.generate(loaded, _batch(), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(crops).all()


def test_a_module_built_to_sample_from_a_run_config_keeps_fp32(tmp_path):
    """frozen_dtype is how training stores the frozen parts: `anydoor export/eval` rebuild without it."""
    import yaml

    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in TINY_MODEL_KWARGS.items()}
    args["unet_config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in args["unet_config"].items()}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": {"class_path": "models.anydoor_module.AnyDoorModule",
                                              "init_args": {**args, "frozen_dtype": "bfloat16"}}}))
    module = AnyDoorModule.from_config_file(path)
    assert {p.dtype for p in module.parameters()} == {torch.float32}
