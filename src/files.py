"""Atomic writes: a file or folder appears whole under its final name, or not at all.

Everything is written to a temporary name *in the destination's own folder* (never the system temp
folder, which is often another filesystem on clusters: a rename across filesystems is a copy, and a
kill during the copy leaves a truncated file), flushed to disk, then renamed over the destination
with ``os.replace``. A failed or interrupted write removes its temporary and leaves any previous
file untouched.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_MARK = ".tmp-"  # temporaries are ``<folder>/.<name>.tmp-<hex>``; stale ones can be recognised and removed


def temporary_sibling(path: str | Path) -> Path:
    """A fresh name next to ``path`` (same folder, so the final rename never crosses filesystems)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file name next to ``path``; on success it replaces ``path`` atomically.

    For writers that want a file name (``torch.save``, safetensors, PIL). ``overwrite=False`` raises
    ``FileExistsError`` before anything is written when ``path`` exists.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"the writer produced no file for {path}")
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | Path, data: bytes | str, *, overwrite: bool = True) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


@contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it takes ``path``'s place.

    A previous folder is moved aside first and deleted only after the new one is in place, so an
    interruption leaves either the old or the new folder complete under ``path`` (at worst the old
    one under its aside name, which the next successful write removes).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync_file(file)
        aside = path.with_name(f".{path.name}.old")
        if aside.exists():
            shutil.rmtree(aside)
        if path.exists():
            os.replace(path, aside)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if aside.exists():
            shutil.rmtree(aside)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
