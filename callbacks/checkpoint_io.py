"""How every training checkpoint is written and read: atomically next to its destination, and as data only.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives in the
system temp folder; when the outputs are on another filesystem (NFS/Lustre beside a local ``/tmp``) the
final move is a copy, and a kill during it leaves a truncated ``last.ckpt`` in place of the good one.
It also loads ``http(s)://`` checkpoints with ``weights_only=False`` (the pickle's code runs) through
``torch.hub``, whose cache is keyed by the file *name*: a second URL ending in ``last.ckpt`` silently
returns the first download. ``SafeCheckpointIO`` fixes the three: ``src.files.atomic_path`` (a temporary
in the same folder, fsync, ``os.replace``; a temporary left by a killed writer goes at the next save of
that file), ``weights_only=True`` for every path whatever the caller asks, and remote files downloaded
afresh into a temporary folder that is deleted after loading.
"""

from __future__ import annotations

import glob
import pickle
import re
import tempfile
import urllib.error
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.cloud_io import _load as fsspec_load
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.fabric.utilities.types import _PATH

from src.files import TMP_MARK, atomic_path


class CheckpointLoadError(ValueError):
    """A checkpoint that cannot be (or must not be) loaded; the message is one line naming it."""


def is_http_url(path: _PATH) -> bool:
    return re.match(r"^https?://", str(path), flags=re.IGNORECASE) is not None


def load_error(path: _PATH, err: BaseException) -> CheckpointLoadError:
    """One line for a failed weights-only load: refused (code inside) or unreadable (truncated, not torch)."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"Unsupported operand (\d+)", text)
    if isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in text:
        what = f"it references {found.group(1)}" if found else "it holds more than tensors and plain values"
        return CheckpointLoadError(
            f"refused to load {path}: {what}, and unpickling it could run code; only weights-only "
            "checkpoints (tensors and plain values) are loaded")
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return CheckpointLoadError(f"cannot read checkpoint {path}: {first} (truncated or not a torch checkpoint?)")


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic local writes and weights-only loading of every path.

    ``saved`` maps each local file this process wrote to the ``global_step`` inside it (resumable
    checkpoints only), so ``callbacks.interrupt.StopOnSignal`` can tell whether the final step is on disk.
    """

    def __init__(self) -> None:
        super().__init__()
        self.saved: dict[str, int] = {}

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote stores: fsspec's transaction
        path = Path(path)
        for stale in path.parent.glob(f".{glob.escape(path.name)}{TMP_MARK}*"):  # left by a writer that was SIGKILLed
            stale.unlink(missing_ok=True)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
        if "optimizer_states" in checkpoint:
            self.saved[str(Path(path))] = int(checkpoint.get("global_step", -1))

    def remove_checkpoint(self, path: _PATH) -> None:
        super().remove_checkpoint(path)
        self.saved.pop(str(Path(path)), None)

    def load_checkpoint(self, path: _PATH, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        """Load ``path`` (local, fsspec URL or ``http(s)://``) with ``weights_only=True``, always."""
        if is_http_url(path):
            return load_url(str(path), map_location)
        if not Path(path).exists() and _is_local_file_protocol(path):
            raise CheckpointLoadError(f"checkpoint not found: {path}")
        try:
            return fsspec_load(path, map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
            raise load_error(path, err) from None


def load_url(url: str, map_location: Any = None) -> dict[str, Any]:
    """Download ``url`` to a fresh temporary folder, load it weights-only, delete it: no cache, so two
    URLs never share a download and a changed file is never served stale."""
    with tempfile.TemporaryDirectory(prefix="anydoor-ckpt-") as folder:
        local = Path(folder) / "checkpoint.ckpt"
        try:
            torch.hub.download_url_to_file(url, str(local), progress=rank_zero_only.rank == 0)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise CheckpointLoadError(f"cannot download checkpoint {url}: {getattr(err, 'reason', err)}") from None
        try:
            return torch.load(local, map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            raise load_error(url, err) from None
