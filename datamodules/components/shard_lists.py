"""Resolve the datamodule's shard arguments into ``{source: [url, ...]}``.

Accepted: a folder written by ``anydoor shards`` (its ``manifest.json`` names the sources), a
``manifest.json`` path, a list of folders/URLs/brace patterns (``name-{000000..000009}.tar``; the
source is the file name before its last ``-``), or a dict ``source -> list`` / ``source -> str``.

From the command line every value arrives as text, and jsonargparse reads it as YAML: a list or
mapping holding a brace pattern (``[/d/sav-{000..009}.tar]``) is not valid YAML flow syntax, so it
arrived as one string and was brace-expanded as a single "URL". ``parse_spec`` reads such text as
the list or mapping it is written as, braces inside items kept.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Union

import webdataset as wds

# the datamodule's argument type (list and mapping first: what the text form also parses to)
ShardSpec = Union[list[str], dict[str, Union[list[str], str]], str, None]

_MAPPING = re.compile(r"""^\{\s*["']?[\w.-]+["']?\s*:(\s|\[|"|'|$)""")  # "{name: ...": not a brace pattern like "{a,b}-x.tar"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # pipe:, http:, s3:, file: ... (not a local path)


def _ws(s: str, i: int) -> int:
    while i < len(s) and s[i].isspace():
        i += 1
    return i


def _scalar(s: str, i: int, stops: str) -> tuple[str, int]:
    """A quoted string, or plain text up to a ``stops`` character outside ``{...}`` groups."""
    i = _ws(s, i)
    if i < len(s) and s[i] in "'\"":
        end = s.find(s[i], i + 1)
        if end < 0:
            raise ValueError("a quote is not closed")
        return s[i + 1:end], end + 1
    start, depth = i, 0
    while i < len(s):
        c = s[i]
        if c == "{":
            depth += 1
        elif c == "}" and depth:
            depth -= 1
        elif depth == 0 and c in stops:
            break
        i += 1
    return s[start:i].strip(), i


def _expect(s: str, i: int, chars: str) -> int:
    i = _ws(s, i)
    if i >= len(s) or s[i] not in chars:
        found = repr(s[i]) if i < len(s) else "the end"
        raise ValueError(f"expected one of {' '.join(chars)} at character {i + 1}, found {found}")
    return i


def _items(s: str, i: int) -> tuple[list[str], int]:
    """``[a, b, ...]`` starting at ``s[i] == "["``."""
    items: list[str] = []
    if s[_ws(s, i + 1):_ws(s, i + 1) + 1] == "]":
        return items, _ws(s, i + 1) + 1
    while True:
        item, i = _scalar(s, i + 1, ",]")
        if not item:
            raise ValueError(f"empty list item at character {i + 1}")
        items.append(item)
        i = _expect(s, i, ",]")
        if s[i] == "]":
            return items, i + 1


def _mapping(s: str, i: int) -> tuple[dict[str, list[str] | str], int]:
    """``{name: [a, b], other: c}`` starting at ``s[i] == "{"``."""
    out: dict[str, list[str] | str] = {}
    while True:
        key, i = _scalar(s, i + 1, ":,}")
        i = _expect(s, i, ":")
        j = _ws(s, i + 1)
        value, i = _items(s, j) if s[j:j + 1] == "[" else _scalar(s, j, ",}")
        if not key or not value:
            raise ValueError(f"a mapping entry needs a name and shards (near character {i + 1})")
        out[key] = value
        i = _expect(s, i, ",}")
        if s[i] == "}":
            return out, i + 1


def parse_spec(text: str) -> str | list[str] | dict[str, list[str] | str]:
    """Text written as a list or mapping -> that list or mapping; any other text is returned as is.

    Items may hold brace patterns and ``:`` (``pipe:``, ``http://``); quotes are optional.
    """
    s = text.strip()
    if not ((s.startswith("[") and s.endswith("]")) or (_MAPPING.match(s) and s.endswith("}"))):
        return text
    try:
        value, end = _items(s, 0) if s[0] == "[" else _mapping(s, 0)
        if s[end:].strip():
            raise ValueError(f"unexpected text after character {end}")
    except ValueError as e:
        raise ValueError(f"shard list {text!r} cannot be read: {e}") from None
    return value


def _source_of(url: str) -> str:
    """The file name before its last ``-``; in a ``pipe:`` command, that of the word naming a ``.tar``."""
    words = [w for w in url.split() if ".tar" in w]
    name = (words[-1] if words else url).rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"\.tar$", "", name)
    return name.rsplit("-", 1)[0] if "-" in name else name


def _from_manifest(path: Path) -> tuple[dict[str, list[str]], dict[str, int]]:
    manifest = json.loads(path.read_text())
    base = path.parent
    shards: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for source, info in manifest["sources"].items():
        shards[source] = [u if _SCHEME.match(u) or u.startswith("/") else str(base / u) for u in info["shards"]]
        counts[source] = int(info["samples"])
    return shards, counts


def resolve(spec: str | list | dict | None) -> tuple[dict[str, list[str]], dict[str, int]]:
    """``({source: urls}, {source: sample count})``; counts are known only from manifests.

    Local shard files that do not exist are an error here, naming them, rather than a stream that
    finds "not one sample" later.
    """
    shards: dict[str, list[str]] = {}
    counts: dict[str, int] = {}

    def add(source: str, urls: list[str], n: int | None = None) -> None:
        shards.setdefault(source, []).extend(urls)
        if n is not None:
            counts[source] = counts.get(source, 0) + n

    if spec is None:
        return shards, counts
    if isinstance(spec, str):
        spec = parse_spec(spec)
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
        missing = [u for u in urls if not _SCHEME.match(u) and not Path(u).exists()]
        if missing:
            raise FileNotFoundError(f"source {source!r}: {len(missing)} of {len(urls)} shard files do not exist, "
                                    f"e.g. {missing[0]} (a shard folder is made by `anydoor shards`)")
    return shards, counts
