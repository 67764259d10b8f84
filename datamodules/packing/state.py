"""What a pack leaves beside its shards, and the rules for resuming from it.

The state folder (``OUT/.parts`` by default) holds, per source, a *plan* (``<source>.plan``: the
tool's format version, every option that changes the output, the item count) and one *record* per
finished shard (``<source>-NNNNNN.json``: its counts, its report items, and a digest per item of
what the item was read from: the item itself, e.g. its COCO annotations, and its files' names,
sizes and modification times). A re-run resumes only when the plan is equal and every finished
shard's digests still match the files; otherwise it stops and says what changed, so old and new data
are never mixed in one output. Every state file is written atomically (``src.files``), an unreadable
one is named with its fix, and a lock file keeps two packs out of one folder.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from datamodules.components.shard_format import JPEG_QUALITY
from datamodules.packing.stats import REASONS, InputError, PackStats
from src.files import TMP_MARK, atomic_path, atomic_write

log = logging.getLogger(__name__)
FORMAT = "anydoor-shards/2"  # bump when the same options and input would give other shards or records
MANIFEST = "manifest.json"
REPORT = "report.jsonl"
LOCK = "lock"
START_OVER = "start over with --overwrite (or pack into a new --out)"


class Reader(Protocol):
    """A source reader (``datamodules/packing/sources``)."""

    name: str
    root: str  # what input paths are named relative to in the fingerprint

    def describe(self) -> str: ...  # what an empty source lacks, e.g. "video folders in /data/JPEGImages"

    def items(self) -> list[Any]: ...  # small picklable work items, deterministic order; raises InputError

    def ids(self, item: Any) -> dict[str, Any]: ...  # the report identifiers of one item, e.g. {"video": "v1"}

    def inputs(self, item: Any) -> list[Path]: ...  # the files an item is read from

    def read(self, item: Any, stats: PackStats) -> Iterator: ...  # its ObjectSamples; rejections to stats


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
            if folder.exists() and not folder.is_dir():
                raise InputError(f"{folder}: --out is a file, not a folder")
            return cls(folder, None, Path(state_dir) if state_dir else folder / ".parts")
        template = out if "{name}" in out else (None if out.startswith("pipe:") else out.rstrip("/") + "/{name}")
        if template is None:
            raise InputError(f"--out {out!r}: a pipe: destination needs a {{name}} placeholder for the file name")
        if not state_dir:
            raise InputError(f"--out {out!r} is remote: give --state-dir, a local folder that records finished shards")
        return cls(None, template, Path(state_dir))

    def url(self, name: str) -> str:
        return str(self.folder / name) if self.folder is not None else self.template.format(name=name)

    @property
    def where(self) -> str:
        return str(self.folder) if self.folder is not None else str(self.state)

    def plan_path(self, source: str) -> Path:
        return self.state / f"{source}.plan"

    def record_path(self, shard: str) -> Path:
        return self.state / (shard.removesuffix(".tar") + ".json")

    def records(self, source: str | None = None) -> list[Path]:
        """Shard records (of one source, or all), in shard order."""
        pattern = re.compile((re.escape(source) if source is not None else ".+") + r"-\d+\.json")
        return sorted(p for p in self.state.glob("*.json") if pattern.fullmatch(p.name))


REPACK_SHARD = f"delete it to pack that shard again, or {START_OVER}"


def read_state(path: Path, fix: str = START_OVER) -> dict:
    """A state file as a dict; an unreadable or truncated one stops the pack with its name and ``fix``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: unreadable pack state ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: unreadable pack state (not a JSON object); {fix}")
    return data


# ---- the fingerprint ----

