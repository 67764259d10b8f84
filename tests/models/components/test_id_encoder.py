import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.layers import SwiGLUPacked, resample_abs_pos_embed

from models.components.id_encoder import IDEncoder, resample_pos_embed_like_dinov2

# Giant-like (SwiGLU packed MLP) but tiny, so the original release's w12/w3 names apply.
GIANT_LIKE = dict(patch_size=14, embed_dim=32, depth=2, num_heads=2, init_values=1e-5, img_size=518,
                  mlp_ratio=2.0, mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU)
SMALL_LIKE = dict(patch_size=14, embed_dim=32, depth=2, num_heads=2, init_values=1e-5, img_size=518)


def _encoder(**kw) -> IDEncoder:
    torch.manual_seed(0)
    return IDEncoder(model_name="vit_custom", vit_kwargs=kw.pop("vit_kwargs", SMALL_LIKE), out_dim=24, **kw)


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
    # [0,1] input is normalised with ImageNet mean/std before the patch embedding
    feats = enc.features(torch.rand(1, 3, 224, 224))
    assert torch.isfinite(feats).all()


@pytest.mark.parametrize("vit_kwargs", [GIANT_LIKE, SMALL_LIKE], ids=["swiglu", "mlp"])
def test_loads_release_file_and_timm_file(tmp_path, vit_kwargs):
    source = _encoder(vit_kwargs=dict(vit_kwargs))
    with torch.no_grad():
        source.vit.pos_embed.normal_()  # make the position grid matter
    vit_state = source.vit.state_dict()
    release = tmp_path / "dinov2_vitx14_pretrain.pth"
    torch.save(to_release_names(vit_state), release)
    timm_file = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in vit_state.items()}, str(timm_file))
    x = torch.rand(2, 3, 224, 224)
    expected = source.features(x)
    for weights in (release, timm_file):
        torch.manual_seed(1)  # a different random init, overwritten by the file
        loaded = IDEncoder(model_name="vit_custom", vit_kwargs=dict(vit_kwargs), out_dim=24, weights=str(weights))
        assert torch.allclose(loaded.features(x), expected, atol=1e-6)


def test_block_chunked_release_keys(tmp_path):
    source = _encoder(vit_kwargs=dict(GIANT_LIKE))
    state = to_release_names(source.vit.state_dict())
    chunked = {re.sub(r"^blocks\.(\d+)\.", r"blocks.0.\1.", k): v for k, v in state.items()}
    assert "blocks.0.1.norm1.weight" in chunked
    path = tmp_path / "chunked.pth"
    torch.save(chunked, path)
    loaded = IDEncoder(model_name="vit_custom", vit_kwargs=dict(GIANT_LIKE), out_dim=24, weights=str(path))
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


def test_from_pretrained_names_the_file_when_a_weight_is_missing(tmp_path):
    enc = _encoder()
    enc.save_pretrained(tmp_path / "id_encoder")
    weights = tmp_path / "id_encoder" / "model.safetensors"
    state = load_file(str(weights))
    state.pop("projector.bias")
    save_file(state, str(weights))
    with pytest.raises(ValueError, match="model.safetensors.*projector.bias"):
        IDEncoder.from_pretrained(tmp_path / "id_encoder")
