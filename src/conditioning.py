"""End-to-end conditioning builders shared by the training data pipeline and inference.

Order of operations follows the reference ``process_pairs``:

reference: object box -> object on white, cropped to the box -> canvas grown (white) by a ratio ->
padded to a square (white) -> resized to 224 -> optional augmentation -> high-frequency map.

target: object box -> expanded by a ratio (the box the hint fills) -> expanded again by a larger
ratio and made square (the crop) -> crop padded (black) to a square and resized to S -> hint
resized into the box -> location channel: the box, or (training, 70 %) a perturbed object mask.

With ``rng`` the ratios and the mask-channel choice are drawn (training, from the ``*_RANGE``s);
with ``rng=None`` fixed values are used (inference, evaluation), so the same inputs give the same
sample. A model folder says which fixed values fit its model (``Preprocessing``, docs/ops.md):
the centre of the training ranges for a model trained here, the authors' own for their checkpoint.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Mapping, NamedTuple, Sequence

import cv2
import numpy as np

from src.collage import build_collage, to_signed_chw
from src.geometry import Box, box_fraction, expand_box, expand_box_random, mask_to_box, square_box
from src.highfreq import high_frequency_map
from src.image_ops import CropTransform, grow_canvas, on_white, pad_to_square
from src.masks import perturb_mask

# Training ranges (uniform draws): the reference's canvas margin, the target box growth (the box the
# hint fills) and the context crop around that box. The authors draw from 0.1 grids with exclusive
# upper bounds (margin 1.1-1.4, box 1.1 only, crop 1.3-2.9); docs/ops.md says why ours differ.
REFERENCE_GROW_RANGE = (1.1, 1.5)
BOX_GROW_RANGE = (1.1, 1.2)
CROP_GROW_RANGE = (1.3, 3.0)
MASK_PAD_VALUE = -1.0  # location channel on the crop's padding (the authors' training value)


class Preprocessing(NamedTuple):
    """The fixed geometry of inference (``rng=None``); a model folder records the one its model fits."""

    reference_margin: float  # reference canvas grown by this around the object
    box_ratio: float  # target box grown by this: the box the hint fills
    crop_ratio: float  # context crop around the grown box
    mask_pad_value: float = MASK_PAD_VALUE  # location channel on padding

    @classmethod
    def centre_of(cls, reference_range: Sequence[float] = REFERENCE_GROW_RANGE,
                  box_range: Sequence[float] = BOX_GROW_RANGE,
                  crop_range: Sequence[float] = CROP_GROW_RANGE) -> "Preprocessing":
        """The middle of each training range: where a model trained on them has seen the most."""
        mid = lambda r: round((float(r[0]) + float(r[1])) / 2, 6)  # noqa: E731
        return cls(mid(reference_range), mid(box_range), mid(crop_range))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], what: str = "preprocessing") -> "Preprocessing":
        unknown = set(config) - set(cls._fields)
        missing = [k for k in cls._fields[:3] if k not in config]
        if unknown or missing:
            raise ValueError(f"{what}: unknown keys {sorted(unknown)}, missing {missing} (keys: {cls._fields})")
        return cls(**{k: float(v) for k, v in config.items()})


DEFAULT_PREPROCESSING = Preprocessing.centre_of()
# The authors' run_inference.py: reference margin randint(12, 13) / 10 = 1.2, box randint(11, 12) / 10
# = 1.1, crop drawn from 1.5-2.9 (centre 2.2), and padding -1 cast to uint8 (255), which its > 0.5
# test turns into 1: their released model is run with padding marked 1, though trained with -1.
AUTHORS_PREPROCESSING = Preprocessing(reference_margin=1.2, box_ratio=1.1, crop_ratio=2.2, mask_pad_value=1.0)
DEFAULT_REFERENCE_GROW, DEFAULT_BOX_GROW, DEFAULT_CROP_GROW = DEFAULT_PREPROCESSING[:3]

Augment = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class PreparedReference(NamedTuple):
    image: np.ndarray  # float32 3 x S x S in [0, 1]: DINOv2 input (augmented when augment is given)
    hint: np.ndarray | None  # uint8 S x S x 3 high-frequency map (None when compute_hint=False)
    mask: np.ndarray  # uint8 S x S in {0, 1}: the object in ``image``


class PreparedTarget(NamedTuple):
    sample: dict[str, np.ndarray]  # target, collage, box, object_mask (docs/design.md)
    transform: CropTransform  # full image <-> S x S crop; paste_back for inference
    box: Box  # the grown box the collage fills, in full-image pixels (compositing's "box" region)


def _check_image(image: np.ndarray, what: str) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 H x W x 3 RGB, got {image.dtype} {image.shape}")


def _check_mask(mask: np.ndarray, image: np.ndarray, what: str) -> None:
    if mask.shape != image.shape[:2]:
        raise ValueError(f"{what} mask shape {mask.shape} does not match its image {image.shape[:2]}")


def _resize_square(image: np.ndarray, size: int) -> np.ndarray:
    # Area averaging when shrinking avoids aliasing large objects into DINOv2; linear when enlarging.
    interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def prepare_reference(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    rng: np.random.Generator | None = None,
    grow_range: Sequence[float] = REFERENCE_GROW_RANGE,
    margin: float = DEFAULT_REFERENCE_GROW,
    size: int = 224,
    augment: Augment | None = None,
    compute_hint: bool = True,
    packed: bool = False,
) -> PreparedReference:
    """The reference object on white, framed with a margin, as the ID encoder's input plus its hint.

    The canvas grows by a ratio drawn from ``grow_range`` with ``rng``, else by ``margin``.

    ``augment(image_uint8, mask_uint8) -> (image, mask)`` runs on the ``size`` px square before the
    hint, so the hint and the DINOv2 input see the same flip/colour change (as in the reference).
    Raises ``ValueError`` for an empty mask. ``packed``: ``image`` stays uint8 (3 x S x S, 0-255),
    the training loader's form (``src.packed``).
    """
    _check_image(image, "reference image")
    _check_mask(mask, image, "reference")
    x1, y1, x2, y2 = mask_to_box(mask)
    fg = mask[y1:y2, x1:x2] > 0
    white = on_white(image[y1:y2, x1:x2], fg)
    obj = fg.astype(np.uint8) * 255
    ratio = float(rng.uniform(*grow_range)) if rng is not None else margin
    white, obj = grow_canvas(white, obj, ratio)
    white, _ = pad_to_square(white, 255)
    obj, _ = pad_to_square(obj, 0)
    ref = _resize_square(white, size)
    ref_mask = (_resize_square(obj, size) > 127).astype(np.uint8)
    if augment is not None:
        ref, ref_mask = augment(ref, ref_mask)
        if ref.shape != (size, size, 3) or ref_mask.shape != (size, size):
            raise ValueError(f"augment changed the shapes to {ref.shape} / {ref_mask.shape}; it must keep {size} x {size}")
        ref = np.ascontiguousarray(ref, dtype=np.uint8)
        ref_mask = (np.asarray(ref_mask) > 0).astype(np.uint8)
    hint = high_frequency_map(ref, ref_mask) if compute_hint else None
    if packed:
        return PreparedReference(np.ascontiguousarray(ref.transpose(2, 0, 1)), hint, ref_mask)
    image_chw = np.ascontiguousarray(ref.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
    return PreparedReference(image_chw, hint, ref_mask)


def prepare_target(
    image: np.ndarray,
    mask_or_box: np.ndarray | Sequence[int],
    reference: PreparedReference | np.ndarray,
    *,
    rng: np.random.Generator | None = None,
    box_grow: Sequence[float] = BOX_GROW_RANGE,
    crop_grow: Sequence[float] = CROP_GROW_RANGE,
    size: int = 512,
    mask_channel_prob: float = 0.7,
    perturb_iou: Sequence[float] = (0.3, 0.99),
    mask_channel: Literal["random", "box", "mask"] | None = None,
    max_box_fraction: float | None = None,
    box_ratio: float = DEFAULT_BOX_GROW,
    crop_ratio: float = DEFAULT_CROP_GROW,
    mask_pad_value: float = MASK_PAD_VALUE,
    packed: bool = False,
) -> PreparedTarget:
    """The target crop, its collage and the geometry to paste a generation back.

    ``mask_or_box`` is the object's ``H x W`` mask (training, or a user mask) or an ``(x1, y1, x2,
    y2)`` box (inference from a box; the object mask is then the box). ``reference`` is a
    ``PreparedReference`` or its hint directly. ``mask_channel``: "random" (default with ``rng``) is
    the perturbed object mask with probability ``mask_channel_prob``, else the box; "box" (default
    without ``rng``) is the expanded box; "mask" is the unperturbed object mask (a user's mask).
    ``box_ratio`` / ``crop_ratio`` are the fixed growth factors used without ``rng`` (inference);
    ``mask_pad_value`` marks the crop's padding in the location channel.
    ``max_box_fraction`` (the reference uses 0.8 in training) raises ``ValueError`` when the
    expanded box spans more than that fraction of the image width or height.

    Sample: ``target`` float32 3 x S x S in [-1, 1]; ``collage`` float32 4 x S x S (see
    ``build_collage``); ``box`` int64 (4,) in crop pixels; ``object_mask`` float32 1 x S x S {0, 1}.
    ``packed``: the same sample in bytes, as the training loader ships it (``src.packed``: uint8
    ``target``, collage with location + 1, ``object_mask``); ``src.packed.unpack_batch`` gives back
    the float form on the device.
    """
    _check_image(image, "target image")
    hint = reference.hint if isinstance(reference, PreparedReference) else reference
    if hint is None:
        raise ValueError("the reference has no hint: call prepare_reference(compute_hint=True)")
    hw = image.shape[:2]
    if isinstance(mask_or_box, np.ndarray) and mask_or_box.ndim == 2:
        _check_mask(mask_or_box, image, "target")
        full_mask = (mask_or_box > 0).astype(np.uint8)
        obj_box: Box = mask_to_box(full_mask)
        have_mask = True
    else:
        obj_box = expand_box(mask_or_box, 1.0, hw)  # validates and clips
        if obj_box[2] == obj_box[0] or obj_box[3] == obj_box[1]:
            raise ValueError(f"target box {tuple(mask_or_box)} has no area inside the {hw[1]} x {hw[0]} image")
        full_mask = np.zeros(hw, np.uint8)
        full_mask[obj_box[1] : obj_box[3], obj_box[0] : obj_box[2]] = 1
        have_mask = False

    mode = mask_channel or ("random" if rng is not None else "box")
    if mode == "random" and rng is None:
        raise ValueError('mask_channel="random" needs an rng')
    if mode == "mask" and not have_mask:
        raise ValueError('mask_channel="mask" needs a target mask, not a box')
    if mode not in ("random", "box", "mask"):
        raise ValueError(f'mask_channel must be "random", "box" or "mask", got {mode!r}')

    if rng is not None:
        box = expand_box_random(obj_box, box_grow, hw, rng)
        crop = expand_box_random(box, crop_grow, hw, rng)
    else:
        box = expand_box(obj_box, box_ratio, hw)
        crop = expand_box(box, crop_ratio, hw)
    if max_box_fraction is not None and max(box_fraction(box, hw)) > max_box_fraction:
        fw, fh = box_fraction(box, hw)
        raise ValueError(f"target box spans {fw:.2f} x {fh:.2f} of the image, more than max_box_fraction={max_box_fraction}")
    transform = CropTransform(square_box(crop, hw), size)

    target = transform.apply(image, pad_value=0)
    object_mask = transform.apply(full_mask, pad_value=0, interpolation=cv2.INTER_NEAREST)
    crop_box = transform.box_to_crop(box)

    channel_mask = None
    if mode == "mask":
        channel_mask = object_mask
    elif mode == "random" and rng.random() < mask_channel_prob and object_mask.any():
        channel_mask = perturb_mask(object_mask, perturb_iou, rng)
    collage = build_collage(target, crop_box, hint, mask=channel_mask, valid=transform.valid_box(),
                            pad_value=mask_pad_value, packed=packed)

    sample = {
        "target": np.ascontiguousarray(target.transpose(2, 0, 1)) if packed else to_signed_chw(target),
        "collage": collage,
        "box": np.asarray(crop_box, dtype=np.int64),
        "object_mask": object_mask[None].astype(np.uint8 if packed else np.float32),
    }
    return PreparedTarget(sample, transform, box)
