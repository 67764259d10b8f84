"""What one shard sample holds, and how it is encoded and decoded.

One sample = one object: ``json`` metadata plus, for each kept frame ``i``, ``{i:03d}.jpg`` (the
full frame) and ``{i:03d}.png`` (the object's 0/255 mask *cropped to its box*, so the loader reads
a small PNG and the box comes for free). Metadata::

    {"source": str, "kind": "video"|"image"|"multiview", "id": str, "object": int,
     "size": [h, w], "frames": [frame index, ...], "boxes": [[x1, y1, x2, y2], ...]}

Boxes use exclusive ends (docs/design.md). Storing several frames of a track lets the loader draw a
fresh (reference, target) pair every time it reads the sample.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import cv2
import numpy as np

from src.geometry import mask_to_box

JPEG_QUALITY = 92


@dataclass
class ObjectSample:
    """One object track (video: several frames; image: one) as produced by a source reader."""

    source: str
    kind: str
    sample_id: str
    object_id: int
    frames: list[np.ndarray]  # RGB uint8 HxWx3
    masks: list[np.ndarray]  # bool/uint8 HxW
    frame_indices: list[int] = field(default_factory=list)

    @property
    def key(self) -> str:
        # webdataset splits a file name at its first dot, so keys keep to [A-Za-z0-9_-]
        return re.sub(r"[^A-Za-z0-9_-]+", "_", f"{self.source}-{self.sample_id}-{self.object_id}")


def _shrink(image: np.ndarray, mask: np.ndarray, max_side: int | None) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image, mask
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)


def encode_sample(obj: ObjectSample, max_side: int | None = None, quality: int = JPEG_QUALITY) -> dict[str, bytes | str]:
    """The webdataset dict (bytes per file) of one object sample."""
    out: dict[str, bytes | str] = {"__key__": obj.key}
    boxes, size = [], None
    for i, (frame, mask) in enumerate(zip(obj.frames, obj.masks, strict=True)):
        frame, mask = _shrink(frame, mask, max_side)
        mask = mask.astype(bool)
        size = list(frame.shape[:2])
        box = [int(v) for v in mask_to_box(mask)]
        boxes.append(box)
        ok1, jpg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        crop = mask[box[1] : box[3], box[0] : box[2]].astype(np.uint8) * 255
        ok2, png = cv2.imencode(".png", crop, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not (ok1 and ok2):
            raise RuntimeError(f"OpenCV failed to encode frame {i} of {obj.key}")
        out[f"{i:03d}.jpg"] = jpg.tobytes()
        out[f"{i:03d}.png"] = png.tobytes()
    meta = {
        "source": obj.source,
        "kind": obj.kind,
        "id": obj.sample_id,
        "object": int(obj.object_id),
        "size": size,
        "frames": [int(f) for f in (obj.frame_indices or range(len(obj.frames)))],
        "boxes": boxes,
    }
    out["json"] = json.dumps(meta).encode()
    return out


# ---- loader side (reads our own shards; fast OpenCV paths) ----

class SampleError(ValueError):
    """A shard sample the loader cannot use, with a ``reason`` from ``datamodules.components.streams.SKIP_REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10 decodes straight to RGB (saves a cvtColor)
_REDUCED = {1: 0, 2: 16, 4: 32, 8: 64}  # the IMREAD_REDUCED_* bits


def decode_frame(sample: dict, i: int, reduce: int = 1) -> np.ndarray:
    """Frame ``i`` as RGB uint8, decoded at 1/``reduce`` scale (JPEG DCT scaling: cheaper than full)."""
    data = np.frombuffer(sample[f"{i:03d}.jpg"], np.uint8)
    if _RGB is not None:
        rgb = cv2.imdecode(data, _REDUCED[reduce] | _RGB)
    else:
        bgr = cv2.imdecode(data, _REDUCED[reduce] | cv2.IMREAD_COLOR)
        rgb = None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if rgb is None:
        raise SampleError("corrupt_image", f"{sample.get('__key__')}: frame {i} JPEG does not decode")
    return rgb


def decode_mask_crop(sample: dict, i: int) -> np.ndarray:
    """The object's mask inside its box (bool), as stored."""
    png = cv2.imdecode(np.frombuffer(sample[f"{i:03d}.png"], np.uint8), cv2.IMREAD_GRAYSCALE)
    if png is None:
        raise SampleError("corrupt_mask", f"{sample.get('__key__')}: mask {i} PNG does not decode")
    return png > 127


def full_mask(crop: np.ndarray, box: list[int], hw: tuple[int, int]) -> np.ndarray:
    """Paste a box-cropped mask back into an all-zero frame-sized mask."""
    mask = np.zeros(hw, dtype=bool)
    x1, y1, x2, y2 = box
    if crop.shape != (y2 - y1, x2 - x1):
        raise ValueError(f"mask crop {crop.shape} does not match its box {box}")
    mask[y1:y2, x1:x2] = crop
    return mask
