"""Binary-mask operations: quality filters for the data pipeline and the training-time perturbation.

Masks are 2-D arrays; any non-zero pixel is foreground. Functions return ``uint8`` masks in {0, 1}.
"""

from __future__ import annotations

import functools
from typing import Sequence

import cv2
import numpy as np


def _binary(mask: np.ndarray) -> np.ndarray:
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    return (mask > 0).astype(np.uint8)


def mask_area_ratio(mask: np.ndarray) -> float:
    """Foreground share of the image (the reference keeps 0.1**2 .. 0.8**2)."""
    binary = _binary(mask)
    return float(binary.mean()) if binary.size else 0.0


def _components(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the pixel count of each 8-connected foreground component (background dropped)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    return labels, stats[1:, cv2.CC_STAT_AREA]


def mask_connectivity(mask: np.ndarray) -> float:
    """Largest component's share of the foreground area (0 for an empty mask).

    The reference scores the largest external contour's area over all contours' areas; pixel counts
    of 8-connected components give the same ranking without contour-area degeneracies (a one-pixel
    contour has area 0, so a mask of specks would divide by zero).
    """
    _, areas = _components(_binary(mask))
    total = int(areas.sum())
    return float(areas.max()) / total if total else 0.0


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component as a {0, 1} uint8 mask (an empty mask stays empty)."""
    binary = _binary(mask)
    # Label only the foreground's bounding box: same components, same raster order (so the same
    # label wins a tie), a fraction of the pixels for a perturbed object mask in a 512 px crop.
    x, y, w, h = cv2.boundingRect(binary)
    if w == 0 or h == 0:
        return binary
    labels, areas = _components(np.ascontiguousarray(binary[y : y + h, x : x + w]))
    if areas.size <= 1:
        return binary
    out = np.zeros_like(binary)
    out[y : y + h, x : x + w] = labels == int(np.argmax(areas)) + 1
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks (1.0 when both are empty)."""
    a, b = a > 0, b > 0
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


@functools.lru_cache(maxsize=64)
def _cubic_weights(n_out: int, n_in: int, a: float = -0.75) -> np.ndarray:
    """``n_out x n_in`` matrix of OpenCV's bicubic upsampling along one axis (its kernel, ``a`` = -0.75,
    pixel-centre alignment, edge pixels replicated), so ``Wy @ coarse @ Wx.T`` is ``cv2.resize(coarse,
    INTER_CUBIC)`` to float32 rounding (~1e-6 on a unit-std field)."""
    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    x0 = np.floor(x).astype(np.int64)
    weights = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    for offset in (-1, 0, 1, 2):
        d = np.abs(x - x0 - offset)
        k = np.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                     np.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, 0.0))
        np.add.at(weights, (rows, np.clip(x0 + offset, 0, n_in - 1)), k)
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, cells: int) -> np.ndarray:
    """Unit-std random field varying over ~1/cells of the image: makes outlines irregular, not offset copies.

    Bicubic upsampling of a ``(cells + 1)^2`` grid written as two small matrix products (OpenCV's
    generic cubic resize took ~1.5 ms for 512 x 512, a tenth of a training pair's cost; this ~0.2 ms).
    ``cv2.gemm`` rather than numpy: it does not start a BLAS thread pool inside loader workers.
    """
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    wy, wx = _cubic_weights(shape[0], cells + 1), _cubic_weights(shape[1], cells + 1)
    return cv2.gemm(cv2.gemm(wy, coarse, 1.0, None, 0.0), wx, 1.0, None, 0.0, flags=cv2.GEMM_2_T)


