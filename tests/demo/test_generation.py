"""The demo's adapter to the pipeline, called directly (no server)."""

import json
import shutil

import cv2
import numpy as np
import pytest

from demo.generation import (Settings, Teleport, default_feather, describe, generate, load_pipeline,
                             model_defaults)
from tests.demo.conftest import TRAIN_EXPORT_SAMPLING, scene_images


@pytest.fixture(scope="module")
def pipe(demo_model):
    return load_pipeline(demo_model, "cpu")[0]


def job(**kw):
    reference, target = scene_images()
    return Teleport(reference[..., :3], (reference[..., 3] > 127).astype(np.uint8), target, **kw)


def test_defaults_come_from_the_model_folder_like_the_cli(pipe, demo_model, tmp_path):
    d = model_defaults(pipe)
    assert (d.scheduler, d.steps, d.guidance, d.from_model) == ("ddim", 1, 1.0, True) == (
        *TRAIN_EXPORT_SAMPLING.values(), True)
    assert model_defaults(pipe, "dpm").steps == 20  # another sampler: its own default step count
    plain = tmp_path / "plain"  # the same model, its folder recommending no sampler
    shutil.copytree(demo_model, plain)
    index = json.loads((plain / "model_index.json").read_text())
    (plain / "model_index.json").write_text(json.dumps({k: v for k, v in index.items() if k != "sampling"}))
    d = model_defaults(load_pipeline(plain, "cpu")[0])
    assert (d.scheduler, d.steps, d.guidance, d.from_model) == ("dpm", 20, 5.0, False)  # `anydoor generate`'s


def test_generate_box_and_mask_jobs(pipe):
    target = job().target
    out = generate(pipe, job(box=(150, 90, 300, 250)), Settings("ddim", 2, 1.0, seed=1), progress=False)
    assert out.image.shape == target.shape and out.location == "box" and out.finished >= out.started
    x1, y1, x2, y2 = out.region
    outside = np.ones(target.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(out.image[outside], target[outside])
    assert out.collage.shape == (4, pipe.crop_size, pipe.crop_size)
    numbers = describe(out, Settings("ddim", 2, 1.0, seed=1))
    assert numbers["region"] == list(out.region) and numbers["size"] == [480, 320] and numbers["seed"] == 1

    mask = np.zeros(target.shape[:2], np.uint8)
    cv2.circle(mask, (240, 160), 60, 1, -1)
    shaped, boxed = (generate(pipe, job(target_mask=mask), Settings("ddim", 1, 1.0, 0, "mask", shape_control=on),
                              progress=False) for on in (True, False))
    assert (shaped.location, boxed.location) == ("mask", "box")
    assert 0 < (shaped.collage[3] == 1).sum() < 0.9 * (boxed.collage[3] == 1).sum()  # a disc, not its box
    boxed = generate(pipe, job(box=(150, 90, 300, 250)), Settings("ddim", 1, 1.0, 0, shape_control=True),
                     progress=False)
    assert boxed.location == "box"  # shape control needs a mask


@pytest.mark.parametrize("settings, message", [
    (Settings("ddim", 1, 1.0, 0, composite="everything"), "compositing must be one of"),
    (Settings("euler", 1, 1.0, 0), "sampler must be one of"),
    (Settings("ddim", 0, 1.0, 0), "steps must be at least 1"),
])
def test_bad_settings_are_messages(pipe, settings, message):
    with pytest.raises(ValueError, match=message):
        generate(pipe, job(box=(10, 10, 50, 50)), settings, progress=False)


def test_dtype_option(demo_model):
    pipe, label = load_pipeline(demo_model, "cpu", "bfloat16")
    assert label == "cpu bfloat16"
    out = generate(pipe, job(box=(150, 90, 300, 250)), Settings("ddim", 1, 1.0, 0), progress=False)
    assert out.image.dtype == np.uint8 and out.image.shape == (320, 480, 3)


@pytest.mark.parametrize("composite", ["box", "crop"])
def test_default_feather_is_the_pipelines_own(pipe, composite):
    """What the page's feather starts at (and `anydoor generate` uses without --feather) for each mode;
    the page runs at the CLI's default precision (bf16 where the CPU has it)."""
    import torch

    from models.components.precision import default_precision
    from models.pipeline import Job

    j = job(box=(150, 90, 300, 250))
    ours = generate(pipe, j, Settings("ddim", 1, 1.0, 0, composite, feather=default_feather(composite)), progress=False)
    theirs = pipe(Job(j.reference, j.target, j.reference_mask, box=j.box), num_inference_steps=1, guidance_scale=1.0,
                  scheduler="ddim", generator=torch.Generator().manual_seed(0), composite=composite, progress=False,
                  precision=default_precision(pipe.device, pipe.dtype))
    assert np.array_equal(ours.image, theirs.images[0])
