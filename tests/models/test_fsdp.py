import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(out: Path, phase: str, options: dict) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "tests.models.fsdp_run", str(out), phase, json.dumps(options)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"{phase}{r}.json").read_text()) for r in (0, 1)]


def _check_export(out: Path, options: dict) -> None:
    """The folder ExportOnTrainEnd wrote at the end of the sharded run is the checkpoint's model."""
    import torch

    from models.anydoor_module import AnyDoorModule
    from models.pipeline import AnyDoorPipeline
    from tests.fakes import TINY_MODEL_KWARGS

    exported = AnyDoorPipeline.from_pretrained(out / "export" / "pretrained")
    module = AnyDoorModule(**TINY_MODEL_KWARGS, **{k: v for k, v in options.items() if k != "precision"})
    module.load_training_checkpoint(out / "ckpt" / "last.ckpt")
    expected = module.to_pipeline(plain=True)
    for part in ("unet", "controlnet", "id_encoder"):
        saved = getattr(exported, part).state_dict()
        for name, t in getattr(expected, part).state_dict().items():
            assert torch.equal(saved[name], t), f"{part}.{name}"


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("options", [{}, {"lora": {"rank": 4}, "frozen_dtype": "bfloat16", "precision": "bf16-mixed"}],
                         ids=["full", "lora-frozen-bf16"])
def test_two_process_fsdp2_on_cpu_trains_checkpoints_and_resumes(tmp_path, options):
    """The module's own configure_model shards it under ModelParallelStrategy (tests/models/fsdp_run.py)."""
    trained = _run(tmp_path, "train", options)
    assert all(r["world"] == 2 and r["steps"] == 3 for r in trained)
    for r in trained:  # each rank holds half of every trainable tensor (DTensor shards)
        assert r["sharded"] == ["DTensor"] and r["local_numel"] < r["total_numel"]
        assert r["end"] != pytest.approx(r["start"], rel=1e-9)  # it trained
    assert trained[0]["end"] == pytest.approx(trained[1]["end"], rel=1e-12)  # one model across ranks
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()

    _check_export(tmp_path, options)
    resumed = _run(tmp_path, "resume", options)
    assert all(r["steps"] == 5 for r in resumed)
    for r in resumed:  # restored exactly the weights the first run ended with, then trained on
        assert r["start"] == pytest.approx(trained[0]["end"], rel=1e-12)
        assert r["end"] != pytest.approx(r["start"], rel=1e-9)
