"""The AnyDoor module of a project config without its weight files (full size: SD-2.1-base U-Net +
ControlNet + VAE, DINOv2 ViT-g/14).

The architecture comes from ``models.components.conversion.RELEASED_LDM_CONFIG`` (the authors' model
YAML) and the training options from a project config (``configs/anydoor.yaml`` by default), so the
planner, ``bench_train`` and ``gpu_check`` all measure the model that config would train. Built on the
``meta`` device (instant, no RNG) for the planner, or on a GPU with a real random init for timings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "anydoor.yaml"
# Read from the weight folders at run time, so not in a config: sd_path and the ViT weight file.
_PATH_KEYS = ("sd_path",)


def read_config(path: str | Path = DEFAULT_CONFIG) -> dict[str, Any]:
    """A project config (``class_path``/``init_args`` YAML) as a dict; errors name the file."""
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
        cfg["model"]["init_args"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a project config with model.init_args ({err})") from err
    return cfg


def uses_vae(config: dict[str, Any]) -> bool:
    """Full-size configs name an SD folder for the U-Net and VAE; tiny ones inline everything."""
    first = config["model"]["init_args"].get("first_stage") or {"type": "vae"}
    return first.get("type", "vae") == "vae"


def module_kwargs(config: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """AnyDoorModule arguments of ``config``; for a full-size config with the SD-2.1 / ViT-g/14
    architecture inlined in place of the weight paths."""
    from models.components.conversion import RELEASED_LDM_CONFIG, unet_config_from_ldm

    kwargs = {k: v for k, v in config["model"]["init_args"].items() if k not in _PATH_KEYS}
    if not uses_vae(config):
        return {**kwargs, **overrides}
    id_encoder = dict(kwargs.get("id_encoder") or {})
    id_encoder.pop("weights", None)
    id_encoder.setdefault("model_name", "vit_giant_patch14_dinov2")
    kwargs["id_encoder"] = id_encoder
    kwargs["unet_config"] = unet_config_from_ldm(RELEASED_LDM_CONFIG)
    # The VAE needs a folder; a parameter-free stage of the same factor stands in until it is replaced.
    kwargs["first_stage"] = {"type": "space_to_depth", "factor": 8}
    kwargs.update(overrides)
    return kwargs


def frozen_modules_to(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast every parameter that does not train (DINOv2, VAE, U-Net encoder, ControlNet conv_in)."""
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            if not p.requires_grad and p.dtype != dtype and p.is_floating_point():
                setattr(sub, name, torch.nn.Parameter(p.detach().to(dtype), requires_grad=False))


def build_module(config: dict[str, Any] | None = None, device: str | torch.device = "meta",
                 frozen_dtype: Optional[torch.dtype] = None, **overrides: Any):
    """The ``AnyDoorModule`` of ``config`` (default configs/anydoor.yaml) on ``device`` without weight
    files (``meta``: shapes only; another device: the module's own seeded random init)."""
    from diffusers import AutoencoderKL, DDPMScheduler

    from models.anydoor_module import AnyDoorModule
    from models.components.conversion import RELEASED_LDM_CONFIG, vae_config_from_ldm
    from models.components.first_stage import VAEFirstStage

    config = config or read_config()
    with torch.device(device):
        module = AnyDoorModule(**module_kwargs(config, **overrides))
        if uses_vae(config):
            module.first_stage = VAEFirstStage(AutoencoderKL(**vae_config_from_ldm(RELEASED_LDM_CONFIG)))
    # Scheduler tables are plain CPU tensors in the module; rebuild them outside the device context.
    module.noise_scheduler = DDPMScheduler(**module.scheduler_config())
    if frozen_dtype is not None:
        frozen_modules_to(module, frozen_dtype)
    set_module_device(module, device)
    return module


def set_module_device(module: torch.nn.Module, device: str | torch.device) -> None:
    """Lightning's ``module.device`` follows ``.to()``; ``to_empty``/device contexts do not update it."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # as .to() stores it (Lightning asks CUDA otherwise)
        device = torch.device("cuda", 0)
    module._device = device  # noqa: SLF001 - LightningModule keeps no public setter


def materialize(module: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """Give a meta module real (uninitialised) storage on ``device``; inside a ``FakeTensorMode``
    the storage is fake: shapes, dtypes and sizes without memory."""
    module.to_empty(device=device)
    set_module_device(module, device)
    return module


def random_batch(batch: int, size: int = 512, reference_size: int = 224, device: str | torch.device = "cpu",
                 generator: Optional[torch.Generator] = None, num_timesteps: int = 1000) -> dict[str, torch.Tensor]:
    """A training batch of the datamodule's contract (docs/design.md), random content."""
    g = generator or torch.Generator().manual_seed(0)
    b = {
        "reference": torch.rand(batch, 3, reference_size, reference_size, generator=g),
        "target": torch.rand(batch, 3, size, size, generator=g) * 2 - 1,
        "collage": torch.rand(batch, 4, size, size, generator=g) * 2 - 1,
        "timesteps": torch.randint(0, num_timesteps, (batch,), generator=g),
    }
    return {k: v.to(device) for k, v in b.items()}
