"""`anydoor generate` as a user runs it (in-process `main` for speed, a subprocess where the exit
status, stderr and the absence of a traceback are the point) and `anydoor convert`."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from models.pipeline import AnyDoorPipeline
from src.cli.main import main
from tests.fakes import tiny_pipeline
from tests.models.components.ldm_layout import TINY_YAML, tiny_models
from tests.src.job_files import write_job_images

ROOT = Path(__file__).resolve().parents[3]
REGION = re.compile(r"^(.+): changed region (\d+) (\d+) (\d+) (\d+) \(\w+ compositing\)$", re.M)


def anydoor(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "src.cli.main", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    write_job_images(d, (60, 50), (100, 120), rgb_ext="jpg")
    mask = np.zeros((100, 120), np.uint8)
    mask[30:70, 40:90] = 255
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(np.zeros((100, 120), np.uint8)).save(d / "empty.png")
    (d / "broken.png").write_bytes(b"not an image")
    # 16-bit grayscale: what Pillow's convert("RGB") clipped to a white sheet
    gray16 = np.linspace(0, 65535, 100 * 120).reshape(100, 120).astype(np.uint16)
    Image.fromarray(gray16).save(d / "scene16.png")
    Image.fromarray(np.asarray(Image.open(d / "ref.png"))[..., 0].astype(np.uint16) * 257).save(d / "ref16.png")
    # 100 MP (above the 64 MP default limit) but a tiny file: 1-bit, all black
    Image.new("1", (10_000, 10_000)).save(d / "huge.png")
    AnyDoorPipeline(**tiny_pipeline().components).save_pretrained(d / "model")  # recommends nothing
    return d


def test_generate_one_job_box_and_mask(files, tmp_path, capsys):
    common = ["generate", "--model", str(files / "model"), "--steps", "2", "--reference", str(files / "ref.png"),
              "--target", str(files / "scene.png")]
    assert main(common + ["--box", "40", "30", "90", "70", "--out", str(tmp_path / "a.png"),
                          "--save-intermediates"]) == 0
    assert main(common + ["--mask", str(files / "mask.png"), "--out", str(tmp_path / "b.png")]) == 0  # short alias
    a, b = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert a.shape == b.shape == (100, 120, 3) and np.array_equal(a, b)  # same box, same seed
    assert (tmp_path / "a_crop.png").is_file() and (tmp_path / "a_collage.png").is_file()
    regions = REGION.findall(capsys.readouterr().out)
    assert [r[0] for r in regions] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    x1, y1, x2, y2 = map(int, regions[0][1:])
    outside = np.ones((100, 120), bool)
    outside[y1:y2, x1:x2] = False
    target = np.asarray(Image.open(files / "scene.png"))
    assert outside.any() and np.array_equal(a[outside], target[outside])  # nothing changed outside the region
    assert not np.array_equal(a[~outside], target[~outside])


def test_generate_batch_json_and_csv_skips_bad_jobs(files, tmp_path, capsys):
    jobs = [
        {"reference": "ref.png", "target": "scene.png", "box": [40, 30, 90, 70], "out": str(tmp_path / "j0.png")},
        {"reference": "ref_rgb.jpg", "reference_mask": "ref_mask.png", "target": "scene.png", "target_mask": "mask.png", "seed": 3},
        {"reference": "ref.png", "target": "scene.png", "target_mask": "empty.png"},
        {"reference": "broken.png", "target": "scene.png", "box": "1 1 20 20"},
        {"reference": "ref.png", "target": "scene.png", "box": [100, 30, 140, 70]},
    ]
    (files / "jobs.json").write_text(json.dumps(jobs))
    rc = main(["generate", "--model", str(files / "model"), "--steps", "2", "--jobs", str(files / "jobs.json"),
               "--out-dir", str(tmp_path / "outs"), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert rc == 1 and "wrote 2 image(s); skipped 3" in captured.out
    assert "jobs.json job 2: " in captured.err and "empty.png: the mask is empty" in captured.err
    assert "jobs.json job 3: " in captured.err and "broken.png: not an image file" in captured.err
    assert "jobs.json job 4: " in captured.err and "degenerate or outside" in captured.err
    assert (tmp_path / "j0.png").is_file() and (tmp_path / "outs" / "00001_scene.png").is_file()

    (files / "jobs.csv").write_text("reference,target,box,out\nref.png,scene.png,40 30 90 70,%s\n" % (tmp_path / "c.png"))
    assert main(["generate", "--model", str(files / "model"), "--steps", "2", "--jobs", str(files / "jobs.csv")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "c.png")), np.asarray(Image.open(tmp_path / "j0.png")))


def test_generate_uses_the_model_folders_sampler_unless_told(files, tmp_path, capsys):
    model = tmp_path / "recipe_model"
    pipe = AnyDoorPipeline(**tiny_pipeline().components, sampling={"scheduler": "ddim", "steps": 1, "guidance": 1.0})
    pipe.save_pretrained(model)
    common = ["generate", "--ref", str(files / "ref.png"), "--target", str(files / "scene.png"),
              "--box", "40", "30", "90", "70"]
    assert main(common + ["--model", str(model), "--out", str(tmp_path / "a.png")]) == 0
    assert "sampling: ddim, 1 step(s), guidance 1" in capsys.readouterr().err
    assert main(common + ["--model", str(model), "--scheduler", "ddim", "--steps", "1", "--guidance", "1",
                          "--out", str(tmp_path / "b.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))
    assert main(common + ["--model", str(files / "model"), "--steps", "2", "--out", str(tmp_path / "c.png")]) == 0
    assert "sampling: dpm, 2 step(s), guidance 5" in capsys.readouterr().err  # no recommendation
    with pytest.raises(SystemExit, match="--steps must be >= 1"):
        main(common + ["--model", str(model), "--steps", "0", "--out", str(tmp_path / "d.png")])


def test_generate_usage_errors(files, tmp_path):
    with pytest.raises(SystemExit, match="missing --out"):
        main(["generate", "--ref", "a.png", "--target", "b.png", "--box", "1", "2", "3", "4"])
    with pytest.raises(SystemExit, match="is missing id_encoder, controlnet, unet"):
        main(["generate", "--model", str(tmp_path), "--ref", str(files / "ref.png"), "--target",
              str(files / "scene.png"), "--box", "1", "2", "30", "40", "--out", str(tmp_path / "x.png")])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SystemExit, match="bad.json: not valid JSON"):
        main(["generate", "--model", str(files / "model"), "--jobs", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match="cannot be combined"):
        main(["generate", "--jobs", str(tmp_path / "bad.json"), "--ref", "a.png"])


def test_cli_16bit_images_and_a_huge_one_in_a_batch(files, tmp_path):
    """16-bit gray reference and target are scaled (were white garbage, exit 0); a 100 MP target is
    skipped with its reason, the batch goes on, the summary comes at the end, the exit status is 1."""
    jobs = [
        {"reference": "ref16.png", "reference_mask": "ref_mask.png", "target": "scene16.png", "box": [50, 40, 70, 60],
         "name": "sixteen"},
        {"reference": "ref.png", "target": "huge.png", "box": [0, 0, 10, 10], "name": "huge"},
        {"reference": "ref.png", "target": "scene.png", "box": [40, 30, 90, 70], "name": "normal"},
    ]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    for name in ("ref16.png", "scene16.png", "ref.png", "ref_mask.png", "scene.png", "huge.png"):
        (tmp_path / name).symlink_to(files / name)
    r = anydoor("generate", "--model", str(files / "model"), "--steps", "1", "--jobs", str(tmp_path / "jobs.json"),
                "--out-dir", str(tmp_path / "out"))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout.strip().endswith("wrote 2 image(s); skipped 1")
    skipped = [line for line in r.stderr.splitlines() if line.startswith("skipped: ")]
    assert skipped == [f"skipped: {tmp_path / 'jobs.json'} job 1: {tmp_path / 'huge.png'}: more pixels than the limit "
                       "(10000 x 10000 = 100.0 MP, limit 64.0 MP)"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["normal.png", "sixteen.png"]
    out = np.asarray(Image.open(tmp_path / "out" / "sixteen.png"))
    regions = {Path(m[0]).name: tuple(map(int, m[1:])) for m in REGION.findall(r.stdout)}
    x1, y1, x2, y2 = regions["sixteen.png"]
    outside = np.ones((100, 120), bool)
    outside[y1:y2, x1:x2] = False
    gray16 = np.asarray(Image.open(files / "scene16.png")).astype(np.float64)
    expected = np.rint(gray16 / 257).astype(np.uint8)
    assert outside.sum() > 3000 and np.array_equal(out[outside], np.repeat(expected[..., None], 3, 2)[outside])
    assert (out[outside] < 255).mean() > 0.9  # clipping made 99.6 % of it white


def test_cli_outputs_are_checked_before_any_work(files, tmp_path):
    """A bad --out fails at once (before the model loads: the model folder here does not exist), with
    one line and no traceback; an existing file is kept unless --overwrite."""
    common = ["generate", "--model", str(tmp_path / "no-model"), "--ref", str(files / "ref.png"),
              "--target", str(files / "scene.png"), "--box", "40", "30", "90", "70"]
    (tmp_path / "afile").write_text("x")
    (tmp_path / "old.png").write_bytes(b"previous result")
    for out, message in ((tmp_path / "x.gif", "unknown image extension '.gif' (use one of .png, .jpg, .jpeg, .webp, .bmp, .tif, .tiff)"),
                         (tmp_path / "afile" / "x.png", f"{tmp_path / 'afile'} is a file, not a folder"),
                         (tmp_path / "old.png", "exists (pass --overwrite to replace it)")):
        r = anydoor(*common, "--out", str(out))
        assert r.returncode == 1 and r.stderr.strip() == f"anydoor generate: {out}: {message}", r.stderr
    assert (tmp_path / "old.png").read_bytes() == b"previous result"
    r = anydoor(*common, "--out", str(tmp_path / "new.png"), "--target", str(files / "scene16.png"), "--box", "1", "1", "500", "9")
    assert r.returncode == 1 and "Traceback" not in r.stderr  # the box is checked by the pipeline: model needed
    assert r.stderr.strip().startswith("anydoor generate: model folder")
    # two jobs writing one file: refused up front, nothing written
    jobs = [{"reference": "ref.png", "target": "scene.png", "box": [1, 1, 9, 9], "out": "same.png"},
            {"reference": "ref.png", "target": "scene.png", "box": [2, 2, 9, 9], "out": "./same.png"}]
    (files / "dup.json").write_text(json.dumps(jobs))
    r = anydoor("generate", "--model", str(files / "model"), "--jobs", str(files / "dup.json"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"anydoor generate: {files / 'dup.json'} job 1: writes {files / '.' / 'same.png'}, "
                                f"as {files / 'dup.json'} job 0 does: give each job its own 'out' (or 'name')")
    assert not (files / "same.png").exists()
    # old key names: one line with the new name
    (files / "old.json").write_text(json.dumps([{"ref": "ref.png", "target": "scene.png", "box": [1, 1, 9, 9]}]))
    r = anydoor("generate", "--model", str(files / "model"), "--jobs", str(files / "old.json"))
    assert (r.returncode, r.stderr.strip()) == (1, f"anydoor generate: {files / 'old.json'} job 0: key 'ref' is now "
                                                   "'reference' (one job schema for generate and eval)")
    assert anydoor("generate", "--box", "1", "2", "3").returncode == 2  # argparse usage error


def test_overwrite_replaces_an_existing_output(files, tmp_path, capsys):
    common = ["generate", "--model", str(files / "model"), "--steps", "1", "--ref", str(files / "ref.png"),
              "--target", str(files / "scene.png"), "--box", "40", "30", "90", "70", "--out", str(tmp_path / "o.png")]
    (tmp_path / "o.png").write_bytes(b"old")
    with pytest.raises(SystemExit, match="exists"):
        main(common)
    assert main(common + ["--overwrite"]) == 0
    assert np.asarray(Image.open(tmp_path / "o.png")).shape == (100, 120, 3)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # the atomic write left no temporary
    # in --jobs mode an existing output skips that job only
    (files / "two.json").write_text(json.dumps([
        {"reference": "ref.png", "target": "scene.png", "box": [40, 30, 90, 70], "out": str(tmp_path / "o.png")},
        {"reference": "ref.png", "target": "scene.png", "box": [40, 30, 90, 70], "out": str(tmp_path / "p.png")}]))
    assert main(["generate", "--model", str(files / "model"), "--steps", "1", "--jobs", str(files / "two.json")]) == 1
    captured = capsys.readouterr()
    assert "wrote 1 image(s); skipped 1" in captured.out and "o.png: exists (pass --overwrite" in captured.err


def test_convert_cli_then_generate(tmp_path, files, capsys):
    tiny = tiny_models()
    torch.save({"state_dict": tiny["ldm"], "optimizer_states": []}, tmp_path / "anydoor.ckpt")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_YAML))
    args = ["convert", str(tmp_path / "anydoor.ckpt"), "--out", str(tmp_path / "model"), "--config",
            str(tmp_path / "tiny.yaml"), "--vit-heads", "2", "--reference-size", "28"]
    assert main(args) == 0
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"] and index["id_encoder"][1] == "IDEncoder"
    # the authors' sampler and preprocessing travel with their converted model
    assert index["sampling"] == {"scheduler": "ddim", "steps": 50, "guidance": 5.0}
    assert index["preprocessing"] == {"reference_margin": 1.2, "box_ratio": 1.1, "crop_ratio": 2.2, "mask_pad_value": 1.0}
    assert main(args) == 1 and "not empty (pass --overwrite" in capsys.readouterr().err
    out = tmp_path / "gen.png"
    assert main(["generate", "--model", str(tmp_path / "model"), "--steps", "2", "--scheduler", "dpm",
                 "--ref", str(files / "ref.png"), "--target", str(files / "scene.png"), "--box", "40", "30", "90", "70",
                 "--out", str(out)]) == 0
    assert np.asarray(Image.open(out)).shape == (100, 120, 3)
    dinov2 = {k[len("cond_stage_model.model."):]: v for k, v in tiny["ldm"].items()
              if k.startswith("cond_stage_model.model.")}
    torch.save(dinov2, tmp_path / "dinov2.pth")
    assert main(["convert", str(tmp_path / "dinov2.pth"), "--out", str(tmp_path / "vit"), "--vit-heads", "2"]) == 0
    from models.components.id_encoder import IDEncoder

    cfg = json.loads((tmp_path / "vit" / "config.json").read_text())
    enc = IDEncoder(cfg["model_name"], cfg["vit_kwargs"], out_dim=32, weights=str(tmp_path / "vit" / "model.safetensors"),
                    image_size=28)
    assert torch.equal(enc.vit.blocks[39].mlp.fc1.weight, tiny["vit"].blocks[39].mlp.fc1.weight)
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    assert main(["convert", str(tmp_path / "junk.ckpt"), "--out", str(tmp_path / "j")]) == 1


def test_generate_precision_option(files, tmp_path, capsys, monkeypatch):
    import models.components.precision as precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    common = ["generate", "--model", str(files / "model"), "--steps", "3", "--ref", str(files / "ref.png"),
              "--target", str(files / "scene.png"), "--box", "40", "30", "90", "70"]
    assert main(common + ["--out", str(tmp_path / "auto.png")]) == 0
    assert "precision bf16" in capsys.readouterr().err  # the default on a CPU with native bf16
    assert main(common + ["--precision", "bf16", "--out", str(tmp_path / "bf16.png")]) == 0
    assert main(common + ["--precision", "fp32", "--out", str(tmp_path / "fp32.png")]) == 0
    assert "precision fp32" in capsys.readouterr().err
    auto, bf16, fp32 = (np.asarray(Image.open(tmp_path / f"{n}.png")).astype(int) for n in ("auto", "bf16", "fp32"))
    assert np.array_equal(auto, bf16) and 0 < np.abs(bf16 - fp32).max() <= 16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert main(common + ["--out", str(tmp_path / "plain.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "plain.png")), fp32)
    with pytest.raises(SystemExit):
        main(common + ["--precision", "fp16", "--out", str(tmp_path / "x.png")])
