"""Box geometry shared by training and inference.

Convention (docs/design.md): a box is ``(x1, y1, x2, y2)`` in integer pixels with EXCLUSIVE ends, so
``image[y1:y2, x1:x2]`` is the box and its size is ``(x2 - x1, y2 - y1)``. The reference code mixes
inclusive (``get_bbox_from_mask``) and exclusive (slicing) ends; here every function takes and returns
exclusive ends, so a box can be sliced, expanded and mapped without off-by-one drift.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Box = tuple[int, int, int, int]


def _as_box(box: Sequence[float]) -> Box:
    if len(box) != 4:
        raise ValueError(f"a box has 4 coordinates (x1, y1, x2, y2), got {len(box)}: {box!r}")
    x1, y1, x2, y2 = (int(v) for v in box)
    if x2 < x1 or y2 < y1:
        raise ValueError(f"box {box!r} has x2 < x1 or y2 < y1")
    return x1, y1, x2, y2


def box_size(box: Sequence[int]) -> tuple[int, int]:
    """``(width, height)`` of an exclusive-end box."""
    x1, y1, x2, y2 = _as_box(box)
    return x2 - x1, y2 - y1


def box_fraction(box: Sequence[int], image_hw: Sequence[int]) -> tuple[float, float]:
    """``(w / W, h / H)``: the reference's size filters (object box >= 0.1, grown target box <= 0.8)."""
    w, h = box_size(box)
    return w / int(image_hw[1]), h / int(image_hw[0])


def mask_to_box(mask: np.ndarray) -> Box:
    """Tightest box around the non-zero pixels of a 2-D mask, exclusive ends.

    Raises ``ValueError`` for an empty mask: the reference silently returns the whole image there,
    which hides bad annotations.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        raise ValueError("mask is empty: it has no non-zero pixel, so it has no box")
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def clip_box(box: Sequence[int], image_hw: Sequence[int]) -> Box:
    """Clip a box to ``[0, W] x [0, H]`` (may become empty if it lies outside)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    h, w = int(image_hw[0]), int(image_hw[1])
    x1, x2 = min(max(x1, 0), w), min(max(x2, 0), w)
    y1, y2 = min(max(y1, 0), h), min(max(y2, 0), h)
    return x1, y1, max(x1, x2), max(y1, y2)


def _scale_interval(a: int, b: int, ratio: float) -> tuple[int, int]:
    size = b - a
    new = max(1, int(round(size * ratio)))
    start = a + (size - new) // 2  # floor division keeps the centre within half a pixel
    return start, start + new


def expand_box(box: Sequence[int], ratio: float, image_hw: Sequence[int]) -> Box:
    """Scale a box about its centre by ``ratio`` (each side ``round(size * ratio)``), clip to the image.

    Integer arithmetic so that ``ratio == 1`` returns the box unchanged; ratios below 1 shrink.
    """
    if not ratio > 0:
        raise ValueError(f"ratio must be > 0, got {ratio}")
    x1, y1, x2, y2 = _as_box(box)
    x1, x2 = _scale_interval(x1, x2, ratio)
    y1, y2 = _scale_interval(y1, y2, ratio)
    return clip_box((x1, y1, x2, y2), image_hw)


def expand_box_random(
    box: Sequence[int], ratio_range: Sequence[float], image_hw: Sequence[int], rng: np.random.Generator
) -> Box:
    """``expand_box`` with a ratio drawn uniformly from ``ratio_range`` (the reference draws in 0.1 steps)."""
    lo, hi = float(ratio_range[0]), float(ratio_range[1])
    if hi < lo:
        raise ValueError(f"ratio_range must be (low, high) with low <= high, got {ratio_range!r}")
    return expand_box(box, float(rng.uniform(lo, hi)), image_hw)


def _fit_interval(center2: int, length: int, limit: int) -> tuple[int, int]:
    """Interval of ``length`` centred on ``center2 / 2``, shifted (not clipped) into ``[0, limit]``."""
    length = min(length, limit)
    start = (center2 - length) // 2
    start = min(max(start, 0), limit - length)
    return start, start + length


def square_box(box: Sequence[int], image_hw: Sequence[int]) -> Box:
    """Square box of side ``max(w, h)`` around the box's centre, shifted to lie inside the image.

    Shifting rather than clipping (the reference clips) keeps the crop square, so no padding is
    needed whenever the side fits. If the side exceeds an image dimension, that dimension spans the
    whole image and the result is not square; ``pad_to_square`` completes it. The result always
    contains the input box (once clipped to the image).
    """
    x1, y1, x2, y2 = clip_box(_as_box(box), image_hw)
    side = max(x2 - x1, y2 - y1)
    h, w = int(image_hw[0]), int(image_hw[1])
    nx1, nx2 = _fit_interval(x1 + x2, side, w)
    ny1, ny2 = _fit_interval(y1 + y2, side, h)
    return nx1, ny1, nx2, ny2


def scale_box(box: Sequence[float], sx: float, sy: float | None = None) -> Box:
    """Map a box through a resize by ``(sx, sy)``: start floored, end ceiled, so the box never shrinks."""
    sy = sx if sy is None else sy
    x1, y1, x2, y2 = (float(v) for v in box)
    eps = 1e-6  # absorb float noise such as 10 * (512 / 100) = 51.200000000000003
    return (
        int(math.floor(x1 * sx + eps)),
        int(math.floor(y1 * sy + eps)),
        int(math.ceil(x2 * sx - eps)),
        int(math.ceil(y2 * sy - eps)),
    )
