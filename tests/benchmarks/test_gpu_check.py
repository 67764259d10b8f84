"""benchmarks/gpu_check.py cannot run here for real; its every stage runs on CPU with the tiny config."""

import json

import pytest
import torch

from benchmarks.gpu_check import main


def test_dry_run_on_cpu_writes_every_stage(tmp_path):
    out = tmp_path / "out"
    assert main(["--out", str(out), "--device", "cpu", "--config", "configs/tiny.yaml", "--batches", "2",
                 "--dry-run"]) == 0
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["device"]
    trained = [r for r in report["training"] if r["config"] == "anydoor"]
    assert trained and trained[0]["planned_peak_gib"] > 0 and trained[0]["samples_per_s"] > 0
    infer = report["inference"]
    assert {r["channels_last"] for r in infer} == {False, True}
    for r in infer:
        assert r["image_50_steps_s"] > r["image_20_steps_s"] > 0
    assert "| measured/planned |" in (out / "gpu_check.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gets")
def test_without_cuda_it_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no CUDA device here"):
        main(["--out", str(tmp_path)])


def test_dry_run_takes_the_8bit_recipe_where_bitsandbytes_is_installed(tmp_path):
    pytest.importorskip("bitsandbytes")
    import yaml

    cfg = yaml.safe_load(open("configs/tiny.yaml"))
    cfg["model"]["init_args"]["optimizer"] = {"class_path": "bitsandbytes.optim.AdamW8bit", "init_args": {"lr": 1e-4}}
    (tmp_path / "tiny8.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["--out", str(out), "--device", "cpu", "--config", "configs/tiny.yaml", "--config-24gb",
                 str(tmp_path / "tiny8.yaml"), "--batches", "2", "--dry-run"]) == 0
    rows = [r for r in json.loads((out / "gpu_check.json").read_text())["training"] if r["config"] == "anydoor_24gb"]
    assert [r["batch"] for r in rows] == [2, 8] and all("adamw8bit" in r["setting"] for r in rows)
    assert all(r["samples_per_s"] > 0 for r in rows)
