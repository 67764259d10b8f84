from pathlib import Path

import pytest
import torch
import yaml

from src.cli.train import cli_main
from tests.fakes import TINY_MODEL_KWARGS

ROOT = Path(__file__).resolve().parents[2]


def test_cli_main_runs_fit_from_a_dict_config(tmp_path):
    model_args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in TINY_MODEL_KWARGS.items()}
    model_args["uniform_timesteps"] = False  # the callback below provides them
    model_args["optimizer"] = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}}
    model_args["lr_scheduler"] = {"class_path": "torch.optim.lr_scheduler.LinearLR",
                                  "init_args": {"start_factor": 0.1, "total_iters": 9}}
    config = {
        "fit": {
            "trainer": {"accelerator": "cpu", "max_steps": 2, "logger": False, "enable_progress_bar": False,
                        "enable_model_summary": False, "limit_val_batches": 1, "val_check_interval": 2,
                        "default_root_dir": str(tmp_path),
                        "callbacks": [{"class_path": "callbacks.FrequencyAwareTimesteps"}]},
            "model": {"class_path": "models.anydoor_module.AnyDoorModule", "init_args": model_args},
            "data": {"class_path": "tests.fakes.RandomDataModule", "init_args": {"batch_size": 2}},
        }
    }
    cli = cli_main(config)
    assert cli.trainer.global_step == 2
    optimizer = cli.trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.SGD)  # injected by LightningCLI; the scheduler steps per step:
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * (0.1 + 0.9 * 2 / 9))
    assert "val/loss" in cli.trainer.callback_metrics
    assert list(tmp_path.rglob("*.ckpt"))


def test_shipped_configs_parse_without_running():
    for name in ("tiny.yaml", "anydoor.yaml"):
        cfg = yaml.safe_load((ROOT / "configs" / name).read_text())
        assert cfg["model"]["class_path"] == "models.anydoor_module.AnyDoorModule"
        assert cfg["data"]["class_path"] == "datamodules.anydoor_datamodule.AnyDoorDataModule"


def test_tiny_config_builds_its_optimizer_and_warm_up(tmp_path):
    cli = cli_main(["--config", str(ROOT / "configs" / "tiny.yaml"), "--trainer.logger", "false",
                    "--trainer.default_root_dir", str(tmp_path)], run=False)
    setup = cli.model.configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW) and setup["lr_scheduler"]["interval"] == "step"
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-6)  # (0 + 1) / 100 of 3e-4
    for _ in range(99):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)


def test_tiny_config_builds_the_model_it_describes():
    from models.anydoor_module import AnyDoorModule
    from models.components.first_stage import latent_factor

    module = AnyDoorModule.from_config_file(ROOT / "configs" / "tiny.yaml")
    size = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())["data"]["init_args"]["image_size"]
    assert size // latent_factor(module.vae) == module.denoiser.unet.config.sample_size
    assert module.noise_scheduler.config.prediction_type == "v_prediction"
    assert module.to_pipeline().crop_size == size
