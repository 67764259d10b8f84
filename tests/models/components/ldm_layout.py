"""Test helper: write tiny diffusers/timm models in the authors' (LDM / ControlLDM) key layout.

Written from the LDM module structure (openaimodel UNet, cldm ControlNet, ldm AutoencoderKL,
DINOv2), independently of the converter, so a round trip through it checks the converter.
"""

from __future__ import annotations

import re

import torch

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
          ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _sub(rest: str, pairs: list[tuple[str, str]]) -> str:
    for new, old in pairs:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_key(key: str, per_level: int, up_attn: list[bool]) -> str:
    """diffusers UNet2DConditionModel / ControlNetModel key -> LDM key."""
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "controlnet_mid_block": "middle_block_out.0",
             "controlnet_cond_embedding.conv_in": "input_hint_block.0",
             "controlnet_cond_embedding.conv_out": "input_hint_block.14"}
    head, _, leaf = key.rpartition(".")
    if head in fixed:
        return f"{fixed[head]}.{leaf}"
    if m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(\w+)", key):
        return f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"
    if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(\w+)", key):
        return f"zero_convs.{m[1]}.0.{m[2]}"
    n = per_level + 1
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        i = 1 + int(m[1]) * n + int(m[3])
        return f"input_blocks.{i}.0.{_sub(m[4], RESNET)}" if m[2] == "resnets" else f"input_blocks.{i}.1.{m[4]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * n}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        if m[1] == "resnets":
            return f"middle_block.{2 * int(m[2])}.{_sub(m[3], RESNET)}"
        return f"middle_block.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        i = int(m[1]) * n + int(m[3])
        return f"output_blocks.{i}.0.{_sub(m[4], RESNET)}" if m[2] == "resnets" else f"output_blocks.{i}.1.{m[4]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        b = int(m[1])
        return f"output_blocks.{b * n + per_level}.{2 if up_attn[b] else 1}.conv.{m[2]}"
    raise KeyError(key)


def vae_key(key: str, levels: int) -> str:
    """diffusers AutoencoderKL key -> LDM key."""
    key = key.replace("conv_norm_out", "norm_out")
    if m := re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level = int(m[3]) if m[2] == "down" else levels - 1 - int(m[3])
        return f"{m[1]}.{m[2]}.{level}.block.{m[4]}.{m[5].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_sub(m[2], VAE_ATTN)}"
    return key


def vit_key(key: str) -> str:
    """timm DINOv2 ViT key -> original DINOv2 key."""
    return key.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")


def to_ldm_state_dict(unet, controlnet, vae, vit, projector, betas: torch.Tensor, generator: torch.Generator) -> dict:
    """A ControlLDM ``state_dict`` holding these modules' weights (plus the parts AnyDoor drops)."""
    per_level = unet.config.layers_per_block
    up_attn = [t.startswith("CrossAttn") for t in unet.config.up_block_types]
    levels = len(vae.config.block_out_channels)
    out = {}
    for k, v in unet.state_dict().items():
        out["model.diffusion_model." + unet_key(k, per_level, up_attn)] = v.clone()
    for k, v in controlnet.state_dict().items():
        out["control_model." + unet_key(k, per_level, up_attn)] = v.clone()
    # the unused first conv: random in the file, whatever the diffusers model holds
    w = out["control_model.input_blocks.0.0.weight"]
    out["control_model.input_blocks.0.0.weight"] = torch.randn(w.shape, generator=generator)
    for k, v in vae.state_dict().items():
        lk = vae_key(k, levels)
        if ".mid.attn_1." in lk and v.ndim == 2:
            v = v[:, :, None, None]  # LDM attention uses 1x1 convs
        out["first_stage_model." + lk] = v.clone()
    for k, v in vit.state_dict().items():
        out["cond_stage_model.model." + vit_key(k)] = v.clone()
    out["cond_stage_model.model.mask_token"] = torch.randn(1, vit.embed_dim, generator=generator)
    out["cond_stage_model.projector.weight"] = projector.weight.detach().clone()
    out["cond_stage_model.projector.bias"] = projector.bias.detach().clone()
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    for name in ("alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
                 "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                 "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1",
                 "posterior_mean_coef2", "logvar"):
        out[name] = torch.rand(alphas_cumprod.shape, generator=generator)
    out["betas"] = betas.clone()
    return out


TINY_UNET = {"in_channels": 4, "out_channels": 4, "model_channels": 32, "attention_resolutions": [4, 2, 1],
             "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "num_head_channels": 16,
             "use_spatial_transformer": True, "use_linear_in_transformer": True, "transformer_depth": 1,
             "context_dim": 32, "legacy": False}
TINY_YAML = {"model": {"target": "cldm.cldm.ControlLDM", "params": {
    "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "image_size": 8, "scale_factor": 0.18215,
    "control_stage_config": {"target": "cldm.cldm.ControlNet", "params": {**TINY_UNET, "hint_channels": 4}},
    "unet_config": {"target": "cldm.cldm.ControlledUnetModel", "params": TINY_UNET},
    "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {"embed_dim": 4, "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": []}}}}}}


def _perturb(module: torch.nn.Module, g: torch.Generator) -> torch.nn.Module:
    """Random weights everywhere, zero-initialised convs included, so every key matters."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return module.eval()


def tiny_models() -> dict:
    """Tiny diffusers/timm models (explicit configs) and the same weights in the authors' layout."""
    import timm
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel

    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # module constructors draw from the global RNG; keep it isolated
        return _tiny_models(g)


def _tiny_models(g: torch.Generator) -> dict:
    import timm
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel

    blocks = dict(block_out_channels=(32, 64, 128, 128), layers_per_block=2, cross_attention_dim=32,
                  attention_head_dim=[2, 4, 8, 8], use_linear_projection=True,
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",))
    unet = _perturb(UNet2DConditionModel(sample_size=8, up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                                         **blocks), g)
    controlnet = _perturb(ControlNetModel(conditioning_channels=4, **blocks), g)
    torch.nn.init.zeros_(controlnet.conv_in.weight), torch.nn.init.zeros_(controlnet.conv_in.bias)
    vae = _perturb(AutoencoderKL(block_out_channels=(32, 64, 128, 128), layers_per_block=2, latent_channels=4,
                                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4), g)
    vit = _perturb(timm.create_model("vit_giant_patch14_dinov2", pretrained=False, img_size=28, embed_dim=32, depth=40,
                                     num_heads=2, num_classes=0), g)
    projector = torch.nn.Linear(32, 32)
    betas = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").betas
    ldm = to_ldm_state_dict(unet, controlnet, vae, vit, projector, betas, g)
    return dict(unet=unet, controlnet=controlnet, vae=vae, vit=vit, projector=projector, ldm=ldm)


