import json
from pathlib import Path

import pytest
import torch
import yaml

from models.components import conversion as conv
from models.components import ldm_configs as ldm
from models.components.weights import load_state_dict_file
from tests.models.components.ldm_layout import TINY_YAML, tiny_models

# copy of shared/reference/anydoor_official_keys.tsv (keys, shapes of the released checkpoint)
MANIFEST = Path(__file__).parent / "data" / "anydoor_official_keys.tsv"


def manifest_meta() -> dict[str, torch.Tensor]:
    out = {}
    with torch.device("meta"):
        for line in MANIFEST.read_text().splitlines():
            key, shape, _ = line.split("\t")
            out[key] = torch.empty(json.loads(shape))
    return out


@pytest.fixture(scope="module")
def tiny():
    return tiny_models()


def test_full_size_mapping_covers_the_manifest_on_meta():
    sd = manifest_meta()
    assert len(sd) == 1856
    out = conv.convert_anydoor_checkpoint(sd)  # checks keys and shapes against meta diffusers/timm models
    sizes = {k: len(v.state_dict) for k, v in out.items()}
    assert sizes == {"unet": 686, "controlnet": 340, "vae": 248, "id_encoder": 568, "scheduler": 0}
    used = {s for c in out.values() for s in c.sources.values()}
    dropped = set(conv.dropped_keys(sd))
    assert dropped == set(conv.SCHEDULE_BUFFERS) | set(conv.UNUSED_CONTROLNET_CONV) | {"cond_stage_model.model.mask_token"}
    assert used | dropped == set(sd) and not used & dropped
    assert len(used) == len(set(used))
    c, i = out["controlnet"].sources, out["id_encoder"].sources
    assert c["controlnet_cond_embedding.conv_out.weight"] == "control_model.input_hint_block.14.weight"
    assert c["controlnet_cond_embedding.blocks.5.weight"] == "control_model.input_hint_block.12.weight"
    assert c["controlnet_down_blocks.11.weight"] == "control_model.zero_convs.11.0.weight"
    assert "conv_in.weight" not in c and out["controlnet"].state_dict["conv_in.weight"].shape == (320, 4, 3, 3)
    assert i["vit.blocks.39.mlp.fc1.weight"] == "cond_stage_model.model.blocks.39.mlp.w12.weight"
    assert i["vit.blocks.0.ls1.gamma"] == "cond_stage_model.model.blocks.0.ls1.gamma"
    assert out["id_encoder"].config["vit_kwargs"]["num_heads"] == 24 and out["id_encoder"].config["out_dim"] == 1024
    assert out["unet"].config["cross_attention_dim"] == 1024 and out["vae"].config["scaling_factor"] == 0.18215


def test_unknown_key_is_an_error_naming_it():
    sd = manifest_meta()
    sd["model.diffusion_model.extra_block.weight"] = torch.empty(3, device="meta")
    with pytest.raises(conv.ConversionError, match="extra_block"):
        conv.convert_anydoor_checkpoint(sd)
    sd = manifest_meta()
    sd["ema.decay"] = torch.empty((), device="meta")
    with pytest.raises(conv.ConversionError, match="ema.decay"):
        conv.convert_anydoor_checkpoint(sd)


def test_shape_mismatch_and_missing_key_name_the_key():
    sd = manifest_meta()
    sd["control_model.zero_convs.3.0.weight"] = torch.empty(320, 320, 3, 3, device="meta")
    with pytest.raises(conv.ConversionError, match=r"zero_convs\.3\.0\.weight"):
        conv.convert_anydoor_checkpoint(sd)
    sd = manifest_meta()
    del sd["model.diffusion_model.output_blocks.4.1.proj_out.bias"]
    with pytest.raises(conv.ConversionError, match="up_blocks.1.attentions.1.proj_out.bias"):
        conv.convert_anydoor_checkpoint(sd)
    sd = manifest_meta()
    del sd["cond_stage_model.projector.bias"]
    with pytest.raises(conv.ConversionError, match="projector.bias"):
        conv.convert_anydoor_checkpoint(sd)


def test_tiny_checkpoint_has_the_released_key_names(tiny):
    assert set(tiny["ldm"]) == set(manifest_meta())


