"""The AnyDoor module of a project config without its weight files, for the memory planner and GPU check.

A config's ``model.init_args`` are read as ``AnyDoorModule.from_config_file`` reads them
(``models.legacy.migrate_module_args``: training-only arguments dropped, earlier names mapped); a
full-size config (one that names ``sd_path``) gets the released architecture inlined in place of its
weight folders (``benchmarks.full_size.released_parts``). Built on the ``meta`` device (instant, no
RNG) for the planner, or on a device with the module's own seeded random init for timings.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "anydoor.yaml"
OPTIMIZER_MODULES = ("torch.optim.", "bitsandbytes.optim.")  # what a config's optimizer may name here


def read_config(path: str | Path = DEFAULT_CONFIG) -> dict[str, Any]:
    """A project config (``class_path``/``init_args`` YAML) as a dict; errors name the file."""
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
        cfg["model"]["init_args"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a project config with model.init_args ({err})") from err
    return cfg


def module_args(config: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """``AnyDoorModule`` arguments of ``config`` (no weight files), ``overrides`` on top."""
    from benchmarks.full_size import released_parts
    from models.legacy import migrate_module_args

    args = migrate_module_args(dict(config["model"]["init_args"]))
    if args.pop("sd_path", None):
        released = released_parts()
        args["unet_config"] = released["unet_config"]
        if (args.get("vae") or {"type": "vae"}).get("type", "vae") == "vae":
            args["vae"] = released["vae"]
    args["id_encoder"] = {k: v for k, v in (args.get("id_encoder") or {}).items() if k != "weights"}
    return {**args, **overrides}


def optimizer_callable(config: dict[str, Any]) -> Callable[..., torch.optim.Optimizer]:
    """The optimizer a config trains with, as ``AnyDoorModule``'s ``optimizer`` argument (LightningCLI
    builds the same from ``class_path``/``init_args``); only torch's and bitsandbytes' optimizers."""
    spec = config["model"]["init_args"].get("optimizer") or {"class_path": "torch.optim.AdamW"}
    path = str(spec.get("class_path", ""))
    if not path.startswith(OPTIMIZER_MODULES):
        raise ValueError(f"optimizer {path!r} is not one of torch.optim / bitsandbytes.optim")
    module, _, name = path.rpartition(".")
    return functools.partial(getattr(importlib.import_module(module), name), **(spec.get("init_args") or {}))


def build_module(config: Optional[dict[str, Any]] = None, device: str | torch.device = "meta", **overrides: Any):
    """The ``AnyDoorModule`` of ``config`` (default configs/anydoor.yaml) on ``device`` without weight
    files (``meta``: shapes only; another device: the module's own seeded random init)."""
    from models.anydoor_module import AnyDoorModule

    with torch.device(device):
        module = AnyDoorModule(**module_args(config or read_config(), **overrides))
    return module.to(device)  # tensors are there already; .to() is what sets LightningModule.device


def materialize(module: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """Give a meta module real (uninitialised) storage on ``device``; inside a ``FakeTensorMode`` the
    storage is fake: shapes, dtypes and sizes without memory."""
    module.to_empty(device=device)
    # LightningModule.device is whatever its .to() last set; to_empty (plain nn.Module) leaves it at
    # "meta". A .to(device) after it would set it, but on fake tensors .to() swaps every parameter and
    # fails for fake CUDA ones ("Cannot swap t1 because it has weakref associated with it"), and
    # Lightning has no public setter: so the attribute, here only, as .to() would store it.
    device = torch.device(device)
    module._device = torch.device("cuda", 0) if device.type == "cuda" and device.index is None else device  # noqa: SLF001
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
