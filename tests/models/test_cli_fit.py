from pathlib import Path

import yaml

from src.cli.train import cli_main
from tests.fakes import TINY_MODEL_KWARGS

ROOT = Path(__file__).resolve().parents[2]


def test_cli_main_runs_fit_from_a_dict_config(tmp_path):
    model_args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in TINY_MODEL_KWARGS.items()}
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
    assert "val/loss" in cli.trainer.callback_metrics
    assert list(tmp_path.rglob("*.ckpt"))


def test_shipped_configs_parse_without_running():
    for name in ("tiny.yaml", "anydoor.yaml"):
        cfg = yaml.safe_load((ROOT / "configs" / name).read_text())
        assert cfg["model"]["class_path"] == "models.anydoor_module.AnyDoorModule"
        assert cfg["data"]["class_path"] == "datamodules.anydoor_datamodule.AnyDoorDataModule"


def test_tiny_config_builds_the_model_it_describes():
    from models.anydoor_module import AnyDoorModule

    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    module = AnyDoorModule(**cfg["model"]["init_args"])
    size = cfg["data"]["init_args"]["image_size"]
    assert size // module.first_stage.factor == module.denoiser.unet.config.sample_size
    assert module.noise_scheduler.config.prediction_type == "v_prediction"
