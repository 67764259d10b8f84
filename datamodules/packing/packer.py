"""Pack a source reader's items into WebDataset tar shards, in parallel, resumably.

Items are chunked into shards deterministically (``items_per_shard`` consecutive items), so a
shard's content depends only on its items. Each shard is written under a temporary name and renamed
when complete, and its counts go to ``<state>/<shard>.json`` after the rename; a re-run skips every
shard whose record exists, so a killed run resumes without losing or duplicating samples. The
manifest is rebuilt from all records in the state folder, so several sources packed into one
output share one manifest.

Output: a local folder, or any URL webdataset writes to (``pipe:CMD``, ``s3://...``) as a template
with ``{name}`` for the file name, e.g. ``'pipe:aws s3 cp - s3://bucket/anydoor/{name}'``. Remote
shards cannot be renamed, so there the record (kept in a local ``state_dir``) is the completion mark.
"""

from __future__ import annotations

import json
import logging
import os
import re
import traceback
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

from datamodules.components.shard_format import ObjectSample, encode_sample
from datamodules.packing.stats import BadInput, PackStats

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


class Reader(Protocol):
    name: str

    def items(self) -> list[Any]: ...

    def read(self, item: Any, stats: PackStats) -> Iterable[ObjectSample]: ...


@dataclass(frozen=True)
class Destination:
    """Where shards go: ``folder`` (local) or ``template`` (remote, with ``{name}``), plus the state folder."""

    folder: Path | None
    template: str | None
    state: Path

    @classmethod
    def parse(cls, out: str, state_dir: str | None = None) -> "Destination":
        remote = out.startswith("pipe:") or bool(re.match(r"^[a-z][a-z0-9+.-]*://", out)) and not out.startswith("file://")
        if not remote:
            folder = Path(out.removeprefix("file://"))
            return cls(folder, None, Path(state_dir) if state_dir else folder / ".parts")
        template = out if "{name}" in out else (None if out.startswith("pipe:") else out.rstrip("/") + "/{name}")
        if template is None:
            raise ValueError(f"--out {out!r}: a pipe: destination needs a {{name}} placeholder for the file name")
        if not state_dir:
            raise ValueError(f"--out {out!r} is remote: give --state-dir, a local folder that records finished shards")
        return cls(None, template, Path(state_dir))

    def url(self, name: str) -> str:
        return str(self.folder / name) if self.folder is not None else self.template.format(name=name)


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


def _record_path(dest: Destination, shard: str) -> Path:
    return dest.state / (shard.removesuffix(".tar") + ".json")


def write_shard(reader: Reader, task: ShardTask, dest: Destination, max_side: int | None) -> dict:
    """Write one shard (temp name, then rename) and its record; returns the record."""
    import webdataset as wds

    stats = PackStats()
    n = 0
    target = dest.url(task.name)
    tmp = str(dest.folder / f".{task.name}.tmp") if dest.folder is not None else target
    with wds.TarWriter(tmp, encoder=False, mtime=0) as sink:
        for item in task.items:
            try:
                for obj in reader.read(item, stats):
                    sink.write(encode_sample(obj, max_side=max_side))
                    stats.samples[f"{obj.source}/{obj.kind}"] += 1
                    n += 1
            except BadInput as e:
                stats.bad(e)
            except Exception as e:  # noqa: BLE001 - one unreadable item must not end a long pack
                detail = f"{type(e).__name__}: {e}"[:200]
                log.warning("%s item %r: %s\n%s", reader.name, item, detail, traceback.format_exc(limit=3))
                stats.bad(BadInput(f"{reader.name}:{item}", "reader_error", detail))
    if dest.folder is not None:
        os.replace(tmp, target)
    # the shard's name, relative to the manifest: remote write URLs (pipe: commands) are not read URLs
    record = {"shard": task.name, "url": task.name, "source": reader.name,
              "samples": n, "items": len(task.items), "stats": stats.to_dict()}
    path = _record_path(dest, task.name)
    tmp_rec = path.with_name(path.name + ".tmp")
    tmp_rec.write_text(json.dumps(record))
    os.replace(tmp_rec, path)
    return record


def _check_plan(dest: Destination, source: str, params: dict) -> None:
    """Refuse to resume with settings that would cut the items into different shards."""
    path = dest.state / f"{source}.plan"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != params:
            raise ValueError(f"{dest.folder or dest.template}: source {source!r} was packed with {old}, now {params}; "
                             f"resume with the same settings or pack into a fresh output")
    else:
        path.write_text(json.dumps(params))


def build_manifest(dest: Destination) -> dict:
    """Aggregate every finished shard's record into the manifest (and write it)."""
    records = [json.loads(p.read_text()) for p in sorted(dest.state.glob("*.json"))]
    total = PackStats()
    sources: dict[str, dict] = {}
    for r in records:
        total.merge(PackStats.from_dict(r["stats"]))
        s = sources.setdefault(r["source"], {"samples": 0, "shards": []})
        s["samples"] += r["samples"]
        s["shards"].append(r["url"])
    manifest = {
        "format": "anydoor-shards/1",
        "total_samples": sum(s["samples"] for s in sources.values()),
        "sources": sources,
        **total.to_dict(),
        "shards": [{"url": r["url"], "source": r["source"], "samples": r["samples"]} for r in records],
    }
    text = json.dumps(manifest, indent=1)
    if dest.folder is not None:
        tmp = dest.folder / (MANIFEST + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, dest.folder / MANIFEST)
    else:
        (dest.state / MANIFEST).write_text(text)  # local copy; the CLI also writes it through the template
    return manifest


def pack(
    reader: Reader,
    out: str,
    *,
    items_per_shard: int = 16,
    workers: int = 1,
    max_side: int | None = None,
    state_dir: str | None = None,
    progress: bool = True,
) -> dict:
    """Pack ``reader`` into ``out``; returns the manifest. Finished shards from earlier runs are kept."""
    from tqdm import tqdm

    dest = Destination.parse(out, state_dir)
    if dest.folder is not None:
        dest.folder.mkdir(parents=True, exist_ok=True)
    dest.state.mkdir(parents=True, exist_ok=True)
    tasks = plan(reader, items_per_shard)
    _check_plan(dest, reader.name, {"items": sum(len(t.items) for t in tasks), "items_per_shard": items_per_shard, "max_side": max_side})
    todo = [t for t in tasks if not _record_path(dest, t.name).is_file()]
    if len(todo) < len(tasks):
        log.info("%s: %d of %d shards already done, resuming", reader.name, len(tasks) - len(todo), len(tasks))
    bar = tqdm(total=len(todo), desc=f"pack {reader.name}", unit="shard", disable=not progress)
    samples = 0
    if workers <= 1:
        for t in todo:
            samples += write_shard(reader, t, dest, max_side)["samples"]
            bar.update()
            bar.set_postfix(samples=samples)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            futures = [pool.submit(write_shard, reader, t, dest, max_side) for t in todo]
            for f in as_completed(futures):
                samples += f.result()["samples"]
                bar.update()
                bar.set_postfix(samples=samples)
    bar.close()
    return build_manifest(dest)
