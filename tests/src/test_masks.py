import time

import cv2
import numpy as np
import pytest

from src.masks import largest_component, mask_area_ratio, mask_connectivity, mask_iou, perturb_mask


def _blob(h=128, w=128):
    m = np.zeros((h, w), np.uint8)
    cv2.circle(m, (w // 2, h // 2), min(h, w) // 4, 1, -1)
    m[h // 4 : 3 * h // 4, w // 5 : w // 3] = 1
    return m


def test_mask_area_ratio():
    m = np.zeros((10, 10), np.uint8)
    m[:5, :4] = 255
    assert mask_area_ratio(m) == pytest.approx(0.2)


def test_connectivity_and_largest_component():
    m = np.zeros((20, 20), np.uint8)
    m[0:6, 0:5] = 1  # 30 px
    m[10:20, 10:20] = 1  # 100 px
    m[0, 19] = 1  # 1 px
    assert mask_connectivity(m) == pytest.approx(100 / 131)
    lc = largest_component(m)
    assert lc.dtype == np.uint8 and lc.sum() == 100 and lc[10:20, 10:20].all()
    assert mask_connectivity(lc) == 1.0
    # diagonal neighbours are connected (8-connectivity)
    d = np.eye(5, dtype=np.uint8)
    assert mask_connectivity(d) == 1.0


def test_empty_mask_filters():
    e = np.zeros((8, 8), np.uint8)
    assert mask_connectivity(e) == 0.0 and mask_area_ratio(e) == 0.0 and largest_component(e).sum() == 0


def test_mask_iou():
    a = np.zeros((4, 4), np.uint8)
    b = np.zeros((4, 4), np.uint8)
    a[:2] = 1
    b[1:3] = 1
    assert mask_iou(a, b) == pytest.approx(4 / 12)


@pytest.mark.parametrize("iou_range", [(0.3, 0.99), (0.5, 0.6), (0.9, 0.95)])
def test_perturbed_masks_land_in_iou_range_and_are_connected(iou_range):
    gt = _blob()
    rng = np.random.default_rng(0)
    ious = []
    for _ in range(60):
        p = perturb_mask(gt, iou_range, rng)
        assert p.dtype == np.uint8 and p.shape == gt.shape and set(np.unique(p)) <= {0, 1}
        assert mask_connectivity(p) == 1.0
        ious.append(mask_iou(p, gt))
    assert min(ious) >= iou_range[0] - 1e-3 and max(ious) <= iou_range[1] + 1e-3
    # the draw is spread over the range, not stuck at one end
    assert np.ptp(ious) > 0.5 * (iou_range[1] - iou_range[0])


def test_perturb_both_dilates_and_erodes():
    gt = _blob()
    rng = np.random.default_rng(3)
    sizes = [perturb_mask(gt, (0.5, 0.8), rng).sum() for _ in range(40)]
    assert min(sizes) < gt.sum() < max(sizes)


def test_perturb_reproducible_from_seed():
    gt = _blob()
    a = perturb_mask(gt, rng=np.random.default_rng(42))
    b = perturb_mask(gt, rng=np.random.default_rng(42))
    c = perturb_mask(gt, rng=np.random.default_rng(43))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_perturb_edge_cases():
    rng = np.random.default_rng(0)
    full = np.ones((32, 32), np.uint8)
    p = perturb_mask(full, (0.5, 0.7), rng)  # cannot dilate: erodes
    assert 0.5 - 1e-3 <= mask_iou(p, full) <= 0.7 + 1e-3
    assert perturb_mask(np.zeros((16, 16), np.uint8), rng=rng).sum() == 0
    with pytest.raises(ValueError):
        perturb_mask(_blob(), (0.9, 0.3), rng)
    with pytest.raises(ValueError, match="rng"):
        perturb_mask(_blob())


def test_perturb_speed_512():
    gt = _blob(512, 512)
    rng = np.random.default_rng(0)
    perturb_mask(gt, rng=rng)
    n = 20
    t0 = time.perf_counter()
    for _ in range(n):
        perturb_mask(gt, rng=rng)
    per_call = (time.perf_counter() - t0) / n
    print(f"perturb_mask 512x512: {per_call * 1e3:.1f} ms/call")
    assert per_call < 0.1  # generous for a loaded shared 2-core machine; ~7 ms measured


def test_perturb_fragmented_mask_keeps_largest_part():
    gt = np.zeros((64, 64), np.uint8)
    gt[0:30, 0:30] = 1  # 900 px
    gt[55:60, 55:60] = 1  # 25 px, 25 px away: connectivity 900 / 925
    rng = np.random.default_rng(0)
    for _ in range(10):
        p = perturb_mask(gt, (0.7, 0.99), rng)  # at most ~400 px added: the parts never merge
        assert mask_connectivity(p) == 1.0 and p[55:60, 55:60].sum() == 0
        assert 0.7 - 1e-3 <= mask_iou(p, gt) <= 900 / 925 + 1e-3  # capped by the dropped part


def test_largest_component_on_the_bounding_box_equals_full_image_labelling():
    import cv2

    rng = np.random.default_rng(5)
    for _ in range(20):
        m = (rng.random((64, 80)) < 0.08).astype(np.uint8)
        m[rng.integers(0, 60):, rng.integers(0, 70):][:4, :6] = 1  # some blocks, some ties between specks
        _, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        full = (labels == int(np.argmax(stats[1:, cv2.CC_STAT_AREA])) + 1).astype(np.uint8)
        np.testing.assert_array_equal(largest_component(m), full)


def test_smooth_noise_is_opencv_bicubic_upsampling():
    import cv2

    from src.masks import _smooth_noise

    for cells, shape in ((3, (512, 512)), (8, (300, 517)), (5, (7, 1))):
        got = _smooth_noise(shape, np.random.default_rng(cells), cells)
        coarse = np.random.default_rng(cells).standard_normal((cells + 1, cells + 1)).astype(np.float32)
        want = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).reshape(shape)
        assert got.shape == shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-5)
