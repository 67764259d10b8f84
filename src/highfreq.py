"""The high-frequency map of the reference object (AnyDoor Sec. 3.3), pasted into the collage as the detail hint.

Definition (reference ``sobel``): composite the object onto white, resize to 256 x 256, Sobel 3x3 in x
and y, average the absolute values, take the max over RGB, multiply by the object mask eroded twice
by a 5x5 kernel, zero values under 50/255, multiply with the image, resize back.

One implementation, OpenCV on uint8, for training data and inference alike: it costs ~4 ms per
224 px reference, nothing next to a generation, and a GPU copy could not reproduce OpenCV's
fixed-point uint8 resizes, so the model would see slightly different hints at inference.
"""

from __future__ import annotations

import cv2
import numpy as np

from src.image_ops import on_white

WORK_SIZE = 256
THRESHOLD = 50  # on the 0..255 gradient scale
ERODE_KERNEL = 5
ERODE_ITERATIONS = 2


def high_frequency_map(image: np.ndarray, mask: np.ndarray, *, threshold: int = THRESHOLD) -> np.ndarray:
    """uint8 ``H x W x 3`` high-frequency map of ``image`` (uint8 RGB) inside ``mask`` (H x W, non-zero = object).

    Zero outside the mask eroded by 4 px at 256 x 256 scale; pixels outside the mask never affect the
    result, so the image need not be on white already.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 H x W x 3, got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {image.shape[:2]}")
    h, w = image.shape[:2]
    fg = mask > 0
    img = cv2.resize(on_white(image, fg), (WORK_SIZE, WORK_SIZE), interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(fg.astype(np.float32), (WORK_SIZE, WORK_SIZE), interpolation=cv2.INTER_LINEAR)
    kernel = np.ones((ERODE_KERNEL, ERODE_KERNEL), np.uint8)
    eroded = cv2.erode((small > 0.5).astype(np.uint8), kernel, iterations=ERODE_ITERATIONS)
    # int16 holds a 3x3 Sobel of uint8 exactly (|g| <= 1020): same values as float64, 2.5x faster
    gx = cv2.convertScaleAbs(cv2.Sobel(img, cv2.CV_16S, 1, 0, ksize=3))
    gy = cv2.convertScaleAbs(cv2.Sobel(img, cv2.CV_16S, 0, 1, ksize=3))
    mean_abs = cv2.addWeighted(gx, 0.5, gy, 0.5, 0)
    # Channel max as two elementwise maxima: 1.8 ms -> 0.07 ms at 256 px vs .max(axis=-1).
    edges = np.maximum(np.maximum(mean_abs[..., 0], mean_abs[..., 1]), mean_abs[..., 2]) * eroded
    edges[edges < threshold] = 0
    # floor(edges * img / 255) in integers: equal to the float32 product truncated for all 256 x 256
    # operand pairs (checked exhaustively in tests/src/test_highfreq.py), without float temporaries
    hf = ((edges[..., None].astype(np.uint16) * img) // 255).astype(np.uint8)
    return cv2.resize(hf, (w, h), interpolation=cv2.INTER_LINEAR)
