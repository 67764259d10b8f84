import pytest
import torch
from diffusers import AutoencoderKL

from models.components.first_stage import (
    SpaceToDepthFirstStage,
    decode_latents,
    encode_images,
    latent_channels,
    latent_factor,
)


def test_space_to_depth_is_exactly_invertible_and_saves_its_config(tmp_path):
    stage = SpaceToDepthFirstStage(factor=4, scaling_factor=0.5)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = encode_images(stage, x)
    assert z.shape == (2, 48, 8, 8) and latent_channels(stage) == 48 and latent_factor(stage) == 4
    assert torch.equal(z, torch.nn.functional.pixel_unshuffle(x, 4) * 0.5)
    assert torch.equal(decode_latents(stage, z), x)
    stage.save_pretrained(tmp_path / "vae")
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["config.json"]  # no weights to save
    again = SpaceToDepthFirstStage.from_pretrained(tmp_path / "vae", torch_dtype=torch.float16)
    assert again.config.factor == 4 and again.config.scaling_factor == 0.5
    with pytest.raises(ValueError, match="multiple of 4"):
        encode_images(stage, torch.zeros(1, 3, 30, 32))


def _tiny_vae(scaling_factor: float) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                         scaling_factor=scaling_factor).eval()


def test_vae_latents_use_the_scaling_factor_of_its_config(tmp_path):
    """Not SD's 0.18215 constant: the value in vae/config.json (e.g. SDXL's 0.13025)."""
    vae = _tiny_vae(0.13025)
    vae.save_pretrained(tmp_path / "vae")
    vae = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert latent_factor(vae) == 2 and latent_channels(vae) == 4
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    z = encode_images(vae, x, generator=torch.Generator().manual_seed(0))
    posterior = vae.encode(x).latent_dist
    assert torch.allclose(z, posterior.sample(generator=torch.Generator().manual_seed(0)) * 0.13025)
    mean = posterior.mean * 0.13025
    assert torch.allclose(decode_latents(vae, mean), vae.decode(posterior.mean).sample, atol=1e-5)
