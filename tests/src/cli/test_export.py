"""`anydoor export`: a training checkpoint + its run's config -> a model folder, via to_pipeline."""

import shutil

import torch
import yaml

from models.anydoor_module import AnyDoorModule
from models.pipeline import AnyDoorPipeline
from src.cli.main import main
from tests.fakes import TINY_MODEL_KWARGS


def _run_folder(tmp_path, ema: bool):
    """A run folder as `lightning fit` leaves it: config.yaml (with the training-only optimizer) and a
    trainable-only checkpoint whose weights (and EMA) differ from the seeded init."""
    args = {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in TINY_MODEL_KWARGS.items()},
            "unet_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in TINY_MODEL_KWARGS["unet_config"].items()},
            "ema_decay": 0.9 if ema else None,
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-4}}}
    run = tmp_path / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"class_path": "models.anydoor_module.AnyDoorModule",
                                                               "init_args": args}}))
    module = AnyDoorModule(**{**TINY_MODEL_KWARGS, "ema_decay": 0.9 if ema else None})
    state = {k: p.detach() + 0.05 for k, p in module.trainable_parameters().items()}
    ckpt = {"state_dict": state, "global_step": 7}
    if ema:
        ckpt["ema"] = {"optimization_step": 7, "shadow_params": [v - 0.02 for v in state.values()]}
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    return run, state


def test_export_writes_a_model_folder_of_the_checkpoint(tmp_path, capsys):
    run, state = _run_folder(tmp_path, ema=True)
    out = tmp_path / "model"
    assert main(["export", str(run / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 0
    assert "(step 7, EMA weights)" in capsys.readouterr().out
    pipe = AnyDoorPipeline.from_pretrained(out)
    name = "denoiser.unet.conv_out.weight"
    assert torch.equal(pipe.unet.conv_out.weight, state[name] - 0.02)  # the EMA
    assert pipe.config.sampling == {"scheduler": "ddim", "steps": 2, "guidance": 1.0}
    assert main(["export", str(run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "raw"), "--no-ema"]) == 0
    assert torch.equal(AnyDoorPipeline.from_pretrained(tmp_path / "raw").unet.conv_out.weight, state[name])
    assert main(["export", str(run / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 1  # not empty
    assert "not empty" in capsys.readouterr().err


def test_export_refuses_other_files_with_one_line(tmp_path, capsys):
    run, _ = _run_folder(tmp_path, ema=False)
    ckpt = run / "checkpoints" / "last.ckpt"
    shutil.copy(ckpt, tmp_path / "copy.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, tmp_path / "authors.ckpt")
    for path, reason in [(tmp_path / "junk.ckpt", "not a readable checkpoint"), (tmp_path / "authors.ckpt", "does not fit"),
                         (tmp_path / "missing.ckpt", "does not exist")]:
        assert main(["export", str(path), "--out", str(tmp_path / "x"), "--config", str(run / "config.yaml")]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and reason in err and str(path.name) in err
    assert main(["export", str(tmp_path / "copy.ckpt"), "--out", str(tmp_path / "x")]) == 1  # no config.yaml beside it
    assert "config.yaml does not exist" in capsys.readouterr().err
    evil = tmp_path / "evil.yaml"
    evil.write_text(yaml.safe_dump({"model": {"class_path": "os.system", "init_args": {}}}))
    assert main(["export", str(ckpt), "--out", str(tmp_path / "x"), "--config", str(evil)]) == 1
    assert "is not an AnyDoorModule of this project" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


