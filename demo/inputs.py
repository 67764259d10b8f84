"""What the web page gives, made into what the model needs: pure functions, no Gradio, no torch.

The page holds images as uint8 arrays read by ``src.image_io.read_image`` (one reader, one pixel
limit), boxes as text a person can read and edit (``"x1 y1 x2 y2"``, exclusive ends like every box
in the project, docs/design.md), and painted masks as the alpha of the image editor's layers. Every
problem is a ``ValueError`` whose message is shown in the page as it is, so it names the input
("reference", "target") and says what to do.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import cv2
import numpy as np

from src.geometry import Box

# Pictures the page shows are at most this many pixels on their long side: a 24 MP photo as a PNG
# costs seconds per box click and megabytes per view. Clicks on a preview are mapped back to the
# full image, so boxes stay in the image's own pixels; the model always gets the full image.
PREVIEW_SIDE = 1600
OUTLINE_RGB = (255, 0, 220)  # a magenta no natural photo is full of


def parse_box(text: str | None) -> Box | None:
    """``"x1 y1 x2 y2"`` (spaces, commas or brackets) -> a box; empty -> None."""
    text = (text or "").strip()
    if not text:
        return None
    parts = [p for p in re.split(r"[\s,;()\[\]]+", text) if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ValueError(f"target box: four whole numbers x1 y1 x2 y2 (pixels, exclusive ends), got {text!r}")
    return values[0], values[1], values[2], values[3]


def format_box(box: Sequence[int] | None) -> str:
    return "" if box is None else " ".join(str(int(v)) for v in box)


def check_box(box: Box, hw: Sequence[int]) -> Box:
    """The box itself when it has area inside the ``H x W`` image, else a ``ValueError`` that says why."""
    x1, y1, x2, y2 = box
    h, w = int(hw[0]), int(hw[1])
    if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
        raise ValueError(f"target box {format_box(box)} is empty or outside the {w} x {h} target "
                         f"(need 0 <= x1 < x2 <= {w} and 0 <= y1 < y2 <= {h})")
    return box


def box_from_corners(a: Sequence[int], b: Sequence[int], hw: Sequence[int]) -> Box:
    """The box whose corner pixels are the two clicked pixels (either order), clipped to the image."""
    h, w = int(hw[0]), int(hw[1])
    xs = sorted(min(max(int(p[0]), 0), w - 1) for p in (a, b))
    ys = sorted(min(max(int(p[1]), 0), h - 1) for p in (a, b))
    return xs[0], ys[0], xs[1] + 1, ys[1] + 1


def preview_scale(hw: Sequence[int], side: int = PREVIEW_SIDE) -> float:
    """Factor from full-image pixels to the pixels of the picture the page shows (<= 1)."""
    return min(1.0, side / max(int(hw[0]), int(hw[1])))


def to_preview(image: np.ndarray, side: int = PREVIEW_SIDE) -> np.ndarray:
    scale = preview_scale(image.shape[:2], side)
    if scale == 1.0:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def click_to_pixel(point: Sequence[float], hw: Sequence[int], side: int = PREVIEW_SIDE) -> tuple[int, int]:
    """A click on the preview (its pixel coordinates, as the page reports them) -> a full-image pixel."""
    scale = preview_scale(hw, side)
    x = min(int(float(point[0]) / scale), int(hw[1]) - 1)
    y = min(int(float(point[1]) / scale), int(hw[0]) - 1)
    return max(x, 0), max(y, 0)


def outline(image: np.ndarray, box: Sequence[int] | None, rgb: tuple[int, int, int] = OUTLINE_RGB) -> np.ndarray:
    """A copy of ``image`` with the box drawn as a rectangle just inside it (thicker on large images)."""
    out = np.ascontiguousarray(image[..., :3]).copy()
    if box is None:
        return out
    x1, y1, x2, y2 = (int(v) for v in box)
    width = max(2, min(out.shape[:2]) // 160)
    cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), rgb, width)
    return out


def painted_mask(editor: dict[str, Any] | None, hw: Sequence[int], what: str) -> np.ndarray | None:
    """The union of the brush strokes (layer alpha > 0) of an image editor's value, at the full image
    size ``hw``; None when nothing is painted. The editor shows a preview, so its layers may be smaller
    than the image: they are scaled back (nearest neighbour, so a mask stays a mask)."""
    layers = [np.asarray(layer) for layer in ((editor or {}).get("layers") or []) if layer is not None]
    painted = None
    for layer in layers:
        if layer.ndim != 3 or layer.shape[2] != 4:
            raise ValueError(f"{what}: the painted layer is not an RGBA image ({layer.shape})")
        alpha = layer[..., 3] > 0
        if painted is not None and painted.shape != alpha.shape:
            raise ValueError(f"{what}: the painted layers differ in size: clear the canvas and paint again")
        painted = alpha if painted is None else painted | alpha
    if painted is None or not painted.any():
        return None
    h, w = int(hw[0]), int(hw[1])
    if painted.shape != (h, w):
        ph, pw = painted.shape
        if abs(ph / h - pw / w) > 0.02 + 2 / min(ph, pw):
            raise ValueError(f"{what}: the painted mask is {pw} x {ph}, its image {w} x {h}: paint again")
        painted = cv2.resize(painted.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return painted.astype(np.uint8)


def reference_mask(reference: np.ndarray, painted: np.ndarray | None, mask_file: np.ndarray | None) -> tuple[np.ndarray, str]:
    """(mask, where it came from): the strokes painted on the reference, else the uploaded mask file,
    else the reference's transparency. Errors say how to give one."""
    hw = reference.shape[:2]
    if painted is not None:
        return painted, "painted"
    if mask_file is not None:
        if mask_file.shape[:2] != hw:
            raise ValueError(f"reference mask file is {mask_file.shape[1]} x {mask_file.shape[0]}, "
                             f"the reference {hw[1]} x {hw[0]}: they must match")
        mask = (mask_file > 127).astype(np.uint8)
        if not mask.any():
            raise ValueError("reference mask file is empty (all black): white marks the object")
        return mask, "mask file"
    if reference.ndim == 3 and reference.shape[2] == 4 and reference[..., 3].min() < 255:
        mask = (reference[..., 3] > 127).astype(np.uint8)
        if not mask.any():
            raise ValueError("reference is fully transparent: its alpha holds no object")
        return mask, "transparency"
    raise ValueError("reference has no mask: paint over the object, upload a mask file, "
                     "or use a cut-out PNG whose transparency is the mask")


