"""Source images and id masks for packing, read with the project's one image reader (``src.image_io``).

``src.image_io`` decides what a file is (missing, empty, not an image, truncated, corrupt, too large,
an unconvertible mode) and scales 16-bit images instead of clipping them; this module adds packing's
own rules on top: every failure becomes a ``BadInput`` (counted and listed, the pack goes on), mode
conversions are counted, and id masks must be 8-bit (a 16-bit or RGB "id mask" has no defined ids).

Pixels are read as stored (no EXIF rotation): data set annotations are drawn on the stored pixels,
and rotating only the frame would misalign it with its masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.packing.stats import BadInput, PackStats
from src.image_io import ImageError, open_image, to_array

# what a non-RGB image is counted as under "converted"
_CONVERTED = {"L": "grayscale", "LA": "grayscale", "RGBA": "rgba", "CMYK": "cmyk", "P": "palette", "PA": "palette",
              "YCbCr": "ycbcr", "1": "bilevel", "I;16": "16bit", "I;16L": "16bit", "I;16B": "16bit", "I;16N": "16bit",
              "I": "32bit", "F": "float"}
_WIDE_MASK_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _open(source: str | Path | bytes, name: str) -> Image.Image:
    try:
        return open_image(source, name=name, exif=False)
    except ImageError as e:
        raise BadInput(e.name, e.reason, e.detail) from None


def read_image(source: str | Path | bytes, name: str | None = None, stats: PackStats | None = None) -> np.ndarray:
    """RGB uint8 HxWx3; other modes are converted by ``src.image_io`` and counted in ``stats.converted``."""
    name = str(source) if name is None else name
    im = _open(source, name)
    try:
        rgb = to_array(im, "RGB", name=name)
    except ImageError as e:
        raise BadInput(e.name, e.reason, e.detail) from None
    finally:
        im.close()
    if im.mode != "RGB" and stats is not None:
        stats.converted[_CONVERTED.get(im.mode, im.mode.lower())] += 1
    return rgb


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header alone, without decoding; a file whose header does not read is
    decoded by the reader so it fails with the precise reason (empty_file, not_an_image, ...)."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError):
        rgb = read_image(path)  # raises BadInput with the reason; returns only for a file PIL reads on retry
        return rgb.shape[1], rgb.shape[0]


def read_label_mask(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """An 8-bit instance-id mask (palette or grayscale PNG: pixel value = object id) as uint8 HxW."""
    name = str(source) if name is None else name
    im = _open(source, name)
    try:
        if im.mode in ("P", "1"):
            return np.asarray(im, dtype=np.uint8)
        if im.mode == "L":
            label = np.asarray(im)
            if label.max() == 255 and not np.isin(label, (0, 255), invert=True).any():
                return (label > 0).astype(np.uint8)  # a binary 0/255 mask (DAVIS 2016 style): one object, id 1
            return label
        if im.mode in _WIDE_MASK_MODES:
            raise BadInput(name, "mask_16bit", f"mode {im.mode}; expected an 8-bit palette or grayscale PNG")
        raise BadInput(name, "mask_rgb", f"mode {im.mode}; expected an 8-bit palette or grayscale PNG")
    finally:
        im.close()


def check_mask_size(mask: np.ndarray, frame_hw: tuple[int, int], name: str) -> None:
    if tuple(mask.shape[:2]) != tuple(frame_hw):
        raise BadInput(name, "mask_size_mismatch", f"mask {mask.shape[1]}x{mask.shape[0]} vs frame {frame_hw[1]}x{frame_hw[0]}")
