import pytest
import torch
from diffusers import AutoencoderKL

from models.components.first_stage import SpaceToDepthFirstStage, VAEFirstStage, load_first_stage


def test_space_to_depth_is_exactly_invertible(tmp_path):
    stage = SpaceToDepthFirstStage(factor=4, scale=0.5)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = stage.encode(x)
    assert z.shape == (2, 48, 8, 8) and stage.latent_channels == 48
    assert torch.equal(stage.decode(z), x)
    stage.save_pretrained(tmp_path / "vae")
    again = load_first_stage(tmp_path / "vae")
    assert isinstance(again, SpaceToDepthFirstStage) and again.factor == 4 and again.scale == 0.5


def test_space_to_depth_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of 4"):
        SpaceToDepthFirstStage(4).encode(torch.zeros(1, 3, 30, 32))


def test_vae_wrapper_scales_latents_and_is_frozen(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4)
    stage = VAEFirstStage(vae)
    assert stage.factor == 2 and not any(p.requires_grad for p in stage.parameters())
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    z = stage.encode(x, generator=torch.Generator().manual_seed(0))
    mean = vae.encode(x).latent_dist.mean
    assert z.shape == (1, 4, 8, 8)
    assert torch.allclose(stage.encode(x, generator=torch.Generator().manual_seed(0)), z)
    assert stage.decode(mean * 0.18215).shape == (1, 3, 16, 16)
    assert torch.allclose(stage.decode(mean * 0.18215), vae.decode(mean).sample, atol=1e-5)
    stage.save_pretrained(tmp_path / "vae")
    assert isinstance(load_first_stage(tmp_path / "vae"), VAEFirstStage)
