"""A model folder written by main@7adfb83 (tests/models/data/README.md) migrates and generates the same crop."""

import json
from pathlib import Path

import numpy as np
import torch

from models.legacy import migrate_module_args
from models.pipeline import AnyDoorPipeline, Job
from src.cli.main import main

DATA = Path(__file__).parent / "data"


def test_convert_migrates_an_earlier_folder_to_the_same_outputs(tmp_path, capsys):
    out = tmp_path / "migrated"
    assert main(["convert", str(DATA / "legacy_tiny"), "--out", str(out)]) == 0
    assert "a training export: its recommended sampler kept" in capsys.readouterr().out
    index = json.loads((out / "model_index.json").read_text())
    assert index["sampling"] == {"scheduler": "ddim", "steps": 2, "guidance": 3.0} and index["preprocessing"] is None
    assert json.loads((out / "id_encoder" / "config.json").read_text())["model_name"] == "vit_small_patch14_dinov2"
    pipe = AnyDoorPipeline.from_pretrained(out)
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (90, 70, 4), dtype=np.uint8)
    ref[..., 3] = 0
    ref[15:80, 10:60, 3] = 255
    target = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    # main's fixed geometry: reference margin 1.2, box 1.15, crop 2.0 (the defaults have moved since)
    result = pipe(Job(ref, target, box=(60, 40, 120, 110)), generator=torch.Generator().manual_seed(0), progress=False,
                  reference_margin=1.2, box_ratio=1.15, crop_ratio=2.0)
    expected = np.load(DATA / "legacy_tiny_expected.npz")
    assert tuple(result.boxes[0]) == tuple(expected["box"])
    assert np.array_equal(result.crops[0], expected["crop"])
    assert main(["convert", str(out), "--out", str(tmp_path / "again")]) == 1  # already current
    assert "current layout already" in capsys.readouterr().err


def test_training_configs_of_earlier_runs_map_to_current_arguments():
    old = {"first_stage": {"type": "space_to_depth", "factor": 4, "scale": 0.5}, "hint_channels": [16, 32, 96],
           "zero_hint_conv": False, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
           "lr": 3e-4, "warmup_steps": 100, "use_8bit_adam": False, "sample_steps": 1}
    assert migrate_module_args(old) == {
        "vae": {"type": "space_to_depth", "factor": 4, "scaling_factor": 0.5}, "collage_embedding_channels": [16, 32, 96],
        "zero_init_collage_embedding": False, "sample_steps": 1,
        "noise_schedule": {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True}}