def options(reader: Reader, **pack_options: Any) -> dict[str, Any]:
    """Every setting that changes a source's shards: the reader's fields (path fields excluded: the
    listing stands for them), its object rules, and the packer's own options."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(reader):
        if f.metadata.get("path"):
            continue
        value = getattr(reader, f.name)
        out.update(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else {f.name: value})
    out.update(pack_options, jpeg_quality=JPEG_QUALITY)
    return json.loads(json.dumps(out))  # tuples as lists, as they come back from the plan file


def item_label(ids: dict[str, Any]) -> str:
    return " ".join(f"{k} {v}" for k, v in ids.items())


def item_digest(reader: Reader, item: Any) -> str:
    """The item itself plus, per input file, its name (relative to the reader's root), size and mtime."""
    h = hashlib.sha1(json.dumps(item, sort_keys=True, default=str).encode())
    for path in reader.inputs(item):
        name = os.path.relpath(path, reader.root)
        try:
            st = path.stat()
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{name}\0missing\n".encode())
    return h.hexdigest()[:20]


def shard_inputs(reader: Reader, items: list[Any]) -> dict[str, str]:
    return {item_label(reader.ids(item)): item_digest(reader, item) for item in items}


def _option_changes(old: dict, new: dict) -> list[str]:
    return [f"--{k.replace('_', '-')} {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _input_changes(old: dict[str, str], new: dict[str, str], shard: str) -> list[str]:
    changes = [f"{k} is new (in {shard})" for k in new if k not in old]
    changes += [f"{k} changed (in {shard})" for k in new if k in old and old[k] != new[k]]
    return changes + [f"{k} is gone (from {shard})" for k in old if k not in new]


def finished_shards(dest: Destination, reader: Reader, tasks: list, plan: dict) -> set[str]:
    """The shards of an earlier run that this one may keep; raises ``InputError`` when the earlier run
    was made from other settings or other input (naming what changed)."""
    source = reader.name
    records = {p: read_state(p, REPACK_SHARD) for p in dest.records(source)}
    plan_path = dest.plan_path(source)
    if not plan_path.is_file():
        if records:
            raise InputError(f"{dest.where}: holds {len(records)} finished shards of {source!r} but no {plan_path.name} saying how "
                             f"they were made; {START_OVER}")
        return set()
    old = read_state(plan_path)
    if old.get("format") != FORMAT:
        raise InputError(f"{dest.where}: {source!r} was packed here by another version of anydoor shards "
                         f"({old.get('format', 'anydoor-shards/1')}; this is {FORMAT}); {START_OVER}")
    changes = _option_changes(old.get("options", {}), plan["options"])
    if old.get("items") != plan["items"]:
        changes.append(f"the source has {plan['items']} items now, {old.get('items')} when this pack began")
    if changes:
        raise InputError(f"{dest.where}: {source!r} was packed here with other settings or input ({'; '.join(changes)}). "
                         f"Resuming would mix old and new data: use the same settings, or {START_OVER}")
    by_name = {t.name: t for t in tasks}
    done, changed = set(), []
    for path, record in records.items():
        task = by_name.get(record.get("shard"))
        if task is None:
            changed.append(f"{path.name} records a shard this plan does not have")
            continue
        now = shard_inputs(reader, task.items)
        if now != record.get("inputs"):
            changed += _input_changes(record.get("inputs") or {}, now, task.name)
        elif dest.folder is not None and not (dest.folder / task.name).is_file():
            log.warning("%s: finished earlier but missing now; packing it again", task.name)
        else:
            done.add(task.name)
    if changed:
        more = f", and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise InputError(f"{dest.where}: the finished shards of {source!r} were packed from other input files: "
                         f"{'; '.join(changed[:3])}{more} (files added, removed, resized or modified, or annotations edited). "
                         f"Resuming would mix old and new data: {START_OVER}")
    return done


# ---- the folders ----

@contextmanager
def locked(dest: Destination) -> Iterator[None]:
    """Hold ``<state>/lock`` while packing: a second pack into the same folder stops with a message
    (workers inherit the lock, so even a stray worker of a killed run keeps others out)."""
    dest.state.mkdir(parents=True, exist_ok=True)
    if dest.folder is not None:
        dest.folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(dest.state / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{dest.where}: another anydoor shards is writing here (it holds {dest.state / LOCK}); "
                             "wait for it to finish or stop it") from None
        except OSError as e:  # a filesystem without locks: pack anyway, as before locks existed
            log.warning("%s: cannot lock (%s); make sure no other anydoor shards writes here", dest.state / LOCK, e)
        for folder in {dest.state, dest.folder} - {None}:  # temporaries of killed runs: nobody else writes here now
            for stale in folder.glob(f".*{TMP_MARK}*"):
                stale.unlink()
        yield
    finally:
        os.close(fd)


def forget_source(dest: Destination, source: str) -> None:
    """``--overwrite``: remove a source's plan, records and (local) shards, so it is packed from scratch."""
    shard = re.compile(re.escape(source) + r"-\d+\.tar")
    for record in dest.records(source):
        record.unlink()
    dest.plan_path(source).unlink(missing_ok=True)
    if dest.folder is not None:
        for path in dest.folder.glob("*.tar"):
            if shard.fullmatch(path.name):
                path.unlink()


def write_plan(dest: Destination, source: str, plan: dict) -> None:
    atomic_write(dest.plan_path(source), json.dumps(plan, indent=1))


def write_record(dest: Destination, record: dict) -> None:
    atomic_write(dest.record_path(record["shard"]), json.dumps(record))


def build_manifest(dest: Destination) -> dict:
    """Aggregate every finished shard's record (all sources in the folder) into the manifest and the
    report (one JSON line per rejected item, in shard order), both written atomically."""
    total = PackStats()
    sources: dict[str, dict] = {}
    shards, known, n_items = [], set(), 0
    where = dest.folder if dest.folder is not None else dest.state
    with atomic_path(where / REPORT) as tmp, tmp.open("w") as report:
        for path in dest.records():
            r = read_state(path, REPACK_SHARD)
            try:
                source, url, samples = r["source"], r["url"], int(r["samples"])
                total.merge_counts(r["counts"])
                for item in r["report"]:
                    report.write(json.dumps(item) + "\n")
            except (KeyError, TypeError, ValueError) as e:
                raise InputError(f"{path}: not a shard record ({type(e).__name__}: {e}); {REPACK_SHARD}") from None
            n_items += len(r["report"])
            s = sources.setdefault(source, {"samples": 0, "shards": []})
            s["samples"] += samples
            s["shards"].append(url)
            shards.append({"url": url, "source": source, "samples": samples})
            known.add(r["shard"])
    manifest = {
        "format": FORMAT,
        "total_samples": sum(s["samples"] for s in sources.values()),
        "sources": sources,
        **total.counts(),
        "report": {"file": REPORT, "items": n_items},
        "shards": shards,
    }
    if dest.folder is not None:
        unknown = sorted(p.name for p in dest.folder.glob("*.tar") if p.name not in known)
        if unknown:
            manifest["unknown_files"] = unknown
    atomic_write(where / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def summary(manifest: dict, report_path: Path, examples: int = 3) -> list[str]:
    """Console lines: rejection counts by reason, each with what it means and its first few items."""
    lines = []
    if manifest["converted"]:
        lines.append("  converted to RGB: " + ", ".join(f"{k} {v}" for k, v in manifest["converted"].items()))
    if manifest["rejected"]:
        lines.append(f"  rejected: {sum(manifest['rejected'].values())} items, every one listed in {report_path}")
        first: dict[str, list[dict]] = {reason: [] for reason in manifest["rejected"]}
        wanted = {reason: min(n, examples) for reason, n in manifest["rejected"].items()}
        with open(report_path) as f:
            for line in f:  # a big report is read only as far as the examples reach
                item = json.loads(line)
                if len(first.setdefault(item["reason"], [])) < wanted.get(item["reason"], 0):
                    first[item["reason"]].append(item)
                    if all(len(first[r]) == n for r, n in wanted.items()):
                        break
        for reason, n in sorted(manifest["rejected"].items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {reason} {n}: {REASONS.get(reason, ('', '?'))[1]}")
            for item in first[reason]:
                where = " ".join(f"{k}={v}" for k, v in item.items() if k not in ("reason", "detail"))
                lines.append(f"      {where}" + (f" ({item['detail']})" if "detail" in item else ""))
            if n > len(first[reason]):
                lines.append(f"      ... {n - len(first[reason])} more")
    if manifest.get("unknown_files"):
        names = manifest["unknown_files"]
        lines.append(f"  warning: {len(names)} .tar files in the output were not made by this pack and are not in the "
                     f"manifest: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
    return lines
