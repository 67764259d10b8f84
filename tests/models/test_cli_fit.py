import sys
from pathlib import Path

import pytest
import torch
import yaml

from src.cli.train import cli_main
from tests.src.cli.support import malicious_checkpoint, serve_folder
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
    assert module.noise_scheduler.config.prediction_type == "sample" and module.hparams.collage_residual
    pipe = module.to_pipeline()
    assert pipe.crop_size == size and pipe.config.collage_residual


def _tiny_fit_config(tmp_path):
    model_args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in TINY_MODEL_KWARGS.items()}
    unet = model_args["unet_config"]
    model_args["unet_config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in unet.items()}
    config = {
        "trainer": {"accelerator": "cpu", "max_steps": 1, "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "limit_val_batches": 0, "default_root_dir": str(tmp_path)},
        "model": {"class_path": "models.anydoor_module.AnyDoorModule", "init_args": model_args},
        "data": {"class_path": "tests.fakes.RandomDataModule", "init_args": {"batch_size": 2}},
    }
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _lightning(monkeypatch, capsys, *argv):
    from src.cli import train

    monkeypatch.setattr(sys, "argv", ["lightning", *argv])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    return exit_info.value.code, capsys.readouterr().err


def test_a_remote_malicious_checkpoint_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    www = tmp_path / "www"
    www.mkdir()
    marker = tmp_path / "pwned"
    malicious_checkpoint(www / "last.ckpt", marker)
    with serve_folder(www) as base:
        code, err = _lightning(monkeypatch, capsys, "fit", "--config", str(_tiny_fit_config(tmp_path)),
                               "--ckpt_path", f"{base}/last.ckpt")
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"error: refused to load {base}/last.ckpt: it references io.open, and unpickling it could run code; "
        "only weights-only checkpoints (tensors and plain values) are loaded")
    assert "Traceback" not in err
    assert not marker.exists()


def test_a_local_malicious_checkpoint_is_refused_before_the_model_is_built(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    ckpt = malicious_checkpoint(tmp_path / "last.ckpt", marker)
    code, err = _lightning(monkeypatch, capsys, "fit", "--config", str(_tiny_fit_config(tmp_path)),
                           "--ckpt_path", str(ckpt))
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: refused to load {ckpt}: it references io.open, and unpickling it could run code; "
        "only weights-only checkpoints (tensors and plain values) are loaded"]
    assert not marker.exists()


def test_the_cli_gives_every_run_the_safe_checkpoint_io_and_the_signal_stop(tmp_path, monkeypatch):
    from callbacks.checkpoint_io import SafeCheckpointIO
    from callbacks.interrupt import StopOnSignal

    monkeypatch.setattr(sys, "argv", ["lightning"])
    cli = cli_main(["--config", str(_tiny_fit_config(tmp_path))], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)
    assert [type(c) for c in cli.trainer.callbacks if isinstance(c, StopOnSignal)] == [StopOnSignal]
