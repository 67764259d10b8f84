"""Resolve the datamodule's shard arguments into ``{source: [url, ...]}``.

Accepted: a folder written by ``anydoor shards`` (its ``manifest.json`` names the sources), a
``manifest.json`` path, a list of folders/URLs/brace patterns (``name-{000000..000009}.tar``; the
source is the file name before its last ``-``), or a dict ``source -> list`` / ``source -> str``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import webdataset as wds


def _source_of(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"\.tar$", "", name)
    return name.rsplit("-", 1)[0] if "-" in name else name


def _from_manifest(path: Path) -> tuple[dict[str, list[str]], dict[str, int]]:
    manifest = json.loads(path.read_text())
    base = path.parent
    shards: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for source, info in manifest["sources"].items():
        shards[source] = [u if re.match(r"^[a-z]+:", u) or u.startswith("/") else str(base / u) for u in info["shards"]]
        counts[source] = int(info["samples"])
    return shards, counts


def resolve(spec: str | list | dict | None) -> tuple[dict[str, list[str]], dict[str, int]]:
    """``({source: urls}, {source: sample count})``; counts are known only from manifests."""
    shards: dict[str, list[str]] = {}
    counts: dict[str, int] = {}

    def add(source: str, urls: list[str], n: int | None = None) -> None:
        shards.setdefault(source, []).extend(urls)
        if n is not None:
            counts[source] = counts.get(source, 0) + n

    if spec is None:
        return shards, counts
    if isinstance(spec, dict):
        for source, urls in spec.items():
            for u in [urls] if isinstance(urls, str) else list(urls):
                sub, _ = resolve(u)
                add(source, [x for v in sub.values() for x in v])
        return shards, counts
    for item in [spec] if isinstance(spec, (str, Path)) else list(spec):
        item = str(item)
        p = Path(item)
        if p.is_dir() and (p / "manifest.json").is_file():
            item = str(p / "manifest.json")
            p = Path(item)
        if p.name == "manifest.json" and p.is_file():
            sub, n = _from_manifest(p)
            for source, urls in sub.items():
                add(source, urls, n[source])
        elif p.is_dir():
            tars = sorted(str(t) for t in p.glob("*.tar"))
            if not tars:
                raise FileNotFoundError(f"{p}: no manifest.json and no .tar shards")
            for t in tars:
                add(_source_of(t), [t])
        else:
            for u in wds.shardlists.expand_urls(item):
                add(_source_of(u), [u])
    for source, urls in shards.items():
        if not urls:
            raise ValueError(f"source {source!r} has no shards")
    return shards, counts
