import cv2
import numpy as np
import pytest

from src.highfreq import high_frequency_map


def _textured(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3)).astype(np.uint8), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    img = np.clip(img.astype(int) + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, h // 2), (w // 3, h // 3), 0, 0, 360, 1, -1)
    return img, mask


def _eroded_mask_at(mask, h, w):
    small = cv2.resize(mask.astype(np.float32), (256, 256)) > 0.5
    er = cv2.erode(small.astype(np.uint8), np.ones((5, 5), np.uint8), iterations=2)
    return er


def test_shape_dtype_and_zero_outside_eroded_mask_at_256():
    img, mask = _textured(256, 256)
    hf = high_frequency_map(img, mask)
    assert hf.shape == img.shape and hf.dtype == np.uint8
    eroded = _eroded_mask_at(mask, 256, 256)
    assert hf[eroded == 0].max() == 0
    assert (hf[eroded > 0] > 0).mean() > 0.3  # the texture does produce edges inside
    # values are <= the image: the map is the image gated by edge strength
    assert (hf.astype(int) <= img.astype(int)).all()


def test_zero_outside_mask_any_size_and_background_irrelevant():
    img, mask = _textured(300, 180, seed=1)
    hf = high_frequency_map(img, mask)
    assert hf[mask == 0].max() == 0
    other = img.copy()
    other[mask == 0] = 17  # pixels outside the object must not matter
    assert np.array_equal(high_frequency_map(other, mask), hf)


def test_flat_object_has_no_high_frequency():
    img = np.full((128, 128, 3), 90, np.uint8)
    mask = np.zeros((128, 128), np.uint8)
    mask[20:100, 20:100] = 1
    assert high_frequency_map(img, mask).max() == 0


def test_threshold_hand_computed_step_edge():
    # A vertical step from 0 to v inside the mask: Sobel-x = 4 v at the step, Sobel-y = 0,
    # averaged -> 2 v (saturated at 255). 2 v < 50 is zeroed; above it the brighter side keeps its value.
    mask = np.ones((256, 256), np.uint8)
    for v, expect_edges in ((20, False), (30, True)):
        img = np.zeros((256, 256, 3), np.uint8)
        img[:, 128:] = v
        hf = high_frequency_map(img, mask)
        if expect_edges:
            # column 128 (bright side of the step): gradient min(4v,255)->avg 2v=60; 60/255 * 30 = 7.05 -> 7
            assert hf[100, 128, 0] == int(60 / 255 * v) and hf[100, 127].max() == 0
        else:
            assert hf.max() == 0


def test_bad_inputs():
    with pytest.raises(ValueError):
        high_frequency_map(np.zeros((8, 8, 3), np.float32), np.ones((8, 8)))
    with pytest.raises(ValueError):
        high_frequency_map(np.zeros((8, 8, 3), np.uint8), np.ones((9, 8)))


def _float64_reference(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The earlier formulation (float64 Sobel, float32 product), kept to show the integer one is identical."""
    h, w = image.shape[:2]
    fg = (mask > 0)[..., None]
    img = cv2.resize(np.where(fg, image, np.uint8(255)), (256, 256), interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(fg[..., 0].astype(np.float32), (256, 256), interpolation=cv2.INTER_LINEAR)
    eroded = cv2.erode((small > 0.5).astype(np.uint8), np.ones((5, 5), np.uint8), iterations=2)
    gx = cv2.convertScaleAbs(cv2.Sobel(img, cv2.CV_64F, 1, 0, ksize=3))
    gy = cv2.convertScaleAbs(cv2.Sobel(img, cv2.CV_64F, 0, 1, ksize=3))
    edges = cv2.addWeighted(gx, 0.5, gy, 0.5, 0).max(axis=-1) * eroded
    edges[edges < 50] = 0
    hf = (edges[..., None].astype(np.float32) / 255.0 * img.astype(np.float32)).astype(np.uint8)
    return cv2.resize(hf, (w, h), interpolation=cv2.INTER_LINEAR)


def test_integer_arithmetic_equals_the_float_formulation():
    rng = np.random.default_rng(3)
    for shape in ((224, 224), (97, 301)):
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        mask = np.zeros(shape, np.uint8)
        mask[10:-10, 20:-20] = 1
        np.testing.assert_array_equal(high_frequency_map(image, mask), _float64_reference(image, mask))
    e, i = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    exact = (e * i) // 255  # every (edge, pixel) pair
    np.testing.assert_array_equal(exact, (e.astype(np.float32) / 255.0 * i.astype(np.float32)).astype(np.uint8))
