"""Safe reading of weight files (safetensors, or torch files with ``weights_only=True``)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a safetensors or torch file safely, unwrapping ``state_dict``/``model``/``teacher``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors come in many types; name the file
            raise ValueError(f"{path}: not a readable weights-only torch file ({err})") from err
    for key in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return state
