import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from models.pipeline import AnyDoorPipeline
from src.cli.main import main
from tests.fakes import tiny_pipeline
from tests.models.components.ldm_layout import TINY_YAML, tiny_models


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (60, 50, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    rgba[10:50, 8:40, 3] = 255
    Image.fromarray(rgba).save(d / "ref.png")
    Image.fromarray(rgba[..., :3].copy()).save(d / "ref_rgb.jpg")
    Image.fromarray(rgba[..., 3]).save(d / "ref_mask.png")
    target = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    Image.fromarray(target).save(d / "scene.png")
    mask = np.zeros((100, 120), np.uint8)
    mask[30:70, 40:90] = 255
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(np.zeros((100, 120), np.uint8)).save(d / "empty.png")
    (d / "broken.png").write_bytes(b"not an image")
    AnyDoorPipeline(**tiny_pipeline().components).save_pretrained(d / "model")  # recommends nothing
    return d


def test_generate_one_job_box_and_mask(files, tmp_path):
    common = ["generate", "--model", str(files / "model"), "--steps", "2", "--ref", str(files / "ref.png"),
              "--target", str(files / "scene.png")]
    assert main(common + ["--box", "40", "30", "90", "70", "--out", str(tmp_path / "a.png"),
                          "--save-intermediates"]) == 0
    assert main(common + ["--mask", str(files / "mask.png"), "--out", str(tmp_path / "b.png")]) == 0
    a, b = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert a.shape == b.shape == (100, 120, 3) and np.array_equal(a, b)  # same box, same seed
    assert (tmp_path / "a_crop.png").is_file() and (tmp_path / "a_collage.png").is_file()


def test_generate_batch_json_and_csv_skips_bad_jobs(files, tmp_path, capsys):
    jobs = [
        {"ref": "ref.png", "target": "scene.png", "box": [40, 30, 90, 70], "out": str(tmp_path / "j0.png")},
        {"ref": "ref_rgb.jpg", "ref_mask": "ref_mask.png", "target": "scene.png", "mask": "mask.png", "seed": 3},
        {"ref": "ref.png", "target": "scene.png", "mask": "empty.png"},
        {"ref": "broken.png", "target": "scene.png", "box": "1 1 20 20"},
        {"ref": "ref.png", "target": "scene.png", "box": [100, 30, 140, 70]},
    ]
    (files / "jobs.json").write_text(json.dumps(jobs))
    rc = main(["generate", "--model", str(files / "model"), "--steps", "2", "--jobs", str(files / "jobs.json"),
               "--out-dir", str(tmp_path / "outs"), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert rc == 1 and "wrote 2 image(s); skipped 3" in captured.out
    assert "empty.png" in captured.err or "target mask is empty" in captured.err
    assert "broken.png: cannot be read" in captured.err
    assert "degenerate or outside" in captured.err
    assert (tmp_path / "j0.png").is_file() and (tmp_path / "outs" / "00001_scene.png").is_file()

    (files / "jobs.csv").write_text("ref,target,box,out\nref.png,scene.png,40 30 90 70,%s\n" % (tmp_path / "c.png"))
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
    with pytest.raises(SystemExit, match="bad.json: cannot be parsed"):
        main(["generate", "--model", str(files / "model"), "--jobs", str(tmp_path / "bad.json")])


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