def test_released_yaml_round_trips_to_default_architecture(tmp_path):
    path = tmp_path / "anydoor.yaml"
    path.write_text(yaml.safe_dump(ldm.RELEASED_LDM_CONFIG))
    assert ldm.unet_config_from_ldm(ldm.load_ldm_config(path)) == ldm.unet_config_from_ldm(ldm.load_ldm_config(None))
    (tmp_path / "bad.yaml").write_text("model: {params: {unet_config: {}}}\n")
    with pytest.raises(conv.ConversionError, match="bad.yaml"):
        ldm.load_ldm_config(tmp_path / "bad.yaml")


def test_tiny_checkpoint_converts_and_loads_with_identical_outputs(tiny, tmp_path):
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel

    from models.components.id_encoder import IDEncoder

    ckpt = tmp_path / "epoch=1.ckpt"  # Lightning layout, optimizer state included
    torch.save({"epoch": 1, "state_dict": tiny["ldm"], "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(3)}}}]}, ckpt)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_YAML))
    sd = load_state_dict_file(ckpt)
    out = conv.convert_anydoor_checkpoint(sd, ldm.load_ldm_config(tmp_path / "tiny.yaml"), vit_num_heads=2,
                                          reference_size=28)
    conv.save_converted(out, tmp_path / "model")

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 900])
    ctx = torch.randn(2, 5, 32, generator=g)
    hint = torch.randn(2, 4, 64, 64, generator=g)
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "model" / "unet").eval()
    controlnet = ControlNetModel.from_pretrained(tmp_path / "model" / "controlnet").eval()
    vae = AutoencoderKL.from_pretrained(tmp_path / "model" / "vae").eval()
    with torch.no_grad():
        down, mid = controlnet(x, t, ctx, hint, return_dict=False)
        ref_down, ref_mid = tiny["controlnet"](x, t, ctx, hint, return_dict=False)
        assert all(torch.equal(a, b) for a, b in zip(down, ref_down)) and torch.equal(mid, ref_mid)
        assert mid.abs().max() > 0
        ours = unet(x, t, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        ref = tiny["unet"](x, t, ctx, down_block_additional_residuals=ref_down, mid_block_additional_residual=ref_mid).sample
        assert torch.equal(ours, ref)
        image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
        assert torch.equal(vae.encode(image).latent_dist.mean, tiny["vae"].encode(image).latent_dist.mean)
        assert torch.equal(vae.decode(x).sample, tiny["vae"].decode(x).sample)
        id_encoder = IDEncoder.from_pretrained(tmp_path / "model" / "id_encoder").eval()
        img = torch.rand(2, 3, 28, 28, generator=g)
        normed = (img - id_encoder.mean) / id_encoder.std
        assert torch.equal(id_encoder.features(img), tiny["vit"].forward_features(normed))
        assert torch.equal(id_encoder(img), tiny["projector"](tiny["vit"].forward_features(normed)))
    assert not torch.equal(tiny["ldm"]["control_model.input_blocks.0.0.weight"], controlnet.conv_in.weight)
    assert controlnet.conv_in.weight.abs().max() == 0
    sched = DDIMScheduler.from_pretrained(tmp_path / "model" / "scheduler")
    sched.set_timesteps(50)
    assert sched.timesteps[-1] == 1 and sched.timesteps[0] == 981  # the authors' uniform DDIM discretisation


def test_dinov2_release_file_alone(tiny, tmp_path):
    original = {k[len("cond_stage_model.model."):]: v for k, v in tiny["ldm"].items() if k.startswith("cond_stage_model.model.")}
    torch.save(original, tmp_path / "dinov2_vitg14_pretrain.pth")
    comp, dropped = conv.convert_dinov2(load_state_dict_file(tmp_path / "dinov2_vitg14_pretrain.pth"), num_heads=2)
    assert dropped == ["mask_token"]
    vit = ldm.build_vit(comp.config)
    vit.load_state_dict(comp.state_dict, strict=True)
    img = torch.rand(1, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(vit.eval().forward_features(img), tiny["vit"].forward_features(img))


def test_wrong_schedule_and_unreadable_file_are_errors(tiny, tmp_path):
    sd = dict(tiny["ldm"])
    sd["betas"] = torch.linspace(1e-4, 2e-2, 1000)
    with pytest.raises(conv.ConversionError, match="betas"):
        conv.convert_anydoor_checkpoint(sd, TINY_YAML, vit_num_heads=2)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt"):
        load_state_dict_file(tmp_path / "junk.ckpt")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_state_dict_file(tmp_path / "missing.ckpt")
