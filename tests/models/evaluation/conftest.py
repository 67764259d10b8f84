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
    from models.evaluation.identity import ClipScorer, DinoScorer

    dino = DinoScorer("vit_small_patch16_224", tiny_extractor_files["dino"], img_size=32, model_kwargs=TINY_VIT)
    clip = ClipScorer(str(tiny_extractor_files["clip"]))
    return {"dino": dino, "clip": clip}
