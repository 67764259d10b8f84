import pytest
import torch

from evaluation.identity import ClipScorer, DinoScorer, load_state_dict_file, object_on_white
from src.metrics import cosine_scores


def test_object_on_white_crops_masks_and_pads():
    image = torch.zeros(3, 20, 30)
    mask = torch.zeros(1, 20, 30)
    mask[0, 5:9, 10:20] = 1  # 4 x 10 object
    image[:, 5:9, 10:20] = 0.25
    out = object_on_white(image, mask, size=10)
    assert out.shape == (3, 10, 10)
    assert torch.allclose(out[:, 0], torch.ones(3, 10))  # padding above is white
    assert torch.allclose(out[:, 5, :], torch.full((3, 10), 0.25), atol=1e-5)  # object fills the width
    boxed = object_on_white(image, box=(10, 5, 20, 9), size=10)
    assert torch.allclose(boxed, out, atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        object_on_white(image, torch.zeros(1, 20, 30))


def test_dino_scorer_loads_the_saved_weights(tiny_extractor_files, tiny_scorers):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = tiny_extractor_files["vit"].forward_features((x - tiny_scorers["dino_i"].mean) / tiny_scorers["dino_i"].std)[:, 0]
    assert torch.allclose(tiny_scorers["dino_i"].embed(x), expected, atol=1e-5)


def test_clip_scorer_loads_the_saved_weights(tiny_extractor_files, tiny_scorers):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    clip = tiny_extractor_files["clip_model"]
    expected = clip.encode_image((x - tiny_scorers["clip_i"].mean) / tiny_scorers["clip_i"].std)
    assert torch.allclose(tiny_scorers["clip_i"].embed(x), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["dino_i", "clip_i"])
def test_identity_scores_same_object_one_other_object_less(tiny_scorers, name):
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(2, 3, 32, 32, generator=g)
    scorer = tiny_scorers[name]
    same = cosine_scores(scorer.embed(a[None]), scorer.embed(a[None].clone()))
    other = cosine_scores(scorer.embed(a[None]), scorer.embed(b[None]))
    assert torch.allclose(same, torch.ones(1), atol=1e-5)
    assert other < 0.9999


def test_scorers_refuse_missing_or_wrong_weights(tmp_path, tiny_extractor_files):
    with pytest.raises(FileNotFoundError, match="not found"):
        DinoScorer("vit_small_patch16_224", tmp_path / "nope.safetensors", img_size=32)
    with pytest.raises(ValueError, match="does not fit"):  # tiny weights, full-size architecture
        DinoScorer("vit_small_patch16_224", tiny_extractor_files["dino"], img_size=32, model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8})
    with pytest.raises(FileNotFoundError, match="local file"):
        ClipScorer("ViT-B-32", weights=None)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_state_dict_file(bad)


def test_dino_scorer_reads_dinov2_release_layout(tmp_path):
    """A DINOv2-style file (518 px position grid, mask_token, 'module.' prefix) loads at 224 px."""
    import timm
    from safetensors.torch import save_file

    kwargs = {"embed_dim": 32, "depth": 1, "num_heads": 2}
    src = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=518, **kwargs)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    state["module.mask_token"] = torch.zeros(1, 32)
    save_file(state, str(tmp_path / "dinov2.safetensors"))
    scorer = DinoScorer("vit_small_patch14_dinov2", tmp_path / "dinov2.safetensors", img_size=224, model_kwargs=kwargs)
    assert scorer.model.pos_embed.shape[1] == 16 * 16 + 1
    assert torch.equal(scorer.model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    assert scorer.embed(torch.rand(1, 3, 64, 64)).shape == (1, 32)
