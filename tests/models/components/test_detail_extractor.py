import pytest
import torch
from diffusers import UNet2DConditionModel

from models.components.denoiser import AnyDoorDenoiser
from models.components.detail_extractor import build_detail_extractor
from tests.fakes import TINY_MODEL_KWARGS


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_MODEL_KWARGS["unet_config"])
    return unet, build_detail_extractor(unet, (16, 32, 96, 256))


def test_collage_embedding_layout(parts):
    _, cn = parts
    emb = cn.controlnet_cond_embedding
    convs = [emb.conv_in, *emb.blocks, emb.conv_out]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (4, 16), (16, 16), (16, 32), (32, 32), (32, 96), (96, 96), (96, 256), (256, 32)]
    assert [c.stride[0] for c in convs].count(2) == 3
    assert torch.count_nonzero(emb.conv_out.weight) == 0  # zero conv: starts as a no-op


def test_controlnet_ignores_noisy_latent(parts):
    _, cn = parts
    assert torch.count_nonzero(cn.conv_in.weight) == 0 and not cn.conv_in.weight.requires_grad
    with torch.no_grad():  # give the zero convs weights so the residuals are not trivially zero
        for conv in [*cn.controlnet_down_blocks, cn.controlnet_mid_block, cn.controlnet_cond_embedding.conv_out]:
            conv.weight.normal_(0, 0.1)
    collage = torch.rand(1, 4, 64, 64)
    tokens = torch.randn(1, 5, 32)
    t = torch.tensor([500])
    a = cn(torch.randn(1, 48, 8, 8), t, tokens, collage, return_dict=False)
    b = cn(torch.randn(1, 48, 8, 8), t, tokens, collage, return_dict=False)
    for x, y in zip([*a[0], a[1]], [*b[0], b[1]]):
        assert x.abs().max() > 0
        assert torch.equal(x, y)
    c = cn(torch.randn(1, 48, 8, 8), t, tokens, collage * 0.5, return_dict=False)
    assert not torch.equal(a[1], c[1])


def test_denoiser_adds_residuals_and_freezes_encoder(parts):
    unet, cn = parts
    with torch.no_grad():
        cn.controlnet_mid_block.weight.normal_(0, 0.1)
    den = AnyDoorDenoiser(unet, cn)
    den.freeze_unet_encoder()
    trainable = {n.split(".")[1] for n, p in den.named_parameters() if p.requires_grad and n.startswith("unet.")}
    assert trainable == {"up_blocks", "conv_norm_out", "conv_out"}
    x, t, tok, collage = torch.randn(2, 48, 8, 8), torch.tensor([10, 900]), torch.randn(2, 5, 32), torch.rand(2, 4, 64, 64)
    out = den(x, t, tok, collage)
    assert out.shape == x.shape
    plain = unet(x, t, encoder_hidden_states=tok).sample
    assert not torch.allclose(out, plain)  # the (non-zero) residuals changed the output


def test_collage_embedding_init_switch():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_MODEL_KWARGS["unet_config"])
    cn = build_detail_extractor(unet, (16, 32, 96, 256), zero_init_embedding=False)
    assert torch.count_nonzero(cn.controlnet_cond_embedding.conv_out.weight) > 0
    assert torch.count_nonzero(cn.conv_in.weight) == 0  # the latent stays silenced either way
