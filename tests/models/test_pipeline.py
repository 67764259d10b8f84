import copy
import json
import logging

import cv2
import numpy as np
import pytest
import torch

from models.pipeline import FALLBACK_SAMPLING, AnyDoorPipeline, Job
from src.conditioning import AUTHORS_PREPROCESSING, DEFAULT_PREPROCESSING
from tests.fakes import tiny_pipeline

STEPS = 3


@pytest.fixture(scope="module")
def pipe() -> AnyDoorPipeline:
    """The tiny test model without recommendations: the fallbacks apply."""
    return AnyDoorPipeline(**tiny_pipeline().components)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_pipeline().save_pretrained(folder)
    return folder


def scene(seed: int = 0, rgba: bool = True):
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 256, (90, 70, 4), dtype=np.uint8)
    ref[..., 3] = 0
    ref[15:80, 10:60, 3] = 255
    target = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    return ref if rgba else ref[..., :3].copy(), target


def job(seed: int = 0, **kw) -> Job:
    ref, target = scene(seed)
    return Job(ref, target, **{"box": (60, 40, 120, 110), **kw})


def run(pipe, j, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(j, generator=torch.Generator().manual_seed(seed), progress=False, **kw)


def test_deterministic_given_seed(pipe):
    a, b, c = run(pipe, job(), 1), run(pipe, job(), 1), run(pipe, job(), 2)
    assert np.array_equal(a.images[0], b.images[0]) and np.array_equal(a.crops[0], b.crops[0])
    assert not np.array_equal(a.crops[0], c.crops[0])


def test_pixels_outside_the_crop_are_unchanged(pipe):
    _, target = scene()
    out = run(pipe, job(), margin=5, feather=3, composite="crop")
    image = out.images[0]
    assert image.shape == target.shape and image.dtype == np.uint8
    x1, y1, x2, y2 = out.boxes[0]
    outside = np.ones(target.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert outside.any() and np.array_equal(image[outside], target[outside])
    assert not np.array_equal(image[~outside], target[~outside])
    assert x1 <= 60 and y1 <= 40 and x2 >= 120 and y2 >= 110


@pytest.mark.parametrize("composite", ["box", "mask"])
def test_compositing_keeps_the_scene_outside_the_region(pipe, composite):
    ref, target = scene()
    mask = np.zeros(target.shape[:2], np.uint8)
    mask[50:100, 70:110] = 1
    job = Job(ref, target, target_mask=mask) if composite == "mask" else Job(ref, target, box=(60, 40, 120, 110))
    out = run(pipe, job, composite=composite, feather=3, mask_dilate=4)
    image = out.images[0]
    changed = (image != target).any(axis=2)
    if composite == "mask":  # inside the mask dilated by 4 px (a disc)
        allowed = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))).astype(bool)
    else:  # inside the grown box: the 60 x 70 box grown by the default ratio, never the whole crop
        allowed = np.zeros(target.shape[:2], bool)
        allowed[35:115, 55:125] = True
    assert changed.any() and not (changed & ~allowed).any()
    x1, y1, x2, y2 = out.regions[0]
    ys, xs = np.nonzero(changed)
    assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    crop_mode = run(pipe, job, composite="crop", feather=3)
    assert (crop_mode.images[0] != target).any(axis=2).sum() > 2 * changed.sum()  # the crop repaints far more


def test_box_and_mask_targets(pipe):
    ref, target = scene()
    mask = np.zeros(target.shape[:2], np.uint8)
    mask[40:110, 60:120] = 255
    by_box = run(pipe, Job(ref, target, box=(60, 40, 120, 110)))
    by_mask = run(pipe, Job(ref, target, target_mask=mask))
    assert np.array_equal(by_box.images[0], by_mask.images[0])  # a rectangular mask is its box
    blob = np.zeros_like(mask)
    blob[50:100, 70:110] = 1
    shaped = run(pipe, Job(ref, target, target_mask=blob), mask_channel="mask")
    loc = shaped.collages[0][3]
    assert set(np.unique(loc)) <= {-1.0, 0.0, 1.0} and 0 < (loc == 1).mean() < 0.5


def test_rgba_reference_equals_image_plus_mask(pipe):
    ref, target = scene()
    rgba = run(pipe, Job(ref, target, box=(60, 40, 120, 110)))
    explicit = run(pipe, Job(ref[..., :3].copy(), target, reference_mask=ref[..., 3], box=(60, 40, 120, 110)))
    assert np.array_equal(rgba.images[0], explicit.images[0])


