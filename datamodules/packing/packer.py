"""Pack a source reader's items into WebDataset tar shards, in parallel, resumably.

Items are chunked into shards deterministically (``items_per_shard`` consecutive items), so a
shard's content depends only on its items. Each shard is written under a temporary name and renamed
when complete, and its record (counts, report items, input digests) goes to the state folder after
the rename; a re-run keeps every shard whose record still matches its input (``state.py``), so a
killed or interrupted run resumes to the very shards an uninterrupted run writes. The manifest and
the report are rebuilt from all records, so several sources packed into one output share them.

Output: a local folder, or any URL webdataset writes to (``pipe:CMD``, ``s3://...``) as a template
with ``{name}`` for the file name, e.g. ``'pipe:aws s3 cp - s3://bucket/anydoor/{name}'``. Remote
shards cannot be renamed, so there the record (kept in a local ``state_dir``) is the completion mark.

Nothing is written before the source has been read and checked (``reader.items()``).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from concurrent.futures import as_completed
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from datamodules.components.shard_format import encode_sample
from datamodules.packing.state import (FORMAT, Destination, Reader, build_manifest, finished_shards, forget_source,
                                       locked, options, shard_inputs, write_plan, write_record)
from datamodules.packing.stats import InputError, PackStats
from datamodules.packing.workers import worker_pool
from src.files import atomic_path

log = logging.getLogger(__name__)


class PackInterrupted(KeyboardInterrupt):
    """Ctrl-C during a pack; the message says what is finished and how to resume."""


@dataclass(frozen=True)
class ShardTask:
    name: str
    items: list[Any]


def plan(reader: Reader, items_per_shard: int) -> list[ShardTask]:
    items = reader.items()
    width = max(6, len(str(len(items) // max(items_per_shard, 1))))
    return [
        ShardTask(f"{reader.name}-{i // items_per_shard:0{width}d}.tar", items[i : i + items_per_shard])
        for i in range(0, len(items), items_per_shard)
    ]


def write_shard(reader: Reader, task: ShardTask, dest: Destination, max_side: int | None) -> dict:
    """Write one shard (temporary name, then rename) and then its record; returns the record."""
    import webdataset as wds

    stats = PackStats(source=reader.name)
    inputs = shard_inputs(reader, task.items)  # taken before reading: a file changed meanwhile shows at the next resume
    n = 0
    target = dest.url(task.name)
    with atomic_path(target) if dest.folder is not None else nullcontext(target) as path:
        with wds.TarWriter(str(path), encoder=False, mtime=0) as sink:
            for item in task.items:
                try:
                    for obj in reader.read(item, stats):
                        sink.write(encode_sample(obj, max_side=max_side))
                        stats.samples[f"{obj.source}/{obj.kind}"] += 1
                        n += 1
                except Exception as e:  # noqa: BLE001 - one unreadable item must not end a long pack
                    detail = f"{type(e).__name__}: {e}"[:200]
                    log.warning("%s item %r: %s\n%s", reader.name, item, detail, traceback.format_exc(limit=3))
                    stats.reject("reader_error", detail=detail, **reader.ids(item))
    # the shard's name, relative to the manifest: remote write URLs (pipe: commands) are not read URLs
    record = {"shard": task.name, "url": task.name, "source": reader.name, "samples": n, "items": len(task.items),
              "inputs": inputs, "counts": stats.counts(), "report": stats.report}
    write_record(dest, record)
    return record


def _run(reader: Reader, todo: list[ShardTask], dest: Destination, max_side: int | None, workers: int,
         done: Callable[[dict], None]) -> None:
    if workers <= 1 or len(todo) <= 1:
        for task in todo:
            done(write_shard(reader, task, dest, max_side))
        return
    import webdataset  # noqa: F401 - imported once before the fork, not once per worker

    with worker_pool(min(workers, len(todo))) as pool:
        futures = [pool.submit(write_shard, reader, task, dest, max_side) for task in todo]
        for future in as_completed(futures):
            done(future.result())


def pack(
    reader: Reader,
    out: str,
    *,
    items_per_shard: int = 16,
    workers: int = 1,
    max_side: int | None = None,
    state_dir: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    allow_empty: bool = False,
) -> dict:
    """Pack ``reader`` into ``out``; returns the manifest. Finished shards of an earlier run with the
    same settings and input are kept; other ones stop the pack (``InputError``) unless ``overwrite``."""
    from tqdm import tqdm

    dest = Destination.parse(out, state_dir)
    tasks = plan(reader, items_per_shard)  # reads and checks the source: nothing is written before
    if not tasks and not allow_empty:
        raise InputError(f"nothing to pack for {reader.name!r}: no {reader.describe()} (--allow-empty accepts an empty source)")
    fingerprint = {"format": FORMAT, "items": sum(len(t.items) for t in tasks),
                   "options": options(reader, items_per_shard=items_per_shard, max_side=max_side)}
    with locked(dest):
        if overwrite:
            forget_source(dest, reader.name)
        done = finished_shards(dest, reader, tasks, fingerprint)
        write_plan(dest, reader.name, fingerprint)
        todo = [t for t in tasks if t.name not in done]
        if done:
            log.info("%s: %d of %d shards already done, resuming", reader.name, len(done), len(tasks))
        bar = tqdm(total=len(todo), desc=f"pack {reader.name}", unit="shard", disable=not progress)
        samples = [0]

        def finished(record: dict) -> None:
            samples[0] += record["samples"]
            bar.update()
            bar.set_postfix(samples=samples[0])

        try:
            _run(reader, todo, dest, max_side, workers, finished)
        except KeyboardInterrupt:  # the workers are stopped; count the records, as workers may finish unseen
            finished_now = len(dest.records(reader.name))
            raise PackInterrupted(f"interrupted: {finished_now} of {len(tasks)} shards of {reader.name!r} are finished in "
                                  f"{dest.where}; run the same command again to resume") from None
        finally:
            bar.close()
        return build_manifest(dest)
