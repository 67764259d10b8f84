"""Pieces every reader shares: path fields, choosing a track's frames, checking image objects.

Every rejection goes to ``stats`` with the identifiers that locate it (see ``stats.ID_KEYS``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from datamodules.components.shard_format import ObjectSample
from datamodules.packing.filters import MaskRules
from datamodules.packing.stats import PackStats


def path_field(default: object = dataclasses.MISSING) -> dataclasses.Field:
    """A reader field naming where the data is: left out of the pack fingerprint's options, because the
    files' listing (relative to the reader's root, with sizes and times) already stands for it, so a
    data set moved to another folder still resumes."""
    return dataclasses.field(default=default, metadata={"path": True})


def visible(path: Path) -> bool:
    """Hidden names (``.x``: temporaries, macOS ``._x`` metadata files) are not data."""
    return not path.name.startswith(".")


def spread(values: list[int], n: int) -> list[int]:
    """Up to ``n`` entries of ``values`` spread evenly from first to last (a track's pose range)."""
    if len(values) <= n:
        return list(values)
    idx = np.unique(np.round(np.linspace(0, len(values) - 1, n)).astype(int))
    return [values[i] for i in idx]


def track_frames(
    candidates: list[int],
    get_mask: Callable[[int], np.ndarray | None],
    rules: MaskRules,
    stats: PackStats,
    where: Callable[[int], dict],
) -> tuple[list[int], int]:
    """``(frames whose object mask passes the rules, number of frames where the object is present)``.

    A frame without the object is not a rejection; a present one that fails a rule is reported with
    ``where(frame)`` (its identifiers and file).
    """
    keep, present = [], 0
    for f in candidates:
        mask = get_mask(f)
        if mask is None or not mask.any():
            continue
        present += 1
        reason = rules.check(mask)
        if reason:
            stats.reject(reason, **where(f))
        else:
            keep.append(f)
    return keep, present


def track_rejected(stats: PackStats, present: int, usable: int, min_frames: int, **ids: object) -> bool:
    """Report a track that cannot give a sample (absent everywhere, or too few usable frames)."""
    if present == 0:
        stats.reject("object_absent", **ids)
        return True
    if usable < min_frames:
        stats.reject("too_few_frames", detail=f"{usable} usable of {present} frames with the object, {min_frames} needed", **ids)
        return True
    return False


def image_objects(
    source: str,
    sample_id: str,
    image: np.ndarray,
    masks: list[tuple[int, np.ndarray]],
    rules: MaskRules,
    max_objects: int,
    stats: PackStats,
    file: object = None,
    image_id: object = None,
    kind: str = "image",
) -> Iterator[ObjectSample]:
    """One image sample per object that passes the rules, largest first, at most ``max_objects``;
    ``masks`` holds ``(annotation id, mask)`` pairs; the report names ``image_id`` (default
    ``sample_id``), the annotation and ``file``, the image."""
    image_id = sample_id if image_id is None else image_id
    passing = []
    for obj_id, mask in masks:
        reason = rules.check(mask)
        if reason:
            stats.reject(reason, image=image_id, annotation=obj_id, file=file)
        else:
            passing.append((int(np.count_nonzero(mask)), obj_id, mask))
    passing.sort(key=lambda t: (-t[0], t[1]))
    for area, obj_id, _ in passing[max_objects:]:
        stats.reject("over_max_objects", image=image_id, annotation=obj_id, file=file,
                     detail=f"{area} pixels; {len(passing)} objects pass, {max_objects} kept")
    for _, obj_id, mask in passing[:max_objects]:
        yield ObjectSample(source, kind, sample_id, obj_id, [image], [mask.astype(bool)], [0])
