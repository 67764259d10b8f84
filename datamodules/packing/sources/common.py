"""Pieces every reader shares: choosing a track's frames and checking image objects."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from datamodules.packing.filters import MaskRules
from datamodules.components.shard_format import ObjectSample
from datamodules.packing.stats import PackStats


def spread(values: list[int], n: int) -> list[int]:
    """Up to ``n`` entries of ``values`` spread evenly from first to last (a track's pose range)."""
    if len(values) <= n:
        return list(values)
    idx = np.unique(np.round(np.linspace(0, len(values) - 1, n)).astype(int))
    return [values[i] for i in idx]


def valid_frames(
    candidates: list[int], get_mask: Callable[[int], np.ndarray | None], rules: MaskRules, stats: PackStats
) -> list[int]:
    """The candidate frames whose object mask passes the rules; absent objects are skipped silently."""
    keep = []
    for f in candidates:
        mask = get_mask(f)
        if mask is None or not mask.any():
            continue  # the object is not in this frame: not a rejection
        reason = rules.check(mask)
        if reason:
            stats.reject(reason)
        else:
            keep.append(f)
    return keep


def image_objects(
    source: str,
    sample_id: str,
    image: np.ndarray,
    masks: list[tuple[int, np.ndarray]],
    rules: MaskRules,
    max_objects: int,
    stats: PackStats,
    kind: str = "image",
) -> Iterator[ObjectSample]:
    """One image sample per object that passes the rules, largest first, at most ``max_objects``."""
    passing = []
    for obj_id, mask in masks:
        reason = rules.check(mask)
        if reason:
            stats.reject(reason)
        else:
            passing.append((int(np.count_nonzero(mask)), obj_id, mask))
    passing.sort(key=lambda t: (-t[0], t[1]))
    if len(passing) > max_objects:
        stats.reject("over_max_objects", len(passing) - max_objects)
    for _, obj_id, mask in passing[:max_objects]:
        yield ObjectSample(source, kind, sample_id, obj_id, [image], [mask.astype(bool)], [0])
