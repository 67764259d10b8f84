import re

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from models.components.id_encoder import IDEncoder, resample_pos_embed_like_dinov2

# Giant-like (SwiGLU packed MLP) but tiny, so the original release's w12/w3 names apply.
GIANT = "vit_giant_patch14_dinov2"
GIANT_LIKE = dict(patch_size=14, embed_dim=32, depth=2, num_heads=2, init_values=1e-5, img_size=518, mlp_ratio=2.0)
SMALL = "vit_small_patch14_dinov2"
SMALL_LIKE = dict(patch_size=14, embed_dim=32, depth=2, num_heads=2, init_values=1e-5, img_size=518)


def _encoder(model_name: str = SMALL, vit_kwargs: dict = SMALL_LIKE, **kw) -> IDEncoder:
    torch.manual_seed(0)
    return IDEncoder(model_name=model_name, vit_kwargs=dict(vit_kwargs), out_dim=24, **kw)


def to_release_names(vit_state: dict) -> dict:
    """timm names -> the DINOv2 release file's names (inverse of what the loader must undo)."""
    out = {k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3."): v.clone() for k, v in vit_state.items()}
    out["mask_token"] = torch.zeros(1, vit_state["cls_token"].shape[-1])
    return out


def test_pos_embed_resampled_like_the_release():
    pos = torch.randn(1, 1 + 37 * 37, 8)
    out = resample_pos_embed_like_dinov2(pos, (16, 16))
    assert out.shape == (1, 1 + 256, 8)
    grid = pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic", align_corners=False)
    assert torch.equal(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 256, 8))
    assert torch.equal(out[:, :1], pos[:, :1])
    # timm's load-time resampling (antialias, by size) is measurably different: the point of doing our own.
    timm_out = resample_abs_pos_embed(pos, new_size=(16, 16), old_size=(37, 37), num_prefix_tokens=1)
    assert (timm_out - out).abs().max() > 1e-3


@pytest.mark.parametrize("name, kwargs", [(GIANT, GIANT_LIKE), (SMALL, SMALL_LIKE)], ids=["swiglu", "mlp"])
def test_timm_forward_with_the_release_position_step(name, kwargs):
    """The features are the original DINOv2 computation: patches, class token, the 37x37 grid resampled
    by (g + 0.1) / 37 bicubic, blocks, norm; only the position step differs from timm's own."""
    enc = _encoder(name, kwargs)
    with torch.no_grad():
        enc.vit.pos_embed.normal_()  # make the position grid matter
    x = torch.rand(2, 3, 224, 224)
    vit = enc.vit
    with torch.no_grad():
        y = vit.patch_embed((x - enc.mean) / enc.std).flatten(1, 2)
        y = torch.cat([vit.cls_token.expand(2, -1, -1), y], dim=1) + resample_pos_embed_like_dinov2(vit.pos_embed, (16, 16))
        expected = vit.norm(vit.blocks(vit.norm_pre(y)))
    assert torch.equal(enc.features(x), expected)


def test_legacy_vit_custom_builds_the_same_model_from_the_registry():
    plain = timm.models.vision_transformer.VisionTransformer
    torch.manual_seed(0)
    reference = plain(num_classes=0, **SMALL_LIKE)
    legacy = _encoder("vit_custom", SMALL_LIKE)
    assert legacy.config.model_name == SMALL  # saved under its registry name from now on
    state = legacy.vit.state_dict()
    assert set(state) == set(reference.state_dict())
    assert all(torch.equal(v, state[k]) for k, v in reference.state_dict().items())


def test_tokens_shape_and_frozen_vit():
    enc = _encoder()
    enc.train()
    assert not enc.vit.training
    tokens = enc(torch.rand(2, 3, 224, 224))
    assert tokens.shape == (2, 1 + 16 * 16, 24)
    assert all(not p.requires_grad for p in enc.vit.parameters())
    assert all(p.requires_grad for p in enc.projector.parameters())
    assert not any(p.requires_grad for p in _encoder(train_projector=False).parameters())


