"""The one reader of weight files: safetensors, or torch files with ``weights_only=True``.

Untrusted files stay data: a pickle is never executed. Torch zip files are memory-mapped, so a
16.8 GB Lightning checkpoint's optimizer state is never read (``anydoor convert``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

WRAPPERS = ("state_dict", "model", "teacher")  # Lightning, timm/DeiT, DINO(v2) training files


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a weight file, unwrapped from ``state_dict``/``model``/``teacher``.

    Raises ``FileNotFoundError`` or ``ValueError`` (naming the file) for a missing, unreadable or
    non-tensor file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # legacy (non-zip) file: cannot be memory-mapped, read it whole
            if "mmap" not in str(err):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling fails in many types; name the file
        raise ValueError(f"{path}: cannot be loaded with torch.load(weights_only=True): {err}") from err
    for key in WRAPPERS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: holds no state dict of tensors")
    return dict(obj)


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as data only (``weights_only=True``: a pickle's code never runs). Any
    failure is one ``ValueError`` naming the file: ``torch.load`` raises struct.error, RuntimeError,
    UnpicklingError ... for truncated, foreign or code-carrying files, with no common type."""
    import pickle

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path}: holds objects other than tensors and plain data: refused "
                         "(checkpoints are loaded as data only)") from None
    except Exception as err:  # noqa: BLE001 - see the docstring; the file's name and torch's first line are kept
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ValueError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return ckpt
