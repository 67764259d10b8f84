"""Exponential moving average of a set of named parameters (kept in fp32, swapped in for sampling)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class ParameterEMA:
    def __init__(self, params: dict[str, nn.Parameter], decay: float, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.params = params
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = {k: p.detach().float().clone() for k, p in params.items()}

    @torch.no_grad()
    def update(self) -> None:
        self.num_updates += 1
        # Warm-up (1 + n) / (10 + n): early EMA is not dominated by the random init.
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates)) if self.warmup else self.decay
        for k, p in self.params.items():
            self.shadow[k].lerp_(p.detach().float(), 1.0 - decay)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Temporarily load the EMA weights into the live parameters."""
        backup = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.shadow[k].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(backup[k])

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates, "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        self.num_updates = int(state["num_updates"])
        for k in self.shadow:
            self.shadow[k] = state["shadow"][k].to(self.shadow[k].device, torch.float32)

    def to(self, device: torch.device) -> None:
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
