"""Uploaded files: read once, deleted from disk right after, never any file but an upload.

Gradio stores an upload under a folder named by the hash of its content, so two requests that send
the same picture (a script sending one reference with many targets, or a person using one image as
both reference and target) name the same file. Deleting it when the first request reads it would
break the second, still waiting in the queue; so the bytes of a deleted upload stay in this
process's memory for ``ttl_s`` seconds (bounded by ``max_bytes``, oldest dropped first), never on
disk. The file itself goes ``DELETE_AFTER_S`` after it is read, not at once: the page is still
showing the upload from its file while the server reads it (a file deleted under a running download
makes the web server log a traceback).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

MEMORY_BYTES = 256 << 20
DELETE_AFTER_S = 3.0


def uploaded_path(payload: Any, upload_root: str | Path) -> Path:
    """The file of an upload the page sent (a Gradio file record), only if it lies inside this
    server's own upload folder: uploads are deleted once read, so nothing else may be named."""
    path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)
    if not path:
        raise ValueError("the upload carries no file")
    resolved, root = Path(path).resolve(), Path(upload_root).resolve()
    if not resolved.is_relative_to(root):
        raise ValueError("the upload is not a file of this server's upload folder")
    return resolved


class Uploads:
    def __init__(self, root: str | Path, ttl_s: float, max_bytes: int = MEMORY_BYTES,
                 delete_after_s: float = DELETE_AFTER_S) -> None:
        self.root = Path(root)
        self.delete_after_s = delete_after_s
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._memory: OrderedDict[Path, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, payload: Any) -> tuple[bytes, str]:
        """(the upload's bytes, its original file name); the file is deleted ``delete_after_s`` later."""
        path = uploaded_path(payload, self.root)
        name = (payload.get("orig_name") if isinstance(payload, dict) else None) or path.name
        with self._lock:
            now = time.monotonic()
            for key in [k for k, (t, _) in self._memory.items() if now - t > self.ttl_s]:
                del self._memory[key]
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                if path not in self._memory:
                    raise ValueError(f"{name}: the upload is no longer on the server (uploads are deleted once "
                                     "read): send it again") from None
                data = self._memory[path][1]
            else:
                if self.delete_after_s > 0:
                    timer = threading.Timer(self.delete_after_s, _delete, (path,))
                    timer.daemon = True
                    timer.start()
                else:
                    _delete(path)
            self._memory[path] = (now, data)
            self._memory.move_to_end(path)
            while sum(len(d) for _, d in self._memory.values()) > self.max_bytes and len(self._memory) > 1:
                self._memory.popitem(last=False)
        return data, name


def _delete(path: Path) -> None:
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()  # Gradio's per-upload folder, when nothing else is in it
    except OSError:
        pass
