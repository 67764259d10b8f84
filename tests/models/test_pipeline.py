import cv2
import numpy as np
import pytest
import torch

from models.pipeline import AnyDoorPipeline, Job, random_pipeline

STEPS = 3


@pytest.fixture(scope="module")
def pipe() -> AnyDoorPipeline:
    return random_pipeline("tiny", seed=0)


def scene(seed: int = 0, rgba: bool = True):
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 256, (90, 70, 4), dtype=np.uint8)
    ref[..., 3] = 0
    ref[15:80, 10:60, 3] = 255
    target = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    return ref if rgba else ref[..., :3].copy(), target


def run(pipe, job, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(job, generator=torch.Generator().manual_seed(seed), progress=False, **kw)


def test_deterministic_given_seed(pipe):
    ref, target = scene()
    job = Job(ref, target, box=(60, 40, 120, 110))
    a, b, c = run(pipe, job, 1), run(pipe, job, 1), run(pipe, job, 2)
    assert np.array_equal(a.images[0], b.images[0]) and np.array_equal(a.crops[0], b.crops[0])
    assert not np.array_equal(a.crops[0], c.crops[0])


def test_pixels_outside_the_crop_are_unchanged(pipe):
    ref, target = scene()
    out = run(pipe, Job(ref, target, box=(60, 40, 120, 110)), margin=5, feather=3, composite="crop")
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
    (ref, target), (ref2, target2) = scene(0), scene(1)
    jobs = [Job(ref, target, box=(60, 40, 120, 110)), Job(ref2, target2, box=(10, 20, 80, 90))]
    gens = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]
    both = pipe(jobs, num_inference_steps=STEPS, generator=gens, progress=False)
    one = run(pipe, jobs[1], 6)
    assert len(both.images) == 2
    assert np.abs(both.crops[1].astype(int) - one.crops[0].astype(int)).max() <= 1


def test_save_pretrained_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model_index.json").is_file()
    loaded = AnyDoorPipeline.from_pretrained(tmp_path / "m")
    ref, target = scene()
    job = Job(ref, target, box=(60, 40, 120, 110))
    assert np.array_equal(run(pipe, job).images[0], run(loaded, job).images[0])


def test_sampling_settings_precedence(pipe):
    assert pipe.sampling_settings() == ("ddim", 50, 5.0)  # no recommendation: the authors' sampler
    assert pipe.sampling_settings(default_scheduler="dpm") == ("dpm", 20, 5.0)
    rec = random_pipeline("tiny", seed=0)
    rec.sampling_defaults = {"sample_scheduler": "ddim", "sample_steps": 1, "guidance_scale": 1.0}
    assert rec.sampling_settings(default_scheduler="dpm") == ("ddim", 1, 1.0)
    assert rec.sampling_settings("dpm") == ("dpm", 20, 1.0)  # its step count is for its own sampler
    assert rec.sampling_settings("ddim", 7, 3.0) == ("ddim", 7, 3.0)
    with pytest.raises(ValueError, match="scheduler must be one of"):
        rec.sampling_settings("euler")


def test_recommended_sampling_round_trips_and_is_used(tmp_path):
    rec = random_pipeline("tiny", seed=0)
    rec.sampling_defaults = {"sample_scheduler": "ddim", "sample_steps": 2, "guidance_scale": 1.0}
    rec.save_pretrained(tmp_path / "m")
    loaded = AnyDoorPipeline.from_pretrained(tmp_path / "m")
    assert loaded.sampling_defaults == rec.sampling_defaults
    ref, target = scene()
    job = Job(ref, target, box=(60, 40, 120, 110))
    implicit = loaded(job, generator=torch.Generator().manual_seed(0), progress=False)
    explicit = loaded(job, num_inference_steps=2, guidance_scale=1.0, scheduler="ddim",
                      generator=torch.Generator().manual_seed(0), progress=False)
    other = loaded(job, num_inference_steps=3, guidance_scale=1.0, scheduler="ddim",
                   generator=torch.Generator().manual_seed(0), progress=False)
    assert np.array_equal(implicit.crops[0], explicit.crops[0])
    assert not np.array_equal(implicit.crops[0], other.crops[0])


def test_loaded_convolutional_parts_own_their_memory(pipe, tmp_path):
    """On CPU their weights are copied out of the mapped files (in channels-last): overwriting a file
    in place after loading changes nothing, and use_channels_last has nothing left to copy."""
    pipe.save_pretrained(tmp_path / "m")
    loaded = AnyDoorPipeline.from_pretrained(tmp_path / "m")
    before = {k: v.clone() for k, v in loaded.unet.state_dict().items()}
    weights = tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors"
    header = 8 + int.from_bytes(weights.read_bytes()[:8], "little")
    with open(weights, "r+b") as f:
        f.seek(header)
        f.write(bytes(weights.stat().st_size - header))
    assert all(torch.equal(v, before[k]) for k, v in loaded.unet.state_dict().items())
    conv = loaded.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    loaded.use_channels_last(True)
    assert loaded.unet.conv_in.weight.data_ptr() == conv.data_ptr()


