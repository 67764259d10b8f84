"""Model folders of the layout written before the pipeline became a diffusers ``DiffusionPipeline``.

That layout differs in three places: the recommended sampler sat at the top of ``model_index.json``
(``sample_scheduler``/``sample_steps``/``guidance_scale``), the ID encoder's weights were
``id_encoder/model.safetensors`` with a config diffusers cannot read, and the space-to-depth first
stage's ``vae/config.json`` said ``scale``. ``anydoor convert OLD --out NEW`` rewrites such a folder
once (``migrate_folder``); loading one directly fails with that command in the message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

LEGACY_SAMPLING_KEYS = ("sample_scheduler", "sample_steps", "guidance_scale")


def legacy_reasons(folder: Path) -> list[str]:
    """What marks ``folder`` as the earlier layout (empty: it is not)."""
    reasons = []
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    if any(k in index for k in LEGACY_SAMPLING_KEYS):
        reasons.append("sampler keys at the top of model_index.json")
    if (folder / "id_encoder" / "model.safetensors").is_file():
        reasons.append("id_encoder/model.safetensors")
    vae_config = folder / "vae" / "config.json"
    if vae_config.is_file() and "scale" in json.loads(vae_config.read_text()):
        reasons.append("vae/config.json says 'scale'")
    return reasons


def _legacy_id_encoder(directory: Path) -> Any:
    from safetensors.torch import load_file

    from models.components.id_encoder import IDEncoder

    config = json.loads((directory / "config.json").read_text())
    # Built on the meta device and filled by assignment: no random ViT init, no second copy. Only
    # saved afterwards (the meta normalisation buffers are not part of the state dict).
    with torch.device("meta"):
        encoder = IDEncoder(**{k: config[k] for k in ("model_name", "vit_kwargs", "out_dim", "image_size")})
    weights = directory / "model.safetensors"
    missing, unexpected = encoder.load_state_dict(load_file(str(weights)), strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{weights}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return encoder


def migrate_folder(source: str | Path, out: str | Path) -> str:
    """Write ``source`` (earlier layout) as a current model folder at ``out``; returns what it assumed.

    The weights are unchanged. A folder with a recommended sampler was a training export: it keeps
    that sampler and gets no preprocessing (the fallback applies, as it did). A folder with a VAE and
    no sampler was written by ``anydoor convert`` from the authors' checkpoint: it gets their
    sampler and preprocessing, as a fresh conversion does.
    """
    import diffusers
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    from models.components.first_stage import SpaceToDepthFirstStage
    from models.pipeline import AUTHORS_SAMPLING, AnyDoorPipeline
    from src.conditioning import AUTHORS_PREPROCESSING
    from src.files import atomic_dir

    source, out = Path(source), Path(out)
    index = json.loads((source / "model_index.json").read_text())
    vae_config = json.loads((source / "vae" / "config.json").read_text())
    if vae_config.get("_class_name") == SpaceToDepthFirstStage.__name__:
        vae: Any = SpaceToDepthFirstStage(factor=int(vae_config["factor"]),
                                          scaling_factor=float(vae_config.get("scale", 1.0)))
    else:
        vae = AutoencoderKL.from_pretrained(source / "vae", use_safetensors=True)
    scheduler_class = json.loads((source / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    parts = dict(
        id_encoder=_legacy_id_encoder(source / "id_encoder"),
        controlnet=ControlNetModel.from_pretrained(source / "controlnet", use_safetensors=True),
        unet=UNet2DConditionModel.from_pretrained(source / "unet", use_safetensors=True),
        vae=vae,
        scheduler=getattr(diffusers, scheduler_class).from_pretrained(source / "scheduler"),
    )
    if all(k in index for k in LEGACY_SAMPLING_KEYS):
        sampling = dict(zip(("scheduler", "steps", "guidance"), (index[k] for k in LEGACY_SAMPLING_KEYS)))
        preprocessing, assumed = None, "a training export: its recommended sampler kept, no preprocessing recorded"
    elif isinstance(vae, AutoencoderKL):
        sampling, preprocessing = AUTHORS_SAMPLING._asdict(), AUTHORS_PREPROCESSING._asdict()
        assumed = "converted from the authors' checkpoint: their sampler and preprocessing recorded"
    else:
        sampling = preprocessing = None
        assumed = "no recommendation found: the fallbacks apply"
    pipe = AnyDoorPipeline(**parts, sampling=sampling, preprocessing=preprocessing)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp)
    return assumed


# AnyDoorModule arguments renamed or regrouped since; configs saved by earlier runs still build.
_RENAMED = {"first_stage": "vae", "hint_channels": "collage_embedding_channels",
            "zero_hint_conv": "zero_init_collage_embedding"}
_SCHEDULE = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
             "rescale_betas_zero_snr", "timestep_spacing")
# frozen_dtype: how training stores the frozen parts; a module that samples keeps them in fp32.
TRAINING_ONLY = ("optimizer", "lr_scheduler", "lr", "weight_decay", "betas", "warmup_steps", "use_8bit_adam",
                 "frozen_dtype")


def migrate_module_args(init_args: dict[str, Any]) -> dict[str, Any]:
    """``AnyDoorModule`` arguments for sampling/export: training-only ones dropped, old names mapped."""
    args = {_RENAMED.get(k, k): v for k, v in init_args.items() if k not in TRAINING_ONLY}
    schedule = {k: args.pop(k) for k in _SCHEDULE if k in args}
    if schedule:
        args["noise_schedule"] = {**schedule, **(args.get("noise_schedule") or {})}
    vae = args.get("vae")
    if isinstance(vae, dict) and "scale" in vae:
        vae = dict(vae)
        vae["scaling_factor"] = vae.pop("scale")
        if vae.get("type", "vae") == "vae":
            vae.pop("scaling_factor")  # the scale is vae/config.json's
        args["vae"] = vae
    return args
