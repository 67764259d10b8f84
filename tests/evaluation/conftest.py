"""Tiny random-init stand-ins of the real identity extractors (same classes), saved to disk once."""

import json

import pytest
import torch

TINY_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 8}
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_extractor_files(tmp_path_factory):
    import open_clip
    import timm
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("extractors")
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=32, **TINY_VIT)
    save_file(vit.state_dict(), str(root / "dino_tiny.safetensors"))
    clip_dir = root / "clip_tiny"
    clip_dir.mkdir()
    clip = open_clip.CLIP(**TINY_CLIP)
    (clip_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    save_file(clip.state_dict(), str(clip_dir / "open_clip_model.safetensors"))
    return {"dino": root / "dino_tiny.safetensors", "clip": clip_dir, "vit": vit.eval(), "clip_model": clip.eval()}


@pytest.fixture(scope="session")
def tiny_scorers(tiny_extractor_files):
    from evaluation.identity import ClipScorer, DinoScorer

    dino = DinoScorer("vit_small_patch16_224", tiny_extractor_files["dino"], img_size=32, model_kwargs=TINY_VIT)
    clip = ClipScorer(str(tiny_extractor_files["clip"]))
    return {"dino_i": dino, "clip_i": clip}


def _scene(rng, h, w, x, y, obj):
    import numpy as np

    image = (rng.random((h, w, 3)) * 60 + 100).astype("uint8")
    image[y : y + obj.shape[0], x : x + obj.shape[1]] = obj
    mask = np.zeros((h, w), "uint8")
    mask[y : y + obj.shape[0], x : x + obj.shape[1]] = 255
    return image, mask


@pytest.fixture(scope="session")
def job_folder(tmp_path_factory):
    """Three jobs on disk: a textured object moved between two scenes; one as a box-only job."""
    import cv2
    import numpy as np

    root = tmp_path_factory.mktemp("jobs")
    rng = np.random.default_rng(0)
    entries = []
    for i in range(3):
        obj = np.zeros((20, 28, 3), "uint8")
        obj[..., 0] = 200
        obj[::4, :, 1] = 255  # stripes: details a copy keeps and a flat fill loses
        obj[:, :, 2] = 40 * i
        ref, ref_mask = _scene(rng, 64, 80, 10 + i, 12, obj)
        tgt, tgt_mask = _scene(rng, 72, 96, 40, 30 + i, obj)
        names = {}
        for key, arr in (("reference", ref), ("reference_mask", ref_mask), ("target", tgt), ("target_mask", tgt_mask)):
            names[key] = f"j{i}_{key}.png"
            cv2.imwrite(str(root / names[key]), arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGB2BGR))
        entry = {"name": f"job{i}", "ground_truth": names["target"], "kind": "even" if i % 2 == 0 else "odd", **names}
        if i == 2:
            del entry["target_mask"]
            entry["box"] = [40, 32, 68, 52]
        entries.append(entry)
    (root / "jobs.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="session")
def heldout_shards(tmp_path_factory):
    """A tiny held-out synthetic set packed by the real `anydoor shards` (2 clips + 2 stills)."""
    from src.cli.main import main

    out = tmp_path_factory.mktemp("heldout") / "val"
    rc = main(["shards", "synthetic", "--out", str(out), "--seed", "1000", "--videos", "2", "--images", "2",
               "--frame-size", "128x72", "--frames", "6", "--workers", "1", "--no-progress", "--items-per-shard", "2"])
    assert rc == 0
    return out
