import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import default_collate

from models.anydoor_module import AnyDoorModule, psnr_in_boxes
from tests.fakes import TINY_MODEL_KWARGS, RandomDataModule, make_sample


def _batch(n: int = 2) -> dict:
    return default_collate([make_sample(i) for i in range(n)])


def test_exactly_the_intended_parameters_train(tiny_module):
    names = set(tiny_module.trainable_parameters())
    assert names, "nothing trains"
    for n in names:
        assert (n.startswith("id_encoder.projector.")
                or (n.startswith("denoiser.controlnet.") and not n.startswith("denoiser.controlnet.conv_in."))
                or n.split(".")[2] in ("up_blocks", "conv_norm_out", "conv_out")), n
    all_names = {n for n, _ in tiny_module.named_parameters()}
    expected_groups = ["id_encoder.projector.weight", "denoiser.controlnet.controlnet_mid_block.weight",
                       "denoiser.unet.conv_out.weight"]
    assert all(g in names for g in expected_groups)
    assert "denoiser.controlnet.conv_in.weight" in all_names - names
    assert not any(n.startswith(("id_encoder.vit.", "denoiser.unet.down_blocks.", "denoiser.unet.mid_block.",
                                 "denoiser.unet.conv_in.", "denoiser.unet.time_embedding.")) for n in names)
    frozen_projector = AnyDoorModule(**{**TINY_MODEL_KWARGS, "train_projector": False})
    assert not any(n.startswith("id_encoder.") for n in frozen_projector.trainable_parameters())


def test_optimizer_step_changes_only_trainable_weights():
    module = AnyDoorModule(**TINY_MODEL_KWARGS)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    opt = module.configure_optimizers()
    module.train()
    for _ in range(2):
        loss = module.diffusion_loss(_batch())
        loss.backward()
        opt.step()
        opt.zero_grad()
    trainable = set(module.trainable_parameters())
    for n, p in module.named_parameters():
        if n in trainable:
            continue
        assert torch.equal(p, before[n]), f"frozen {n} changed"
    changed = [n for n in trainable if not torch.equal(module.get_parameter(n), before[n])]
    assert "denoiser.unet.conv_out.weight" in changed and "id_encoder.projector.weight" in changed
    assert "denoiser.controlnet.controlnet_cond_embedding.conv_out.weight" in changed


def test_rebuild_is_deterministic_for_frozen_parts():
    a, b = AnyDoorModule(**TINY_MODEL_KWARGS), AnyDoorModule(**TINY_MODEL_KWARGS)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("extra", [dict(prediction_type="epsilon", min_snr_gamma=5.0),
                                   dict(cfg_drop_prob=1.0, ema_decay=0.9)])
def test_loss_variants_forward_backward(extra):
    module = AnyDoorModule(**{**TINY_MODEL_KWARGS, **extra})
    module.train()
    batch = _batch()
    batch["timesteps"] = torch.tensor([3, 997])
    loss = module.diffusion_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert module.denoiser.unet.conv_out.weight.grad is not None


def test_cfg_drop_uses_black_reference_tokens(tiny_module):
    ref = torch.rand(3, 3, 56, 56)
    dropped = tiny_module.id_tokens(ref, torch.tensor([True, False, True]))
    uncond = tiny_module.id_encoder.unconditional_tokens(1)
    assert torch.allclose(dropped[0], uncond[0]) and torch.allclose(dropped[2], uncond[0])
    assert torch.allclose(dropped[1], tiny_module.id_encoder(ref[1:2])[0])


def test_sample_shape_and_cfg(tiny_module):
    batch = _batch()
    out = tiny_module.sample(batch, num_steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    again = tiny_module.sample(batch, num_steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 32, 32) and torch.equal(out, again)
    assert out.min() >= -1 and out.max() <= 1


def test_psnr_in_boxes_counts_only_the_box():
    a = torch.zeros(1, 3, 8, 8)
    b = a.clone()
    b[..., :2, :] = 1.0  # differs only outside the box
    assert psnr_in_boxes(a, b, torch.tensor([[0, 4, 8, 8]])) > 90
    b[..., 4:, :] = 1.0  # error 1.0 in [-1,1] units = 0.5 in [0,1]: PSNR = 20 log10(2)
    assert torch.isclose(psnr_in_boxes(a, b, torch.tensor([[0, 4, 8, 8]])), torch.tensor([6.0206]), atol=1e-3).all()


def test_checkpoint_keeps_trainable_only_and_resume_continues(tmp_path):
    module = AnyDoorModule(**{**TINY_MODEL_KWARGS, "ema_decay": 0.9})
    kw = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              limit_val_batches=0, default_root_dir=tmp_path)
    trainer = Trainer(max_steps=2, **kw)
    trainer.fit(module, datamodule=RandomDataModule())
    ckpt_path = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt_path)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert set(ckpt["state_dict"]) == set(module.trainable_parameters())
    assert "ema" in ckpt and ckpt["global_step"] == 2
    resumed_module = AnyDoorModule(**{**TINY_MODEL_KWARGS, "ema_decay": 0.9})
    resumed = Trainer(max_steps=4, **kw)
    resumed.fit(resumed_module, datamodule=RandomDataModule(), ckpt_path=str(ckpt_path))
    assert resumed.global_step == 4
    assert resumed_module.ema.num_updates == 4
    loaded = AnyDoorModule.load_from_checkpoint(ckpt_path)
    for n, p in module.trainable_parameters().items():
        assert torch.equal(loaded.get_parameter(n), ckpt["state_dict"][n])
    ckpt["state_dict"].pop("denoiser.unet.conv_out.weight")
    torch.save(ckpt, tmp_path / "broken.ckpt")
    with pytest.raises(KeyError, match="conv_out"):
        AnyDoorModule.load_from_checkpoint(tmp_path / "broken.ckpt")


def test_save_pretrained_layout(tiny_module, tmp_path):
    tiny_module.save_pretrained(str(tmp_path / "pretrained"))
    for part in ("unet", "controlnet", "vae", "id_encoder", "scheduler"):
        assert (tmp_path / "pretrained" / part / "config.json").is_file() or \
            (tmp_path / "pretrained" / part / "scheduler_config.json").is_file(), part
    assert (tmp_path / "pretrained" / "model_index.json").is_file()
    from models.pipeline import AnyDoorPipeline

    pipe = AnyDoorPipeline.from_pretrained(tmp_path / "pretrained")  # the recipe's own sampler comes along
    assert pipe.sampling_defaults == {"sample_scheduler": "ddim", "sample_steps": tiny_module.hparams.sample_steps,
                                      "guidance_scale": tiny_module.hparams.guidance_scale}


def test_mismatched_hint_and_first_stage_is_rejected():
    with pytest.raises(ValueError, match="must match"):
        AnyDoorModule(**{**TINY_MODEL_KWARGS, "hint_channels": [16, 32, 96, 256]})
