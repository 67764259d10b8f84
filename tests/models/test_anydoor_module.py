import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import default_collate

from models.anydoor_module import AnyDoorModule
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


@pytest.mark.parametrize("extra", [dict(noise_schedule={"prediction_type": "epsilon"}, min_snr_gamma=5.0),
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


def test_module_and_saved_pipeline_sample_identically(tmp_path):
    """to_pipeline() wraps the live parts; saving and loading that pipeline changes no output."""
    from models.pipeline import AnyDoorPipeline, Job

    module = AnyDoorModule(**{**TINY_MODEL_KWARGS, "ema_decay": 0.9})
    with torch.no_grad():  # trained-looking weights: the ControlNet's zero output convs made non-zero
        for p in module.denoiser.controlnet.controlnet_down_blocks.parameters():
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    live = module.to_pipeline()
    assert live.unet is module.denoiser.unet and live.vae is module.vae  # shared, not copied
    module.train()
    live.save_pretrained(tmp_path / "m")
    assert module.training and module.denoiser.unet.training  # no forced eval() on shared parts
    loaded = AnyDoorPipeline.from_pretrained(tmp_path / "m")
    batch = _batch()
    outs = []
    for pipe in (live, loaded):
        outs.append(module.generate(pipe, batch, steps=3, guidance=3.0, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(outs[0], outs[1]) and outs[0].shape == (2, 3, 32, 32)
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (60, 50, 4), dtype=np.uint8)
    ref[..., 3] = 255
    job = Job(ref, rng.integers(0, 256, (80, 90, 3), dtype=np.uint8), box=(20, 20, 50, 60))
    a, b = (p(job, generator=torch.Generator().manual_seed(1), progress=False) for p in (live, loaded))
    assert np.array_equal(a.images[0], b.images[0])


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
    assert resumed_module.ema.optimization_step == 4
    loaded = AnyDoorModule.load_from_checkpoint(ckpt_path)
    for n, p in module.trainable_parameters().items():
        assert torch.equal(loaded.get_parameter(n), ckpt["state_dict"][n])
    ckpt["state_dict"].pop("denoiser.unet.conv_out.weight")
    torch.save(ckpt, tmp_path / "broken.ckpt")
    with pytest.raises(KeyError, match="conv_out"):
        AnyDoorModule.load_from_checkpoint(tmp_path / "broken.ckpt")


def test_pipeline_recommends_the_recipe(tiny_module):
    pipe = tiny_module.to_pipeline()
    assert pipe.config.sampling == {"scheduler": "ddim", "steps": tiny_module.hparams.sample_steps,
                                    "guidance": tiny_module.hparams.guidance_scale}
    assert pipe.preprocessing_settings() == (1.3, 1.15, 2.15, -1.0)  # centre of the training ranges
    assert pipe.scheduler.config.prediction_type == "v_prediction"


def test_mismatched_collage_embedding_and_first_stage_is_rejected():
    with pytest.raises(ValueError, match="must match"):
        AnyDoorModule(**{**TINY_MODEL_KWARGS, "collage_embedding_channels": [16, 32, 96, 256]})


def test_training_without_the_timestep_callback_is_an_explicit_choice():
    module = AnyDoorModule(**{**TINY_MODEL_KWARGS, "uniform_timesteps": False})
    with pytest.raises(RuntimeError, match="callbacks.FrequencyAwareTimesteps.*uniform_timesteps: true"):
        module.diffusion_loss(_batch())
    batch = _batch()
    batch["timesteps"] = torch.tensor([3, 997])
    assert torch.isfinite(module.diffusion_loss(batch))


@pytest.mark.parametrize("prediction_type, divisor", [("epsilon", 0.0), ("v_prediction", 1.0)])
def test_min_snr_weights_each_sample_by_min_snr_gamma_over_snr(prediction_type, divisor):
    from diffusers.training_utils import compute_snr

    kwargs = {**TINY_MODEL_KWARGS, "noise_schedule": {"prediction_type": prediction_type}}
    plain, weighted = AnyDoorModule(**kwargs), AnyDoorModule(**kwargs, min_snr_gamma=2.0)
    batch = _batch()
    t = torch.tensor([3, 600])
    snr = compute_snr(plain.noise_scheduler, t)
    per_sample = [plain.diffusion_loss({k: v[i:i + 1] for k, v in batch.items()}, t[i:i + 1],
                                       torch.Generator().manual_seed(i)) for i in range(2)]
    weights = snr.clamp(max=2.0) / (snr + divisor)
    expected = torch.stack([w * loss for w, loss in zip(weights, per_sample)]).mean()
    got = torch.stack([weighted.diffusion_loss({k: v[i:i + 1] for k, v in batch.items()}, t[i:i + 1],
                                               torch.Generator().manual_seed(i)) for i in range(2)])
    assert torch.allclose(got.mean(), expected, rtol=1e-5)
    assert weights[0] < 1 < snr[0]  # a low-noise sample is down-weighted


def test_collage_residual_starts_from_the_collage_scene(tmp_path):
    """With ``collage_residual`` the untrained model's one-step output *is* the hole-filled collage
    (zero-init ``conv_out``): the scene outside the box exactly, before any training; the saved
    pipeline keeps the behaviour, and the option is refused where the prediction is not the clean latent."""
    from models.components.denoiser import hole_filled
    from models.pipeline import AnyDoorPipeline

    kwargs = {**TINY_MODEL_KWARGS, "collage_residual": True, "train_unet_encoder": True,
              "noise_schedule": {"prediction_type": "sample", "rescale_betas_zero_snr": True, "set_alpha_to_one": True}}
    module = AnyDoorModule(**kwargs)
    assert module.denoiser.unet.conv_in.weight.requires_grad  # the encoder trains too
    batch = _batch()
    for pipe in (module.to_pipeline(), None):
        if pipe is None:
            module.to_pipeline().save_pretrained(tmp_path / "m")
            pipe = AnyDoorPipeline.from_pretrained(tmp_path / "m")
        out = module.generate(pipe, batch, steps=1, guidance=1.0, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(out, hole_filled(batch["collage"]).clamp(-1, 1), atol=1e-5)
    loss = module.diffusion_loss({**batch, "timesteps": torch.tensor([3, 997])})
    loss.backward()
    assert module.denoiser.unet.conv_out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="collage_residual needs"):
        AnyDoorModule(**{**kwargs, "noise_schedule": {"prediction_type": "v_prediction"}})


def test_hole_filled_uses_the_mean_of_the_scene_around_the_hole():
    from models.components.denoiser import hole_filled

    collage = torch.zeros(1, 4, 4, 4)
    collage[0, :3] = torch.arange(16.0).view(4, 4) / 16  # the same ramp in R, G, B
    collage[0, 3, 1:3, 1:3] = 1.0  # the hole
    collage[0, 3, 3, :] = -1.0  # padding: neither scene nor hole
    out = hole_filled(collage)
    scene = [0, 1, 2, 3, 4, 7, 8, 11]  # row-major indices of location 0
    assert torch.allclose(out[0, :, 1:3, 1:3], torch.tensor(scene, dtype=torch.float32).mean() / 16)
    keep = collage[0, 3] != 1.0
    assert torch.equal(out[0][:, keep], collage[0, :3][:, keep])


def test_packed_loader_batches_train_like_their_float_form(tiny_module):
    """The loader ships bytes (src.packed); the module's on_after_batch_transfer makes the float form."""
    g = torch.Generator().manual_seed(0)
    packed = {"reference": torch.randint(0, 256, (2, 3, 56, 56), dtype=torch.uint8, generator=g),
              "target": torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=g),
              "collage": torch.randint(0, 256, (2, 4, 32, 32), dtype=torch.uint8, generator=g),
              "object_mask": torch.randint(0, 2, (2, 1, 32, 32), dtype=torch.uint8, generator=g),
              "kind": torch.tensor([0, 1]), "box": torch.tensor([[4, 6, 20, 22], [5, 6, 21, 22]])}
    packed["collage"][:, 3] = torch.randint(0, 3, (2, 32, 32), dtype=torch.uint8, generator=g)
    batch = tiny_module.on_after_batch_transfer(packed, 0)
    assert batch["target"].dtype == torch.float32 and batch["target"].min() >= -1 and batch["target"].max() <= 1
    assert set(batch["collage"][:, 3].unique().tolist()) <= {-1.0, 0.0, 1.0}
    torch.testing.assert_close(batch["reference"], packed["reference"].float() / 255)
    assert tiny_module.on_after_batch_transfer(batch, 0) is batch  # float batches pass through
    gen = torch.Generator().manual_seed(1)
    loss = tiny_module.diffusion_loss(batch, timesteps=torch.tensor([10, 500]), generator=gen)
    assert torch.isfinite(loss)
