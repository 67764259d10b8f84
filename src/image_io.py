"""Reading and writing user images: one reader for every entry point (generate, eval, demo, packing).

Every failure is an ``ImageError`` (a ``ValueError``) that names the file and gives a ``reason`` from
``REASONS``, so command-line tools print one line and packers can count and list rejections.

What is accepted: any Pillow format, 8- or 16-bit, gray / gray+alpha / RGB / RGBA / palette /
CMYK / YCbCr, integer and float single-channel images whose range is clear. 16-bit images are
*scaled* to 8 bits (``round(v / 257)``), never clipped: Pillow's own ``convert`` clips 16-bit gray at
255, which turned a 16-bit reference into a white sheet. EXIF orientation is applied by default so a
box drawn on what a person sees lands where they drew it (phone photos store pixels rotated).
Images above ``max_pixels`` are refused before they are decoded.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from src.files import atomic_path

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000 x 8000; the model works on a crop, more only costs memory

REASONS: dict[str, str] = {
    "missing_file": "no such file",
    "empty_file": "the file is empty (0 bytes)",
    "not_an_image": "not an image file Pillow can identify",
    "truncated_image": "the image data ends early (truncated file)",
    "corrupt_image": "the image data cannot be decoded",
    "too_large": "more pixels than the limit",
    "unsupported_image_mode": "a pixel format that cannot be converted to 8-bit RGB without guessing",
}

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# Output extensions PIL can write, checked before any work is done.
WRITABLE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class ImageError(ValueError):
    """``<name>: <message>``; ``reason`` is a key of ``REASONS``."""

    def __init__(self, name: str, reason: str, detail: str = "") -> None:
        self.name, self.reason, self.detail = name, reason, detail
        message = REASONS.get(reason, reason)
        super().__init__(f"{name}: {message}" + (f" ({detail})" if detail else ""))


def open_image(source: str | Path | bytes, *, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               exif: bool = True) -> Image.Image:
    """Open and fully decode an image (truncation is detected here), refusing oversized ones first."""
    name = str(source) if name is None else name
    if isinstance(source, bytes):
        if not source:
            raise ImageError(name, "empty_file")
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(name, "missing_file")
        if path.stat().st_size == 0:
            raise ImageError(name, "empty_file")
        stream = path
    im = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            im = Image.open(stream)
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
            raise ImageError(name, "too_large", f"{w} x {h} = {w * h / 1e6:.1f} MP, limit {max_pixels / 1e6:.1f} MP")
        im.load()
        if exif:
            im = ImageOps.exif_transpose(im)
    except ImageError:
        if im is not None:
            im.close()
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(name, "too_large", str(err)[:160]) from None
    except UnidentifiedImageError:
        raise ImageError(name, "not_an_image") from None
    except (OSError, SyntaxError, ValueError) as err:
        if im is not None:
            im.close()
        reason = "truncated_image" if "truncat" in str(err).lower() else "corrupt_image"
        raise ImageError(name, reason, str(err)[:160]) from None
    return im


def _eight_bit_gray(im: Image.Image, name: str) -> np.ndarray:
    """A single-channel image of any depth as uint8, scaled (not clipped)."""
    if im.mode in _SIXTEEN_BIT:
        a = np.asarray(im).astype(np.float32)
        return np.rint(a / 257.0).astype(np.uint8)
    if im.mode == "I":
        a = np.asarray(im)
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise ImageError(name, "unsupported_image_mode", f"32-bit integer values {lo}..{hi}")
        return (np.rint(a / 257.0) if hi > 255 else a).astype(np.uint8)
    if im.mode == "F":
        a = np.asarray(im)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if np.isnan(a).any() or lo < 0 or hi > 255:
            raise ImageError(name, "unsupported_image_mode", f"float values {lo:g}..{hi:g}")
        return np.rint(a * 255.0 if hi <= 1.0 else a).astype(np.uint8)
    return np.asarray(im.convert("L"))


def has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def to_array(im: Image.Image, mode: str | None = "RGB", *, name: str = "image") -> np.ndarray:
    """uint8 array: ``"RGB"`` H x W x 3, ``"RGBA"`` H x W x 4, ``"L"`` H x W, or ``None`` (RGBA when the
    image has transparency, else RGB). For ``"L"`` of an image whose gray values are all equal but whose
    alpha varies (a cut-out saved as the mask), the alpha is the mask."""
    if mode not in ("RGB", "RGBA", "L", None):
        raise ValueError(f"mode must be RGB, RGBA, L or None, got {mode!r}")
    if im.mode in (*_SIXTEEN_BIT, "I", "F"):
        gray = _eight_bit_gray(im, name)
        if mode == "L":
            return gray
        rgb = np.repeat(gray[..., None], 3, axis=2)
        return np.concatenate([rgb, np.full_like(gray[..., None], 255)], axis=2) if mode == "RGBA" else rgb
    if mode is None:
        mode = "RGBA" if has_alpha(im) else "RGB"
    if mode == "L":
        gray = np.asarray(im.convert("L"))
        if has_alpha(im) and gray.min() == gray.max():
            alpha = np.asarray(im.convert("RGBA"))[..., 3]
            if alpha.min() != alpha.max():
                return np.ascontiguousarray(alpha)
        return gray
    return np.asarray(im.convert(mode))


def read_image(source: str | Path | bytes, mode: str | None = "RGB", *, name: str | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, exif: bool = True) -> np.ndarray:
    """Read an image file (or its bytes) as a uint8 array (see ``to_array`` for ``mode``)."""
    name = str(source) if name is None else name
    im = open_image(source, name=name, max_pixels=max_pixels, exif=exif)
    try:
        return to_array(im, mode, name=name)
    finally:
        im.close()


def check_output_path(path: str | Path, *, overwrite: bool = True) -> Path:
    """Validate an output image path before any work: known extension, a folder (not a file) as
    parent, and no existing file unless ``overwrite``. Raises ``ValueError`` naming the path."""
    path = Path(path)
    if path.suffix.lower() not in WRITABLE_EXTENSIONS:
        raise ValueError(f"{path}: unknown image extension {path.suffix!r} (use one of {', '.join(WRITABLE_EXTENSIONS)})")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{path}: {parent} is a file, not a folder")
            break
    if path.is_dir():
        raise ValueError(f"{path}: is a folder")
    if path.exists() and not overwrite:
        raise ValueError(f"{path}: exists (pass --overwrite to replace it)")
    return path


def write_image(path: str | Path, array: np.ndarray, *, overwrite: bool = True) -> Path:
    """Write a uint8 image atomically (a failed write leaves any previous file intact)."""
    path = check_output_path(path, overwrite=overwrite)
    image = Image.fromarray(np.ascontiguousarray(array))
    fmt = Image.registered_extensions()[path.suffix.lower()]
    if fmt == "JPEG" and image.mode == "RGBA":
        image = image.convert("RGB")
    with atomic_path(path, overwrite=overwrite) as tmp:
        image.save(tmp, format=fmt)
    return path
