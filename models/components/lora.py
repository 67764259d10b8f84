"""LoRA (peft) on the denoiser's trainable layers, and plain copies of the parts for export.

Full fine-tuning trains the ControlNet (except its silenced ``conv_in``) and the U-Net decoder. With
LoRA, every ``Linear``/``Conv2d`` among those gets a peft adapter (``lora_A``/``lora_B``, B zero at the
start, so training starts from the same model) and its base weights freeze. The ControlNet parts SD has
no weights for (the collage embedding and the zero convs, ``NEW_CONTROLNET_PARTS``) have nothing to
adapt: they train whole. Checkpoints then hold the adapters and those parts (and the projector when
trained), a few percent of the full set.

Export folds the adapters into the base weights (``plain_copy``): the model folder is an ordinary one,
loaded by ``AnyDoorPipeline.from_pretrained`` without peft. The fold is computed in fp32 on the CPU
from the adapter's own delta (peft's ``get_delta_weight``) into a fresh copy, so the live training
module is never modified (no merge/unmerge round trip with its rounding).
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

import torch
from torch import nn

NEW_CONTROLNET_PARTS = ("controlnet.controlnet_cond_embedding", "controlnet.controlnet_down_blocks",
                        "controlnet.controlnet_mid_block")
LORA_KEYS = ("rank", "alpha", "dropout", "targets")
ADAPTER_KEY = ".lora_"  # peft's adapter parameters: <layer>.lora_A.default.weight, <layer>.lora_B...
BASE_KEY = ".base_layer."  # the wrapped layer's own weights: <layer>.base_layer.weight


def lora_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``lora`` option checked: ``rank`` (> 0), ``alpha`` (default: rank, i.e. scale 1), ``dropout``,
    ``targets`` (layer-name endings such as ``to_q``; default: every Linear/Conv2d that trains)."""
    unknown = sorted(set(spec) - set(LORA_KEYS))
    if unknown:
        raise ValueError(f"lora: unknown keys {unknown} (expected some of {list(LORA_KEYS)})")
    rank = spec.get("rank")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"lora: rank must be a positive integer, got {rank!r}")
    targets = spec.get("targets")
    if targets is not None and (isinstance(targets, str) or not all(isinstance(t, str) for t in targets)):
        raise ValueError(f"lora: targets must be a list of layer-name endings (e.g. [to_q, to_k]), got {targets!r}")
    return {"rank": rank, "alpha": float(spec.get("alpha") or rank), "dropout": float(spec.get("dropout") or 0.0),
            "targets": list(targets) if targets is not None else None}


def _is_new_part(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in NEW_CONTROLNET_PARTS)


def lora_layer_names(denoiser: nn.Module, targets: Optional[Sequence[str]] = None) -> list[str]:
    """Layers that get adapters: trainable Linear/Conv2d outside the new ControlNet parts, narrowed to
    names ending in one of ``targets`` when given."""
    names = []
    for name, sub in denoiser.named_modules():
        if not isinstance(sub, (nn.Linear, nn.Conv2d)) or not sub.weight.requires_grad or _is_new_part(name):
            continue
        if targets is None or any(name == t or name.endswith("." + t) for t in targets):
            names.append(name)
    return names


def add_lora(denoiser: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
             targets: Optional[Sequence[str]] = None) -> list[str]:
    """Inject peft LoRA adapters into ``denoiser`` (in place); afterwards the adapters and the new
    ControlNet parts are what trains there. Returns the adapted layer names."""
    from peft import LoraConfig, inject_adapter_in_model

    names = lora_layer_names(denoiser, targets)
    if not names:
        raise ValueError(f"lora: no trainable Linear/Conv2d layer matches targets {list(targets or [])}")
    new_parts = [p for n, p in denoiser.named_parameters() if p.requires_grad and _is_new_part(n)]
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names)
    inject_adapter_in_model(config, denoiser)  # freezes everything but the adapters
    for p in new_parts:
        p.requires_grad_(True)
    return names


def _peft_module(name: str) -> Any:
    """A peft module if peft was imported (adapters exist only then), else None: importing peft takes
    seconds (it imports transformers), which an export without LoRA need not spend."""
    return sys.modules.get(name)


def has_adapters(model: nn.Module) -> bool:
    tuners = _peft_module("peft.tuners.tuners_utils")
    return tuners is not None and any(isinstance(m, tuners.BaseTunerLayer) for m in model.modules())


def merged_state_dict(model: nn.Module, dtype: Optional[torch.dtype] = torch.float32,
                      device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """``model``'s state dict as the model without adapters has it: each adapter's delta added to its
    base weight, adapter keys dropped, ``base_layer.`` removed; floating tensors in ``dtype`` on
    ``device`` (the fold itself in fp32)."""
    lora = _peft_module("peft.tuners.lora")

    def plain(t: torch.Tensor, to: Optional[torch.dtype]) -> torch.Tensor:
        return t.detach().to(device=device, dtype=to if t.is_floating_point() else None, copy=True)

    state = {k.replace(BASE_KEY, "."): plain(v, dtype) for k, v in model.state_dict().items() if ADAPTER_KEY not in k}
    for name, layer in model.named_modules() if lora is not None else ():
        if not isinstance(layer, lora.LoraLayer):
            continue
        key = f"{name}.weight"
        folded = plain(state[key], torch.float32)
        for adapter in layer.active_adapters:
            folded += plain(layer.get_delta_weight(adapter), torch.float32)
        state[key] = folded.to(dtype) if dtype is not None else folded.to(state[key].dtype)
    return state


def plain_copy(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A copy of a diffusers ``ModelMixin``/``ConfigMixin`` part on the CPU in ``dtype``, adapters folded
    in (``merged_state_dict``): built from its config on the meta device and filled by assignment (no
    random init, one copy of the weights), non-persistent buffers copied over."""
    with torch.device("meta"):
        copy = type(model).from_config(model.config)
    missing, unexpected = copy.load_state_dict(merged_state_dict(model, dtype), strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"{type(model).__name__}: plain copy does not fit: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    for name, buf in model.named_buffers():
        owner, _, leaf = name.rpartition(".")
        sub = copy.get_submodule(owner)
        if getattr(sub, leaf).is_meta:
            sub.register_buffer(leaf, buf.detach().to("cpu", dtype if buf.is_floating_point() else None),
                                persistent=False)
    return copy.eval()


def needs_plain_copy(model: nn.Module, dtype: torch.dtype = torch.float32) -> bool:
    """Whether ``model`` differs from a plain ``dtype`` model: adapters in it, or weights in another dtype."""
    return has_adapters(model) or any(p.is_floating_point() and p.dtype != dtype for p in model.parameters())


def cast_frozen(module: nn.Module, dtype: torch.dtype) -> int:
    """Store every frozen floating parameter of ``module`` in ``dtype`` (in place: the same Parameter
    objects, new storage); trainable ones keep theirs (the fp32 master weights). Returns how many
    parameters it cast."""
    cast = 0
    for p in module.parameters():
        if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
            cast += 1
    return cast
