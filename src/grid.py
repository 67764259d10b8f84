"""Labelled image grids a person can read: the training sample grids and the evaluation grid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PAD = 4


def labelled_grid(titles: Sequence[str], rows: Sequence[Sequence[np.ndarray]], min_tile: int = 160) -> np.ndarray:
    """uint8 ``H x W x 3`` grid: a header of column ``titles``, then one row per entry of ``rows``
    (uint8 ``S x S x 3`` tiles, all the same size). Tiles are enlarged by an integer factor, nearest
    neighbour, to at least ``min_tile`` px, so 64 px crops show their pixels instead of a blur."""
    if not rows:
        raise ValueError("labelled_grid needs at least one row")
    side = rows[0][0].shape[0]
    if any(len(r) != len(titles) for r in rows) or any(t.shape[:2] != (side, side) for r in rows for t in r):
        raise ValueError(f"every row needs {len(titles)} square tiles of {side} px")
    factor = max(1, -(-min_tile // side))
    tile = side * factor
    font = ImageFont.load_default(size=max(12, min(20, tile // 9)))
    header = font.size + 2 * PAD
    canvas = Image.new("RGB", (len(titles) * (tile + PAD) + PAD, header + len(rows) * (tile + PAD)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles):
        text = str(title)
        while len(text) > 3 and draw.textlength(text, font=font) > tile:
            text = text[:-2] + "…"
        draw.text((PAD + c * (tile + PAD), PAD), text, fill="black", font=font)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            big = np.repeat(np.repeat(np.asarray(cell, np.uint8), factor, axis=0), factor, axis=1)
            canvas.paste(Image.fromarray(big), (PAD + c * (tile + PAD), header + r * (tile + PAD)))
    return np.asarray(canvas)