def _take_lowest(field: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of the ``count`` candidate pixels with the lowest ``field`` value (one partition)."""
    picked = np.zeros(field.shape, dtype=bool)
    idx = np.flatnonzero(candidates)
    count = int(min(max(count, 0), idx.size))
    if count == 0:
        return picked
    values = field.ravel()[idx]
    if count < idx.size:
        idx = idx[np.argpartition(values, count - 1)[:count]]
    picked.ravel()[idx] = True
    return picked


def perturb_mask(
    mask: np.ndarray,
    iou_range: Sequence[float] = (0.3, 0.99),
    rng: np.random.Generator | None = None,
    *,
    dilate_prob: float = 0.5,
    roughness: float = 1.0,
    max_tries: int = 4,
) -> np.ndarray:
    """Coarsen a true mask by random dilation or erosion to an IoU drawn from ``iou_range``.

    Training only: it teaches the model that the mask channel is a rough hint, not the exact outline.
    The reference grows the mask by up to 1000 random local dilations/erosions until the IoU falls
    under the target. Here one pass hits the target directly: a distance transform plus a smooth
    random field (amplitude ``roughness`` times the mean displacement) ranks pixels, and an
    ``argpartition`` adds exactly the ``|M| / t - |M|`` lowest-ranked outside pixels (dilation) or
    keeps exactly the ``t |M|`` highest-ranked inside pixels (erosion), so IoU == t up to rounding.
    The largest component is kept (as in the reference); if that pushes the IoU out of range the
    draw is retried, the last try being a noiseless dilation, which keeps a connected mask connected
    and so lands in range. A fragmented mask whose largest part holds a share ``c`` of its area
    cannot exceed IoU ~``c``; then the try closest to the range is returned.
    ~7 ms for 512 x 512 on a shared 2-core CPU (benchmarks/bench_ops.py).
    """
    if rng is None:
        raise ValueError("perturb_mask needs an np.random.Generator (rng)")
    lo, hi = float(iou_range[0]), float(iou_range[1])
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"iou_range must satisfy 0 < low <= high <= 1, got {iou_range!r}")
    gt = _binary(mask)
    area = int(gt.sum())
    if area == 0 or min(gt.shape) <= 2:
        return gt
    outside_count = gt.size - area
    best, best_gap = gt, np.inf
    for attempt in range(max_tries + 1):
        target = float(rng.uniform(lo, hi))
        dilate = bool(rng.random() < dilate_prob)
        noisy = attempt < max_tries
        if not noisy:
            dilate = True  # last resort: plain dilation keeps a connected mask connected
        if dilate and outside_count == 0:
            dilate = False  # the mask fills the image: only erosion can lower the IoU
        if dilate:
            add = int(round(area / target)) - area
            dist = cv2.distanceTransform(1 - gt, cv2.DIST_L2, cv2.DIST_MASK_5)
            if noisy and roughness > 0 and add > 0:
                scale = _displacement(dist, gt == 0, add)
                dist = dist + roughness * scale * _smooth_noise(gt.shape, rng, int(rng.integers(3, 9)))
            result = (gt.astype(bool) | _take_lowest(dist, gt == 0, add)).astype(np.uint8)
        else:
            keep = max(1, int(round(area * target)))
            dist = _inside_distance(gt, outside_count)
            if noisy and roughness > 0 and keep < area:
                scale = _displacement(-dist, gt > 0, keep)
                dist = dist + roughness * scale * _smooth_noise(gt.shape, rng, int(rng.integers(3, 9)))
            result = _take_lowest(-dist, gt > 0, keep).astype(np.uint8)
        result = largest_component(result)
        iou = mask_iou(result, gt)
        gap = max(lo - iou, iou - hi, 0.0)
        if gap <= 1e-3:
            return result
        if gap < best_gap:
            best, best_gap = result, gap
    return best


def _inside_distance(gt: np.ndarray, outside_count: int) -> np.ndarray:
    """Distance to the background; a mask filling the image measures it to the image border instead."""
    if outside_count:
        return cv2.distanceTransform(gt, cv2.DIST_L2, cv2.DIST_MASK_5)
    padded = cv2.copyMakeBorder(gt, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_5)[1:-1, 1:-1]


def _displacement(field: np.ndarray, candidates: np.ndarray, count: int) -> float:
    """|field| at the ``count``-th lowest candidate (+1 px): the uniform dilation/erosion depth, used as noise amplitude."""
    values = field[candidates]
    if values.size == 0 or count <= 0:
        return 0.0
    k = min(count, values.size) - 1
    return float(abs(np.partition(values, k)[k])) + 1.0
