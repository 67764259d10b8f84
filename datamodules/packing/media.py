"""Reading source images and masks with checks: every failure is a ``BadInput`` naming file and reason.

PIL is used at pack time because it detects truncated files (OpenCV silently returns a partial
image); the loader reads our own shards with OpenCV, which is faster.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from datamodules.packing.stats import BadInput, PackStats

_CONVERTIBLE = {"L": "grayscale", "LA": "grayscale", "RGBA": "rgba", "CMYK": "cmyk", "P": "palette", "YCbCr": "ycbcr", "1": "bilevel"}


def _open(source: str | Path | bytes, name: str) -> Image.Image:
    im = None
    try:
        im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        im.load()  # forces a full decode: truncated files raise here
    except FileNotFoundError:
        raise BadInput(name, "missing_file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if im is not None:
            im.close()  # opened, then failed to decode: do not leak the file handle
        raise BadInput(name, "corrupt_image", str(e)[:120]) from None
    return im


def read_image(source: str | Path | bytes, name: str | None = None, stats: PackStats | None = None) -> np.ndarray:
    """RGB uint8 HxWx3; grayscale/RGBA/CMYK/palette are converted (and counted), other modes rejected."""
    name = str(source) if name is None else name
    im = _open(source, name)
    if im.mode != "RGB":
        if im.mode not in _CONVERTIBLE:
            raise BadInput(name, "unsupported_image_mode", im.mode)
        if stats is not None:
            stats.converted[_CONVERTIBLE[im.mode]] += 1
        im = im.convert("RGB")
    return np.asarray(im)


def read_label_mask(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """An 8-bit instance-id mask (palette or grayscale PNG: pixel value = object id) as uint8 HxW."""
    name = str(source) if name is None else name
    try:
        im = _open(source, name)
    except BadInput as e:
        raise BadInput(e.file, "corrupt_mask" if e.reason == "corrupt_image" else e.reason, e.detail) from None
    if im.mode == "P":
        return np.asarray(im, dtype=np.uint8)
    if im.mode == "L":
        label = np.asarray(im)
        if label.max() == 255 and not np.isin(label, (0, 255), invert=True).any():
            return (label > 0).astype(np.uint8)  # a binary 0/255 mask (DAVIS 2016 style): one object, id 1
        return label
    if im.mode == "1":
        return np.asarray(im, dtype=np.uint8)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise BadInput(name, "mask_16bit", f"mode {im.mode}; expected an 8-bit palette or grayscale PNG")
    raise BadInput(name, "mask_rgb", f"mode {im.mode}; expected an 8-bit palette or grayscale PNG")


def check_mask_size(mask: np.ndarray, frame_hw: tuple[int, int], name: str) -> None:
    if tuple(mask.shape[:2]) != tuple(frame_hw):
        raise BadInput(name, "mask_size_mismatch", f"mask {mask.shape[1]}x{mask.shape[0]} vs frame {frame_hw[1]}x{frame_hw[0]}")
