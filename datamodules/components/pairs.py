"""Turn one shard sample into one training pair (docs/design.md sample dict).

A video/multiview sample yields two distinct frames of its track (reference and target); an image
sample yields the same frame twice (the reference augmentation makes the two views differ). The
geometry and collage come from ``src.conditioning`` so training and inference build samples
identically. Only the two frames are decoded, and JPEG DCT scaling decodes at 1/2, 1/4 or 1/8 when
the crop would be shrunk at least that much anyway.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from datamodules.components.shard_format import SampleError, decode_frame, decode_mask_crop
from src.conditioning import (BOX_GROW_RANGE, CROP_GROW_RANGE, REFERENCE_GROW_RANGE, prepare_reference,
                              prepare_target)
from src.geometry import mask_to_box
from src.constants import KIND_INDEX

REDUCTIONS = (8, 4, 2, 1)
MIN_CROP_GROW = BOX_GROW_RANGE[0] * CROP_GROW_RANGE[0]  # smallest (box grow) x (crop grow) prepare_target can draw


def reference_augment(rng: np.random.Generator, compose=None):
    """The reference's augmentation: horizontal flip and brightness/contrast jitter (albumentations).

    Albumentations keeps its own RNG; it is reseeded from ``rng`` on every call so the pipeline's
    randomness still flows from one passed-in generator. Pass ``compose`` to reuse a built one.
    """
    if compose is None:
        compose = reference_compose()

    def augment(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        compose.set_random_seed(int(rng.integers(2**31)))
        out = compose(image=image, mask=mask)
        return out["image"], out["mask"]

    return augment


def reference_compose():
    import albumentations as A

    return A.Compose([A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(p=0.5)])


def _reduction(needed_side: float, available_side: float) -> int:
    """Largest DCT scale 1/r at which ``available_side`` still covers ``needed_side`` output pixels."""
    for r in REDUCTIONS:
        if available_side / r >= needed_side:
            return r
    return 1


def load_view(sample: dict, meta: dict, i: int, reduce: int, crop_to_box: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``i`` (RGB) at 1/``reduce`` scale and its object mask (uint8 {0,1}) at the same scale.

    ``crop_to_box`` returns only the object's box region (enough for the reference).
    """
    h, w = meta["size"]
    x1, y1, x2, y2 = meta["boxes"][i]
    crop = decode_mask_crop(sample, i)
    if crop.shape != (y2 - y1, x2 - x1):
        raise SampleError("size_mismatch", f"{sample.get('__key__')}: mask {i} is {crop.shape[1]}x{crop.shape[0]}, its box {x2 - x1}x{y2 - y1}")
    image = decode_frame(sample, i, reduce)
    if reduce == 1 and image.shape[:2] != (h, w):
        raise SampleError("size_mismatch", f"{sample.get('__key__')}: frame {i} is {image.shape[1]}x{image.shape[0]}, metadata says {w}x{h}")
    sy, sx = image.shape[0] / h, image.shape[1] / w
    bx1, by1 = int(math.floor(x1 * sx)), int(math.floor(y1 * sy))
    bx2, by2 = max(bx1 + 1, min(image.shape[1], int(math.ceil(x2 * sx)))), max(by1 + 1, min(image.shape[0], int(math.ceil(y2 * sy))))
    small = crop.astype(np.uint8)
    if (bx2 - bx1, by2 - by1) != (x2 - x1, y2 - y1):
        small = (cv2.resize(small * 255, (bx2 - bx1, by2 - by1), interpolation=cv2.INTER_AREA) > 127).astype(np.uint8)
    if not small.any():  # a sliver that vanished when scaled: keep one pixel so the object is not lost
        small[small.shape[0] // 2, small.shape[1] // 2] = 1
    if crop_to_box:
        return np.ascontiguousarray(image[by1:by2, bx1:bx2]), small
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[by1:by2, bx1:bx2] = small
    return image, mask


@dataclass
class PairBuilder:
    """Callable ``(sample, rng) -> dict of numpy arrays`` following the reference's ``process_pairs``."""

    image_size: int = 512
    reference_size: int = 224
    augment: bool = True
    reference_grow: tuple[float, float] = REFERENCE_GROW_RANGE
    box_grow: tuple[float, float] = BOX_GROW_RANGE
    crop_grow: tuple[float, float] = CROP_GROW_RANGE
    mask_channel_prob: float = 0.7
    reduced_decode: bool = True
    packed: bool = False  # uint8 images and collage (src.packed), unpacked to float on the device
    _compose: object = field(default=None, init=False, repr=False)

    def pick_frames(self, meta: dict, rng: np.random.Generator) -> tuple[int, int]:
        n = len(meta["boxes"])
        if n == 0:
            raise SampleError("bad_metadata", "sample has no frames")
        if meta.get("kind") == "image" or n == 1:
            return 0, 0
        i, j = rng.choice(n, size=2, replace=False)
        return int(i), int(j)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        try:
            meta = json.loads(sample["json"])
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            raise SampleError("bad_metadata", f"{sample.get('__key__')}: json: {e}") from e
        kind = meta.get("kind", "video") if isinstance(meta, dict) else None
        if kind not in KIND_INDEX:
            raise SampleError("bad_metadata", f"{sample.get('__key__')}: unknown kind {kind!r}")
        i, j = self.pick_frames(meta, rng)
        h, w = meta["size"]
        rb, tb = meta["boxes"][i], meta["boxes"][j]
        r_ref = r_tgt = 1
        if self.reduced_decode:
            # the object's long side ends up at reference_size / grow <= reference_size / grow_min pixels
            r_ref = _reduction(self.reference_size / self.reference_grow[0], max(rb[2] - rb[0], rb[3] - rb[1]))
            tgt_side = min(MIN_CROP_GROW * max(tb[2] - tb[0], tb[3] - tb[1]), min(h, w))
            r_tgt = _reduction(self.image_size, tgt_side)
        if i == j:
            r_ref = r_tgt = min(r_ref, r_tgt)
        target_image, target_mask = load_view(sample, meta, j, r_tgt)
        if i == j and r_ref == r_tgt:
            x1, y1, x2, y2 = mask_to_box(target_mask)
            ref_image, ref_mask = target_image[y1:y2, x1:x2], target_mask[y1:y2, x1:x2]
        else:
            ref_image, ref_mask = load_view(sample, meta, i, r_ref, crop_to_box=True)
        augment = None
        if self.augment:
            if self._compose is None:
                self._compose = reference_compose()
            augment = reference_augment(rng, self._compose)
        reference = prepare_reference(ref_image, ref_mask, rng=rng, grow_range=self.reference_grow, size=self.reference_size, augment=augment,
                                      packed=self.packed)
        target = prepare_target(
            target_image, target_mask, reference, rng=rng, box_grow=self.box_grow, crop_grow=self.crop_grow,
            size=self.image_size, mask_channel_prob=self.mask_channel_prob, packed=self.packed,
        ).sample
        return {
            "reference": reference.image,
            "target": target["target"],
            "collage": target["collage"],
            "kind": np.int64(KIND_INDEX[kind]),
            "box": target["box"],
            "object_mask": target["object_mask"],
        }