def test_batch_matches_single_jobs(pipe):
    jobs = [job(0), job(1, box=(10, 20, 80, 90))]
    gens = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]
    both = pipe(jobs, num_inference_steps=STEPS, generator=gens, progress=False)
    one = run(pipe, jobs[1], 6)
    assert len(both.images) == 2
    assert np.abs(both.crops[1].astype(int) - one.crops[0].astype(int)).max() <= 1


def test_save_load_keeps_outputs_and_recommendations(saved):
    original = tiny_pipeline()
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == "AnyDoorPipeline" and index["vae"] == ["models.components.first_stage", "SpaceToDepthFirstStage"]
    assert index["sampling"] == {"scheduler": "ddim", "steps": 2, "guidance": 1.0}
    assert index["preprocessing"] == DEFAULT_PREPROCESSING._asdict()
    assert (saved / "id_encoder" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = AnyDoorPipeline.from_pretrained(saved)
    assert loaded.recommended_sampling == original.recommended_sampling
    assert np.array_equal(run(original, job()).images[0], run(loaded, job()).images[0])
    implicit = loaded(job(), generator=torch.Generator().manual_seed(0), progress=False)  # the folder's sampler
    explicit = run(loaded, job(), num_inference_steps=2, guidance_scale=1.0, scheduler="ddim")
    assert np.array_equal(implicit.crops[0], explicit.crops[0])


def test_diffusers_generic_loader(saved, tmp_path, monkeypatch):
    """The documented call: DiffusionPipeline.from_pretrained(folder, custom_pipeline=<models/diffusers_entry.py>,
    trust_remote_code=True) gives the project's class (no copy of it) with the same parts."""
    import diffusers.utils.dynamic_modules_utils as dynamic
    from diffusers import DiffusionPipeline

    import models.diffusers_entry

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # diffusers copies the entry file there
    generic = DiffusionPipeline.from_pretrained(saved, custom_pipeline=models.diffusers_entry.__file__, trust_remote_code=True)
    assert type(generic) is AnyDoorPipeline
    ours = AnyDoorPipeline.from_pretrained(saved)
    assert generic.config.sampling == ours.config.sampling and generic.config.preprocessing == ours.config.preprocessing
    assert np.array_equal(run(generic, job()).images[0], run(ours, job()).images[0])


def test_sampling_settings_precedence(pipe):
    assert pipe.sampling_settings() == FALLBACK_SAMPLING == ("dpm", 20, 5.0)  # one fallback for every entry point
    assert pipe.sampling_settings("ddim") == ("ddim", 50, 5.0)
    rec = AnyDoorPipeline(**pipe.components, sampling={"scheduler": "ddim", "steps": 1, "guidance": 1.0})
    assert rec.sampling_settings() == ("ddim", 1, 1.0)
    assert rec.sampling_settings("dpm") == ("dpm", 20, 1.0)  # its step count is for its own sampler
    assert rec.sampling_settings("ddim", 7, 3.0) == ("ddim", 7, 3.0)
    with pytest.raises(ValueError, match="scheduler must be one of"):
        rec.sampling_settings("euler")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        rec.sampling_settings(steps=0)
    with pytest.raises(ValueError, match="exactly the keys"):
        AnyDoorPipeline(**pipe.components, sampling={"sample_steps": 1})


def test_preprocessing_comes_from_the_folder_unless_told(pipe):
    authors = AnyDoorPipeline(**pipe.components, preprocessing=AUTHORS_PREPROCESSING._asdict())
    assert pipe.preprocessing_settings() == DEFAULT_PREPROCESSING
    assert authors.preprocessing_settings() == AUTHORS_PREPROCESSING
    assert authors.preprocessing_settings(box_ratio=1.3).box_ratio == 1.3
    ref, target = scene()
    j = Job(ref, target, box=(80, 50, 120, 90))
    ours, theirs = run(pipe, j, num_inference_steps=1), run(authors, j, num_inference_steps=1)
    assert theirs.boxes[0] != ours.boxes[0]  # box 1.1x and crop 2.2x instead of 1.15x and 2.15x
    told = run(authors, j, num_inference_steps=1, **DEFAULT_PREPROCESSING._asdict())
    assert told.boxes[0] == ours.boxes[0] and np.array_equal(told.images[0], ours.images[0])


def test_a_folder_without_recommendations_warns_once_each(pipe, tmp_path, caplog):
    pipe.save_pretrained(tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="models.pipeline"):
        AnyDoorPipeline.from_pretrained(tmp_path / "m")
    lines = [r.getMessage() for r in caplog.records if r.name == "models.pipeline"]
    assert len(lines) == 2
    assert "recommends no sampler: using DPM-Solver++ 2M, 20 step(s), guidance 5" in lines[0]
    assert "recommends no preprocessing" in lines[1] and "box_ratio=1.15" in lines[1]


def test_channels_last_keeps_group_norm_precision():
    """A hint embedding with a large mean against its spread: PyTorch's channels-last CPU GroupNorm
    moved these residuals by ~9e-4 relative (NCHW ~1e-5); the pipeline's channels-last keeps NCHW's."""
    pipe = tiny_pipeline()
    cn = pipe.controlnet
    with torch.no_grad():
        for p in [*cn.controlnet_down_blocks.parameters(), *cn.controlnet_mid_block.parameters()]:
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        cn.controlnet_cond_embedding.conv_out.weight.mul_(0.01)
        cn.controlnet_cond_embedding.conv_out.bias.fill_(300.0)
    g = torch.Generator().manual_seed(0)
    x, tokens = torch.randn(2, 48, 8, 8, generator=g), torch.randn(2, 5, 32, generator=g)
    collage, t = torch.rand(2, 4, 32, 32, generator=g) * 2 - 1, torch.tensor([10, 900])

    def residuals(model, fmt=torch.contiguous_format, dtype=torch.float32):
        with torch.no_grad():
            down, mid = model(x.to(dtype).contiguous(memory_format=fmt), t, tokens.to(dtype),
                              collage.to(dtype).contiguous(memory_format=fmt), return_dict=False)
        return torch.cat([r.flatten().double() for r in [*down, mid]])

    exact = residuals(copy.deepcopy(cn).double(), dtype=torch.float64)
    error = lambda r: float((r - exact).norm() / exact.norm())  # noqa: E731
    nchw = error(residuals(cn))
    pipe.use_channels_last(True)
    assert cn.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    fast = error(residuals(cn, torch.channels_last))
    assert nchw < 1e-4 and fast < 3 * nchw
    pipe.use_channels_last(False)
    assert cn.conv_in.weight.is_contiguous() and not pipe.channels_last


def test_channels_last_copies_weights_out_of_the_mapped_files(saved, tmp_path):
    """Overwriting a loaded file in place changes nothing once the weights are copied (no dead pages
    of the mapped file stay behind, docs/inference.md)."""
    import shutil

    shutil.copytree(saved, tmp_path / "m")
    loaded = AnyDoorPipeline.from_pretrained(tmp_path / "m").use_channels_last(True)
    before = {k: v.clone() for k, v in loaded.unet.state_dict().items()}
    weights = tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors"
    header = 8 + int.from_bytes(weights.read_bytes()[:8], "little")
    with open(weights, "r+b") as f:
        f.seek(header)
        f.write(bytes(weights.stat().st_size - header))
    assert all(torch.equal(v, before[k]) for k, v in loaded.unet.state_dict().items())


def test_unconditional_branch_is_black_reference_with_the_collage(pipe, monkeypatch):
    import models.pipeline

    ref, target = scene()
    prepared = pipe.prepare(Job(ref, target, box=(60, 40, 120, 110)))
    refs = torch.from_numpy(prepared[0])[None]
    tokens = pipe.encode_references(refs, guidance=True)
    with torch.no_grad():
        black = pipe.id_encoder(torch.zeros(1, 3, pipe.id_encoder.image_size, pipe.id_encoder.image_size))
        assert torch.allclose(tokens[0], black[0]) and torch.allclose(tokens[1], pipe.id_encoder(refs)[0])
    assert not torch.allclose(tokens[0], tokens[1])
    seen = []
    original = models.pipeline.AnyDoorDenoiser.forward

    def spy(self, x, t, ids, collage, scene=None):
        seen.append((x.clone(), ids.clone(), collage.clone()))
        return original(self, x, t, ids, collage, scene)

    monkeypatch.setattr(models.pipeline.AnyDoorDenoiser, "forward", spy)
    collage = torch.from_numpy(prepared[1].sample["collage"])[None]
    pipe.denoise(tokens, collage, num_inference_steps=2, guidance_scale=3.0, progress=False,
                 generator=torch.Generator().manual_seed(0))
    assert len(seen) == 2  # cond and uncond in one batch per step
    x, ids, collages = seen[0]
    assert x.shape[0] == 2 and torch.equal(x[0], x[1]) and torch.equal(ids, tokens)
    assert torch.equal(collages[0], collage[0]) and torch.equal(collages[1], collage[0])


def test_guidance_one_is_the_conditional_model(pipe):
    prepared = pipe.prepare(job())
    refs = torch.from_numpy(prepared[0])[None]
    collage = torch.from_numpy(prepared[1].sample["collage"])[None]
    latents = pipe.denoise(pipe.encode_references(refs, False), collage, num_inference_steps=2, guidance_scale=1.0,
                           generator=torch.Generator().manual_seed(3), progress=False)
    out = run(pipe, job(), 3, num_inference_steps=2, guidance_scale=1.0, scheduler="ddim")
    assert np.array_equal(pipe.decode(latents).mul(127.5).add(127.5).round().byte()[0].permute(1, 2, 0).numpy(),
                          out.crops[0])


def test_dpm_solver_runs_and_spacing_is_exposed(pipe):
    out = run(pipe, job(), scheduler="dpm", timestep_spacing="trailing")
    assert out.images[0].shape == scene()[1].shape
    assert pipe.make_scheduler("dpm", "trailing").config.algorithm_type == "dpmsolver++"
    with pytest.raises(ValueError, match="scheduler"):
        pipe.make_scheduler("euler")


@pytest.mark.parametrize(
    "job_kwargs, match",
    [
        (dict(box=(60, 40, 60, 110)), "degenerate or outside"),
        (dict(box=(150, 40, 260, 110)), "degenerate or outside"),
        (dict(box=(-5, 40, 60, 110)), "degenerate or outside"),
        (dict(target_mask=np.zeros((150, 200), np.uint8)), "target mask is empty"),
        (dict(target_mask=np.ones((100, 200), np.uint8)), "target mask is 200 x 100"),
        (dict(box=(1, 1, 9, 9), target_mask=np.ones((150, 200), np.uint8)), "exactly one"),
        (dict(box=(1, 1, 9, 9), reference_mask=np.zeros((90, 70), np.uint8)), "reference mask is empty"),
        (dict(box=(1, 1, 9, 9), reference_mask=np.ones((90, 71), np.uint8)), "reference mask is 71 x 90"),
    ],
)
def test_bad_inputs_are_clear_errors(pipe, job_kwargs, match):
    ref, target = scene()
    with pytest.raises(ValueError, match=match) as err:
        pipe(Job(ref, target, name="job-7", **job_kwargs), num_inference_steps=1, progress=False)
    assert "job-7" in str(err.value)


def test_rgb_reference_without_mask(pipe):
    ref, target = scene(rgba=False)
    with pytest.raises(ValueError, match="RGBA"):
        pipe(Job(ref, target, box=(1, 1, 9, 9)), num_inference_steps=1, progress=False)


def _copy(saved, tmp_path):
    import shutil

    return shutil.copytree(saved, tmp_path / "m")


def test_bad_folders_are_one_line_errors(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AnyDoorPipeline.from_pretrained(tmp_path / "nothing")
    folder = _copy(saved, tmp_path)
    (folder / "unet" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="is missing unet"):
        AnyDoorPipeline.from_pretrained(folder)


def test_pickled_weights_are_refused_with_our_message(saved, tmp_path, capsys):
    folder = _copy(saved, tmp_path)
    weights = folder / "controlnet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(weights)), folder / "controlnet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(ValueError, match=r"controlnet/diffusion_pytorch_model.bin is a pickle; only safetensors") as err:
        AnyDoorPipeline.from_pretrained(folder)
    assert str(folder) in str(err.value)
    assert "unsafe serialization" not in capsys.readouterr().err  # diffusers never got to it


def test_a_weight_missing_from_a_file_fails_naming_it(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(saved, tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state.pop("conv_out.bias")
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"unet/ has no weights for \['conv_out.bias'\]"):
        AnyDoorPipeline.from_pretrained(folder)


def test_parts_that_do_not_fit_fail_at_load_naming_both_values(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    config = json.loads((folder / "vae" / "config.json").read_text())
    (folder / "vae" / "config.json").write_text(json.dumps({**config, "factor": 8}))
    with pytest.raises(ValueError, match=r"vae latent channels is 192 but unet in_channels is 48.*vae downsampling is 8") as err:
        AnyDoorPipeline.from_pretrained(folder)
    assert str(folder) in str(err.value)
    parts = tiny_pipeline().components
    with torch.no_grad():
        parts["controlnet"].conv_in.weight.fill_(1.0)
    with pytest.raises(ValueError, match="conv_in must be zero"):
        AnyDoorPipeline(**parts)


def test_an_earlier_layout_names_the_migration(tmp_path):
    from pathlib import Path

    legacy = Path(__file__).parent / "data" / "legacy_tiny"
    with pytest.raises(ValueError, match=r"layout of an earlier version .*anydoor convert .* --out NEW_FOLDER"):
        AnyDoorPipeline.from_pretrained(legacy)


def test_half_precision_runs():
    half = tiny_pipeline().to(dtype=torch.bfloat16)  # fp16/bf16 is the GPU path; bf16 runs on CPU
    assert half.unet.dtype == half.id_encoder.projector.weight.dtype == torch.bfloat16
    out = run(half, job())
    full = run(tiny_pipeline(), job())
    assert out.images[0].shape == scene()[1].shape
    assert np.abs(out.crops[0].astype(int) - full.crops[0].astype(int)).mean() < 8


def tiny_vae_pipeline() -> AnyDoorPipeline:
    """The tiny test model with a small random AutoencoderKL as first stage (64 px crops)."""
    from tests.fakes import TINY_MODEL_KWARGS

    unet = {**TINY_MODEL_KWARGS["unet_config"], "in_channels": 4, "out_channels": 4, "sample_size": 16}
    vae = {"type": "vae", "config": dict(block_out_channels=(32, 32, 32), layers_per_block=1, latent_channels=4,
                                         norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 3,
                                         up_block_types=("UpDecoderBlock2D",) * 3)}
    return AnyDoorPipeline(**tiny_pipeline(unet_config=unet, vae=vae).components)


def test_bf16_autocast_stays_close_to_fp32_and_keeps_fp32_weights():
    pipe = tiny_vae_pipeline().use_channels_last()
    fp32 = run(pipe, job(), num_inference_steps=20)
    bf16 = run(pipe, job(), num_inference_steps=20, precision="bf16")
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.id_encoder.projector.weight.dtype == torch.float32
    diff = np.abs(bf16.crops[0].astype(int) - fp32.crops[0].astype(int))
    other_seed = np.abs(run(pipe, job(), seed=1, num_inference_steps=20).crops[0].astype(int) - fp32.crops[0])
    # measured 3 / 0.32 levels (DPM-Solver++ 20 steps); another seed moves the crop by tens of levels
    assert 0 < diff.max() <= 8 and diff.mean() < 1.0 < 10 < other_seed.mean()
    # the black-reference tokens cached under bf16 are not reused by an fp32 call
    assert np.array_equal(run(pipe, job(), num_inference_steps=20).crops[0], fp32.crops[0])


def test_precision_is_checked_and_defaults_to_native_bf16_cpus(pipe, monkeypatch):
    import models.components.precision as precision

    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        run(pipe, job(), precision="fp16")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.default_precision("cpu") == "bf16" and precision.default_precision("cuda") == "fp32"
    assert precision.default_precision("cpu", torch.bfloat16) == "fp32"  # low-precision weights run as stored
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.default_precision("cpu") == "fp32"


def test_cached_weight_casts_restores_flags_and_builds_no_graph():
    from models.components.precision import autocast, cached_weight_casts

    layer = torch.nn.Linear(8, 8).requires_grad_(False)
    layer.bias.requires_grad_(True)
    x = torch.randn(2, 8)
    with torch.no_grad(), autocast("bf16", "cpu"):
        plain = layer(x)
        with cached_weight_casts(layer):
            assert layer.weight.requires_grad
            cached = [layer(x), layer(x)]
    assert not layer.weight.requires_grad and layer.bias.requires_grad  # each flag as it was
    assert all(torch.equal(c, plain) and not c.requires_grad for c in cached)
