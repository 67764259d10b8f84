"""The collage: the ControlNet input that tells the model where the object goes and what its details are."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from src.geometry import box_size, clip_box

COLLAGE_CHANNELS = 4  # RGB in [-1, 1] + the location channel


def to_signed_chw(image: np.ndarray) -> np.ndarray:
    """uint8 ``H x W x 3`` -> float32 ``3 x H x W`` in [-1, 1] (the diffusion model's pixel range)."""
    out = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)  # transpose in uint8: cheaper
    out *= np.float32(1 / 127.5)
    out -= np.float32(1.0)
    return out



def signed_chw_to_uint8(image: np.ndarray) -> np.ndarray:
    """Inverse of ``to_signed_chw``: ``C x H x W`` in [-1, 1] (clipped) -> uint8 ``H x W x C``."""
    return np.clip(np.rint((np.asarray(image, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(1, 2, 0).copy()


def collage_picture(collage: np.ndarray, min_side: int = 256) -> np.ndarray:
    """The model's 4 x S x S input as a picture a person can read: the collage's RGB beside its
    location channel (white = where the object goes, grey = scene, black = padding), upscaled by an
    integer factor (nearest neighbour, so the pixels the model saw stay visible) to >= ``min_side``."""
    rgb = signed_chw_to_uint8(collage[:3])
    location = signed_chw_to_uint8(np.repeat(collage[3:4], 3, axis=0))
    picture = np.concatenate([rgb, np.full((rgb.shape[0], 2, 3), 255, np.uint8), location], axis=1)
    factor = max(1, -(-min_side // picture.shape[0]))
    return np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1)

def build_collage(
    target_crop: np.ndarray,
    box: Sequence[int],
    hint: np.ndarray,
    mask: np.ndarray | None = None,
    valid: Sequence[int] | None = None,
    pad_value: float = -1.0,
    packed: bool = False,
) -> np.ndarray:
    """Float32 ``4 x S x S``: the crop with ``hint`` resized into ``box``, plus the location channel.

    ``target_crop`` is the uint8 ``S x S x 3`` (padded, resized) target crop and ``box`` the hint's
    place in it (exclusive ends). Channels 0-2: RGB in [-1, 1]. Channel 3: 1 inside ``box`` (or
    inside ``mask`` when one is given, which may reach beyond the box), 0 elsewhere, and ``pad_value``
    outside ``valid``, the non-padding part of the crop (everything when ``None``). The hint is stretched to
    the box like the reference does; its aspect is the 224 x 224 reference's, the box's may differ.

    ``packed``: uint8 instead (the training loader's form, ``src.packed``): channels 0-2 the RGB bytes,
    channel 3 the location value + 1 (0 padding, 1 scene, 2 object); ``pad_value`` must be -1, 0 or 1.
    """
    if target_crop.ndim != 3 or target_crop.shape[2] != 3 or target_crop.dtype != np.uint8:
        raise ValueError(f"target_crop must be uint8 S x S x 3, got {target_crop.dtype} {target_crop.shape}")
    if hint.ndim != 3 or hint.shape[2] != 3:
        raise ValueError(f"hint must be h x w x 3, got {hint.shape}")
    hw = target_crop.shape[:2]
    x1, y1, x2, y2 = clip_box(box, hw)
    w, h = box_size((x1, y1, x2, y2))
    if w == 0 or h == 0:
        raise ValueError(f"box {tuple(box)} has no area inside the {hw[1]} x {hw[0]} crop")
    if packed and pad_value not in (-1.0, 0.0, 1.0):
        raise ValueError(f"a packed collage stores the padding value + 1 in a byte: pad_value must be -1, 0 or 1, got {pad_value}")
    if mask is not None and mask.shape != hw:
        raise ValueError(f"mask shape {mask.shape} does not match the crop {hw}")
    hint_in_box = cv2.resize(hint.astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    shift = 1 if packed else 0  # packed: location + 1
    out = np.empty((4,) + hw, np.uint8 if packed else np.float32)
    out[:3] = target_crop.transpose(2, 0, 1)
    out[:3, y1:y2, x1:x2] = hint_in_box.transpose(2, 0, 1)
    if not packed:
        out[:3] *= np.float32(1 / 127.5)
        out[:3] -= np.float32(1.0)
    channel = out[3]
    channel[...] = 0 + shift
    if mask is None:
        channel[y1:y2, x1:x2] = 1 + shift
    else:
        channel[mask > 0] = 1 + shift
    if valid is not None:
        vx1, vy1, vx2, vy2 = clip_box(valid, hw)
        pad = int(pad_value) + shift if packed else pad_value
        channel[:vy1] = pad
        channel[vy2:] = pad
        channel[:, :vx1] = pad
        channel[:, vx2:] = pad
    return out
