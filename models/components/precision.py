"""Inference precision: ``fp32`` or ``bf16`` (autocast), and whether this machine runs bf16 natively.

``bf16`` is ``torch.autocast(device, bfloat16)`` around the ID encoder, the guided steps and the
first-stage decode: matrix products, convolutions and attention run in bf16 and hand bf16 on (CPU
autocast keeps GroupNorm/LayerNorm in bf16 too, accumulating in fp32), the guidance combination,
the sampler and the latents stay fp32, and the weights stay fp32 (a model folder loads unchanged,
the same pipeline can switch per call). On CPU this pays only where bf16 dot products are native
(``avx512_bf16`` or AMX); without them oneDNN emulates bf16 and is slower than fp32, so the default
is bf16 only there (docs/inference.md, "Speed and memory", has the measured speed and grey-level
differences).
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from typing import ContextManager, Iterator

import torch

PRECISIONS = ("fp32", "bf16")
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 dot-product instructions (Linux ``/proc/cpuinfo`` flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def default_precision(device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
    """``bf16`` for fp32 weights on a CPU with native bf16, else ``fp32`` (a GPU run picks its dtype
    instead; weights already stored in low precision run as they are). The CLI and the demo use it."""
    device = torch.device(device)
    return "bf16" if device.type == "cpu" and dtype == torch.float32 and cpu_has_native_bf16() else "fp32"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast(precision: str, device: torch.device | str) -> ContextManager:
    """The context one part runs in: nothing for ``fp32``, bf16 autocast for ``bf16``."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


@contextlib.contextmanager
def cached_weight_casts(*modules: torch.nn.Module) -> Iterator[None]:
    """Let autocast cast each weight of ``modules`` once for the whole context, not once per use.

    Autocast keeps its low-precision copy of a weight for the context's lifetime only when the weight
    requires grad; frozen weights (the ViT, the U-Net encoder of a training export) are cast again at
    every use, which cost a full-size guided step 5.5 of its 18.8 CPU seconds (1 thread). So they
    require grad inside the context; callers run it under ``torch.no_grad`` (no graph is built), and
    the flags are restored afterwards. Costs the bf16 copies' memory while it lasts."""
    frozen = [p for m in modules for p in m.parameters() if not p.requires_grad]
    for param in frozen:
        param.requires_grad_(True)
    try:
        yield
    finally:
        for param in frozen:
            param.requires_grad_(False)


def autocast_state(device: torch.device | str) -> tuple[bool, torch.dtype]:
    """(enabled, dtype) of autocast on ``device`` now: part of what cached activations depend on."""
    kind = torch.device(device).type
    return torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)