def test_normalisation_inside_and_black_reference_is_unconditional():
    enc = _encoder()
    black = torch.zeros(1, 3, 224, 224)
    assert torch.allclose(enc.unconditional_tokens(3), enc(black).expand(3, -1, -1))
    feats = enc.features(torch.rand(1, 3, 224, 224))
    assert torch.isfinite(feats).all()


@pytest.mark.parametrize("name, kwargs", [(GIANT, GIANT_LIKE), (SMALL, SMALL_LIKE)], ids=["swiglu", "mlp"])
def test_loads_release_file_and_timm_file(tmp_path, name, kwargs):
    source = _encoder(name, kwargs)
    with torch.no_grad():
        source.vit.pos_embed.normal_()
    vit_state = source.vit.state_dict()
    release = tmp_path / "dinov2_vitx14_pretrain.pth"
    torch.save(to_release_names(vit_state), release)
    timm_file = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in vit_state.items()}, str(timm_file))
    x = torch.rand(2, 3, 224, 224)
    expected = source.features(x)
    for weights in (release, timm_file):
        torch.manual_seed(1)  # a different random init, overwritten by the file
        loaded = IDEncoder(model_name=name, vit_kwargs=dict(kwargs), out_dim=24, weights=str(weights))
        assert torch.allclose(loaded.features(x), expected, atol=1e-6)


def test_block_chunked_release_keys(tmp_path):
    source = _encoder(GIANT, GIANT_LIKE)
    state = to_release_names(source.vit.state_dict())
    chunked = {re.sub(r"^blocks\.(\d+)\.", r"blocks.0.\1.", k): v for k, v in state.items()}
    assert "blocks.0.1.norm1.weight" in chunked
    path = tmp_path / "chunked.pth"
    torch.save(chunked, path)
    loaded = IDEncoder(model_name=GIANT, vit_kwargs=dict(GIANT_LIKE), out_dim=24, weights=str(path))
    x = torch.rand(1, 3, 224, 224)
    assert torch.allclose(loaded.features(x), source.features(x), atol=1e-6)


def test_bad_weight_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        _encoder(weights=str(tmp_path / "nope.pth"))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"something.else": torch.zeros(2)}, str(wrong))
    with pytest.raises(ValueError, match="wrong.safetensors"):
        _encoder(weights=str(wrong))


def test_save_and_from_pretrained_round_trip(tmp_path):
    enc = _encoder()
    enc.save_pretrained(tmp_path / "id_encoder")
    assert (tmp_path / "id_encoder" / "config.json").is_file()
    again = IDEncoder.from_pretrained(tmp_path / "id_encoder")
    x = torch.rand(1, 3, 224, 224)
    assert torch.equal(again(x), enc(x))
    assert torch.equal(again.projector.weight, enc.projector.weight)
    assert not any(t.is_meta for t in [*again.parameters(), *again.buffers()])
    assert again.projector.weight.requires_grad and not any(p.requires_grad for p in again.vit.parameters())
    half = IDEncoder.from_pretrained(tmp_path / "id_encoder", torch_dtype=torch.bfloat16)
    assert half.projector.weight.dtype == torch.bfloat16


def test_attention_runs_fused_sdpa_even_when_timm_is_told_otherwise(monkeypatch):
    from timm.models.vision_transformer import Attention

    monkeypatch.setattr("timm.layers.config._USE_FUSED_ATTN", 0)  # what TIMM_FUSED_ATTN=0 sets
    enc = _encoder(GIANT, GIANT_LIKE)
    blocks = [m for m in enc.vit.modules() if isinstance(m, Attention)]
    assert len(blocks) == 2 and all(b.fused_attn for b in blocks)
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.rand(1, 3, 56, 56)
    fused = enc(x)
    assert len(calls) == 2
    for b in blocks:
        b.fused_attn = False
    assert torch.allclose(enc(x), fused, atol=1e-5) and len(calls) == 2  # the same maths, unfused
