"""Early, short errors of `lightning fit`: path checks before anything is built, short parse errors,
no prefix matching of options."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from src.cli import train
from src.cli.train_checks import config_problems, short_parse_error

ROOT = Path(__file__).resolve().parents[3]


def sd_folder(root: Path, parts=("unet", "vae")) -> Path:
    for part in parts:
        (root / part).mkdir(parents=True)
        (root / part / "config.json").write_text("{}")
        (root / part / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    return root


def shard_folder(root: Path, names=("sav-000000.tar", "sav-000001.tar"), missing: int = 0) -> Path:
    root.mkdir(parents=True)
    for name in names[missing:]:
        (root / name).write_bytes(b"")
    manifest = {"sources": {"sav": {"shards": list(names), "samples": 10}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def full_config(**data):
    return {"model": {"class_path": "models.anydoor_module.AnyDoorModule", "init_args": {}},
            "data": {"class_path": "datamodules.anydoor_datamodule.AnyDoorDataModule", "init_args": data}}


def test_a_complete_local_setup_has_no_problems(tmp_path):
    config = full_config(train_shards=str(shard_folder(tmp_path / "train")), val_shards=None)
    config["model"]["init_args"] = {"sd_path": str(sd_folder(tmp_path / "sd")),
                                    "id_encoder": {"weights": str(tmp_path / "dino.pth")}}
    (tmp_path / "dino.pth").write_bytes(b"x")
    assert config_problems(config, "fit") == []


def test_every_problem_is_reported_at_once(tmp_path):
    sd = tmp_path / "sd"
    sd_folder(sd, parts=("unet",))  # no vae/
    (sd / "unet" / "diffusion_pytorch_model.safetensors").unlink()  # config but no weights
    config = full_config(train_shards=str(shard_folder(tmp_path / "train", missing=1)),
                         val_shards=str(tmp_path / "nothere"))
    config["model"]["init_args"] = {"sd_path": str(sd), "id_encoder": {"weights": str(tmp_path / "dino.pth")}}
    config["ckpt_path"] = str(tmp_path / "last.ckpt")
    problems = config_problems(config, "fit")
    assert problems == [
        f"model.init_args.sd_path: {sd / 'unet'}: no weights (diffusion_pytorch_model.safetensors)",
        f"model.init_args.sd_path: {sd / 'vae'}: no such folder",
        f"model.init_args.id_encoder.weights: {tmp_path / 'dino.pth'}: no such file",
        f"data.init_args.train_shards: {tmp_path / 'train'}: source 'sav': 1 of 2 shard files do not exist, e.g. "
        f"{tmp_path / 'train' / 'sav-000000.tar'} (a shard folder is made by `anydoor shards`)",
        f"data.init_args.val_shards: {tmp_path / 'nothere'}: no such file or folder",
        f"ckpt_path: {tmp_path / 'last.ckpt'}: no such file",
    ]


def test_shard_sources_in_every_form(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = shard_folder(tmp_path / "good")
    empty = tmp_path / "empty"
    empty.mkdir()
    forms = {
        "a missing synthetic set": ("data/synthetic/train", [
            f"data.init_args.train_shards: data/synthetic/train (relative to {tmp_path}): no such file or folder; "
            "build the synthetic set with `make shards`"]),
        "URLs are not fetched": (["http://host/sav-{000000..000009}.tar", "pipe:curl -s x"], []),
        "a list with a folder without shards": ([str(good), str(empty)], [
            f"data.init_args.train_shards: {empty}: no manifest.json and no .tar shards"]),
        "a mapping": ({"sav": [str(good / "sav-000000.tar")], "coco": str(tmp_path / "coco-{000000..000001}.tar")}, [
            f"data.init_args.train_shards: {tmp_path / 'coco-{000000..000001}.tar'}: source 'coco': 2 of 2 shard files "
            f"do not exist, e.g. {tmp_path / 'coco-000000.tar'} (a shard folder is made by `anydoor shards`)"]),
        "a list given as one string": (f"[{good}, {tmp_path / 'nothere'}]", [
            f"data.init_args.train_shards: {tmp_path / 'nothere'}: no such file or folder"]),
    }
    for name, (spec, expected) in forms.items():
        assert config_problems(full_config(train_shards=spec), "fit") == expected, name
    assert config_problems(full_config(train_shards="data/synthetic/train"), "validate") == []  # not read there


def test_special_and_remote_checkpoint_paths_are_left_to_lightning():
    for ckpt in ("last", "hpc", "http://host/last.ckpt", "s3://bucket/last.ckpt"):
        assert config_problems({"ckpt_path": ckpt}, "fit") == []


def test_a_vae_needs_a_source(tmp_path):
    assert config_problems({"model": {"init_args": {"vae": {"type": "vae"}}}}, "fit") == [
        "model.init_args.vae: a VAE needs sd_path or vae.path"]
    assert config_problems({"model": {"init_args": {"vae": {"type": "vae", "path": str(tmp_path / "no")}}}}, "fit") == [
        f"model.init_args.vae.path: {tmp_path / 'no'}: no such folder"]
    assert config_problems({"model": {"init_args": {"vae": {"type": "space_to_depth"}}}}, "fit") == []
    assert config_problems({"model": {"init_args": {"first_stage": {"type": "vae"}}}}, "fit") == [  # an older config
        "model.init_args.first_stage: a VAE needs sd_path or first_stage.path"]


def test_jsonargparse_union_message_is_cut_to_key_and_reason():
    message = """Parser key "data":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'lightning.pytorch.core.datamodule.LightningDataModule'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'datamodules.anydoor_datamodule.AnyDoorDataModule':
        Parser key "batch_size":
          Expected a <class 'int'>. Got value: x
    - Expected a <class 'NoneType'>
  Given value type: <class 'jsonargparse._util.NestedArg'>
  Given value: NestedArg(key='batch_size', val='x')"""
    assert short_parse_error(message) == "data.init_args.batch_size: expected int, got 'x'"


def run_main(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["lightning", *argv])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    return exit_info.value.code, capsys.readouterr().err


def test_parse_errors_are_two_lines_and_options_are_not_abbreviated(monkeypatch, capsys):
    tiny = str(ROOT / "configs" / "tiny.yaml")
    code, err = run_main(monkeypatch, capsys, "fit", "--config", tiny, "--trainer.max_step", "5")
    assert code == 2
    assert err.splitlines() == [
        "error: unknown option --trainer.max_step (did you mean --trainer.max_steps or --trainer.max_time or "
        "--trainer.min_steps?)",
        "(`lightning fit --help` lists the options)"]
    code, err = run_main(monkeypatch, capsys, "fit", "--config", tiny, "--model.init_args.sample_step", "2")
    assert (code, err.splitlines()[0]) == (
        2, "error: model.init_args.sample_step: not an option of models.anydoor_module.AnyDoorModule (did you mean sample_steps or val_sample_steps?)")
    code, err = run_main(monkeypatch, capsys, "fit", "--config", tiny, "--trainer.precision", "17")
    assert code == 2 and len(err.splitlines()) == 2
    assert err.startswith("error: trainer.precision: expected one of 64, 32, 16, 'transformer-engine',")
    assert err.splitlines()[0].endswith("'bf16-mixed', '32-true', '64-true', '64', '32', '16', 'bf16', got '17'")


def test_a_fresh_clone_is_told_to_make_shards_before_anything_is_built(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)  # no data/ here
    built = []
    monkeypatch.setattr("models.anydoor_module.AnyDoorModule.__init__", lambda *a, **k: built.append(1))
    code, err = run_main(monkeypatch, capsys, "fit", "--config", str(ROOT / "configs" / "tiny.yaml"))
    assert code == 2 and not built
    assert err.splitlines() == [
        "error: 2 problem(s) in the configuration, nothing was built:",
        f"  data.init_args.train_shards: data/synthetic/train (relative to {tmp_path}): no such file or folder; "
        "build the synthetic set with `make shards`",
        f"  data.init_args.val_shards: data/synthetic/val (relative to {tmp_path}): no such file or folder; "
        "build the synthetic set with `make shards`"]


def test_the_full_config_lists_its_three_placeholders(monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, "fit", "--config", str(ROOT / "configs" / "anydoor.yaml"))
    assert code == 2
    assert err.splitlines() == [
        "error: 3 problem(s) in the configuration, nothing was built:",
        "  model.init_args.sd_path: /path/to/stable-diffusion-2-1-base: no such folder",
        "  model.init_args.id_encoder.weights: /path/to/dinov2_vitg14_pretrain.pth: no such file",
        "  data.init_args.train_shards: /path/to/shards: no such file or folder"]


def test_a_config_value_the_trainer_rejects_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    shard_folder(tmp_path / "data" / "synthetic" / "train")
    shard_folder(tmp_path / "data" / "synthetic" / "val")
    monkeypatch.setattr("models.anydoor_module.AnyDoorModule.__init__", lambda self, **k: None)
    code, err = run_main(monkeypatch, capsys, "fit", "--config", str(ROOT / "configs" / "tiny.yaml"),
                         "--trainer.max_time", "25min")
    assert code == 2
    assert err.splitlines() == ["error: MisconfigurationException: `Timer(duration='25min')` is not a valid duration. "
                                "Expected a string in the format DD:HH:MM:SS."]


def test_frozen_parts_in_bf16_need_a_mixed_precision():
    config = {"model": {"init_args": {"frozen_dtype": "bfloat16"}}, "trainer": {"precision": "32-true"}}
    assert config_problems(config, "validate") == [
        "model.init_args.frozen_dtype: bfloat16 needs trainer.precision bf16-mixed or 16-mixed, got 32-true"]
    config["trainer"]["precision"] = "bf16-mixed"
    assert config_problems(config, "validate") == []