def test_unconditional_branch_is_black_reference_with_the_collage(pipe, monkeypatch):
    ref, target = scene()
    prepared = pipe.prepare(Job(ref, target, box=(60, 40, 120, 110)))
    refs = torch.from_numpy(prepared[0])[None]
    tokens = pipe.encode_references(refs, guidance=True)
    with torch.no_grad():
        black = pipe.id_encoder(torch.zeros(1, 3, pipe.id_encoder.image_size, pipe.id_encoder.image_size))
        assert torch.allclose(tokens[0], black[0]) and torch.allclose(tokens[1], pipe.id_encoder(refs)[0])
    assert not torch.allclose(tokens[0], tokens[1])
    seen = []
    original = pipe.denoiser.forward

    def spy(x, t, ids, collage):
        seen.append((x.clone(), ids.clone(), collage.clone()))
        return original(x, t, ids, collage)

    monkeypatch.setattr(pipe.denoiser, "forward", spy)
    collage = torch.from_numpy(prepared[1].sample["collage"])[None]
    pipe.sample(tokens, collage, num_inference_steps=2, guidance_scale=3.0, progress=False,
                generator=torch.Generator().manual_seed(0))
    assert len(seen) == 2  # cond and uncond in one batch per step
    x, ids, hint = seen[0]
    assert x.shape[0] == 2 and torch.equal(x[0], x[1]) and torch.equal(ids, tokens)
    assert torch.equal(hint[0], collage[0]) and torch.equal(hint[1], collage[0])


def test_guidance_one_is_the_conditional_model(pipe):
    ref, target = scene()
    job = Job(ref, target, box=(60, 40, 120, 110))
    prepared = pipe.prepare(job)
    refs = torch.from_numpy(prepared[0])[None]
    collage = torch.from_numpy(prepared[1].sample["collage"])[None]
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    cond_only = pipe.sample(pipe.encode_references(refs, False), collage, num_inference_steps=2,
                            guidance_scale=1.0, generator=g(), progress=False)
    out = run(pipe, job, 3, num_inference_steps=2, guidance_scale=1.0)
    assert np.array_equal(pipe.decode(cond_only)[0], out.crops[0])


def test_dpm_solver_runs_and_spacing_is_exposed(pipe):
    ref, target = scene()
    out = run(pipe, Job(ref, target, box=(60, 40, 120, 110)), scheduler="dpm", timestep_spacing="trailing")
    assert out.images[0].shape == target.shape
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


def test_rgb_reference_without_mask_and_missing_model_parts(pipe, tmp_path):
    ref, target = scene(rgba=False)
    with pytest.raises(ValueError, match="RGBA"):
        pipe(Job(ref, target, box=(1, 1, 9, 9)), num_inference_steps=1, progress=False)
    pipe.save_pretrained(tmp_path / "m")
    for f in (tmp_path / "m" / "unet").iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match="missing unet"):
        AnyDoorPipeline.from_pretrained(tmp_path / "m")
    pipe.save_pretrained(tmp_path / "m2")
    (tmp_path / "m2" / "controlnet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="cannot load controlnet/"):
        AnyDoorPipeline.from_pretrained(tmp_path / "m2")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AnyDoorPipeline.from_pretrained(tmp_path / "nothing")


def test_channels_last_matches_default_layout(pipe):
    ref, target = scene()
    job = Job(ref, target, box=(60, 40, 120, 110))
    plain = run(pipe, job)
    try:
        fast = run(pipe.use_channels_last(), job)
    finally:
        pipe.use_channels_last(False)
    assert np.abs(plain.crops[0].astype(int) - fast.crops[0].astype(int)).max() <= 1


def test_half_precision_runs():
    ref, target = scene()
    half = random_pipeline("tiny", seed=0).to(dtype=torch.bfloat16)  # fp16/bf16 is the GPU path; bf16 runs on CPU
    assert half.unet.dtype == half.id_encoder.projector.weight.dtype == torch.bfloat16
    out = run(half, Job(ref, target, box=(60, 40, 120, 110)))
    full = run(random_pipeline("tiny", seed=0), Job(ref, target, box=(60, 40, 120, 110)))
    assert out.images[0].shape == target.shape
    assert np.abs(out.crops[0].astype(int) - full.crops[0].astype(int)).mean() < 8
