"""LoRA (peft) on ControlNet + U-Net decoder: what trains, what checkpoints hold, merged export."""

import pytest
import torch
import yaml
from torch.utils.data import default_collate

from models.anydoor_module import AnyDoorModule
from models.components.lora import NEW_CONTROLNET_PARTS, has_adapters
from models.pipeline import AnyDoorPipeline
from tests.fakes import TINY_MODEL_KWARGS, make_sample

LORA = {"rank": 4, "alpha": 8}


def _batch(n: int = 2) -> dict:
    return default_collate([make_sample(i) for i in range(n)])


def _with_trained_adapters(module: AnyDoorModule, seed: int = 0) -> AnyDoorModule:
    """lora_B starts at zero (the adapted model equals the base one); give every adapter a value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return module


def test_adapters_and_the_new_controlnet_parts_train_base_weights_do_not():
    full = AnyDoorModule(**TINY_MODEL_KWARGS)
    lora = AnyDoorModule(**TINY_MODEL_KWARGS, lora=LORA)
    names = set(lora.trainable_parameters())
    adapters = {n for n in names if ".lora_" in n}
    assert adapters and all(n.startswith(("denoiser.controlnet.", "denoiser.unet.up_blocks.", "denoiser.unet.conv_out."))
                            for n in adapters)
    whole = names - adapters
    new_parts = tuple(f"denoiser.{p}." for p in NEW_CONTROLNET_PARTS)
    assert whole == {n for n in full.trainable_parameters() if n.startswith(new_parts + ("id_encoder.projector.",))}
    assert not any(n.startswith("denoiser.controlnet.conv_in") for n in names)  # stays zero and frozen
    assert not any(".base_layer." in n for n in names)
    # The same base model: the layers that got adapters hold the weights full fine-tuning starts from.
    base = {n.replace(".base_layer.", "."): p for n, p in lora.named_parameters() if ".lora_" not in n}
    assert all(torch.equal(base[n], p) for n, p in full.named_parameters())
    n_lora = sum(p.numel() for p in lora.trainable_parameters().values())
    assert n_lora < sum(p.numel() for p in full.trainable_parameters().values()) / 2


def test_targets_narrow_the_adapted_layers_and_bad_options_are_one_line_errors():
    attention = AnyDoorModule(**TINY_MODEL_KWARGS, lora={"rank": 2, "targets": ["to_q", "to_v"]})
    layers = {n.split(".lora_")[0] for n in attention.trainable_parameters() if ".lora_" in n}
    assert layers and all(n.endswith((".to_q", ".to_v")) for n in layers)
    for spec, message in [({"rank": 0}, "rank must be a positive integer"), ({"rank": 2, "rnak": 3}, "unknown keys"),
                          ({"rank": 2, "targets": "to_q"}, "list of layer-name endings"),
                          ({"rank": 2, "targets": ["nothing_like_this"]}, "no trainable Linear/Conv2d")]:
        with pytest.raises(ValueError, match=message):
            AnyDoorModule(**TINY_MODEL_KWARGS, lora=spec)


def test_training_moves_adapters_only_and_checkpoints_hold_only_what_trains():
    module = AnyDoorModule(**TINY_MODEL_KWARGS, lora=LORA)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    opt = module.configure_optimizers()
    module.train()
    for _ in range(2):
        module.diffusion_loss(_batch()).backward()
        opt.step()
        opt.zero_grad()
    trainable = set(module.trainable_parameters())
    changed = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable and any(".lora_B." in n for n in changed)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == trainable
    assert not any(".base_layer." in k for k in checkpoint["state_dict"])


def test_merged_export_samples_as_the_live_adapters_do(tmp_path):
    """Same noise, same tokens: the live module (peft layers, unmerged) vs its export (adapters folded
    into the weights, saved and loaded by AnyDoorPipeline.from_pretrained without peft)."""
    module = _with_trained_adapters(AnyDoorModule(**TINY_MODEL_KWARGS, lora=LORA)).eval()
    live = {n: p.detach().clone() for n, p in module.named_parameters()}
    plain = module.to_pipeline(plain=True)
    assert not has_adapters(plain.unet) and not has_adapters(plain.controlnet)
    assert has_adapters(module.denoiser)  # the live module is untouched
    assert all(torch.equal(p, live[n]) for n, p in module.named_parameters())
    plain.save_pretrained(tmp_path / "model")
    loaded = AnyDoorPipeline.from_pretrained(tmp_path / "model")
    assert not any("lora" in k for k in loaded.unet.state_dict())
    batch = _batch()
    unmerged = module.generate(module.to_pipeline(), batch, generator=torch.Generator().manual_seed(3))
    merged = module.generate(loaded, batch, generator=torch.Generator().manual_seed(3))
    untrained = module.generate(AnyDoorModule(**TINY_MODEL_KWARGS).to_pipeline(), batch,
                                generator=torch.Generator().manual_seed(3))
    # Merging changes only the summation order inside each layer (fp32): a few 1e-7 per value.
    assert (merged - unmerged).abs().max() < 1e-5
    assert (untrained - unmerged).abs().max() > 1e-2  # the adapters do change the output


def test_lora_run_trains_exports_and_generates(tmp_path, capsys):
    """`lightning fit` with the lora option (2 steps, ExportOnTrainEnd), then `anydoor export` of its
    last.ckpt: both folders load without peft and equal each other."""
    from models.components.weights import read_training_checkpoint
    from src.cli.main import main
    from src.cli.train import cli_main

    model_args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in TINY_MODEL_KWARGS.items()}
    model_args["unet_config"] = {k: (list(v) if isinstance(v, tuple) else v)
                                 for k, v in TINY_MODEL_KWARGS["unet_config"].items()}
    model_args.update(lora=LORA, ema_decay=0.9)
    config = {"trainer": {"accelerator": "cpu", "max_steps": 2, "logger": False, "enable_progress_bar": False,
                          "enable_model_summary": False, "limit_val_batches": 0, "default_root_dir": str(tmp_path),
                          "callbacks": [{"class_path": "callbacks.ExportOnTrainEnd"},
                                        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                         "init_args": {"dirpath": str(tmp_path / "run" / "checkpoints"),
                                                       "save_last": True}}]},
              "model": {"class_path": "models.anydoor_module.AnyDoorModule", "init_args": model_args},
              "data": {"class_path": "tests.fakes.RandomDataModule", "init_args": {"batch_size": 2}}}
    cli = cli_main({"fit": config})
    assert cli.trainer.global_step == 2
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = read_training_checkpoint(ckpt_path)["state_dict"]
    assert set(state) == set(cli.model.trainable_parameters()) and any(".lora_A." in k for k in state)
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"model": config["model"]}))
    assert main(["export", str(ckpt_path), "--out", str(tmp_path / "exported")]) == 0
    assert "EMA weights" in capsys.readouterr().out
    at_end = AnyDoorPipeline.from_pretrained(tmp_path / "export" / "pretrained")
    exported = AnyDoorPipeline.from_pretrained(tmp_path / "exported")
    for name, p in at_end.unet.state_dict().items():
        assert torch.allclose(p, exported.unet.state_dict()[name], atol=1e-6), name
    crops = cli.model.generate(exported, _batch(), generator=torch.Generator().manual_seed(0))
    assert crops.shape == (2, 3, 32, 32) and torch.isfinite(crops).all()
