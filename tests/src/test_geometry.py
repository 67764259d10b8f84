import numpy as np
import pytest

from src.geometry import (
    box_fraction,
    box_size,
    clip_box,
    expand_box,
    expand_box_random,
    mask_to_box,
    scale_box,
    square_box,
)


def test_mask_to_box_exclusive_ends():
    mask = np.zeros((10, 20), np.uint8)
    mask[2:5, 3:9] = 1  # rows 2..4, cols 3..8
    assert mask_to_box(mask) == (3, 2, 9, 5)
    x1, y1, x2, y2 = mask_to_box(mask)
    assert mask[y1:y2, x1:x2].sum() == mask.sum()


def test_mask_to_box_single_pixel_and_bool():
    mask = np.zeros((4, 4), bool)
    mask[3, 0] = True
    assert mask_to_box(mask) == (0, 3, 1, 4)


def test_mask_to_box_empty_raises():
    with pytest.raises(ValueError, match="empty"):
        mask_to_box(np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match="2-D"):
        mask_to_box(np.zeros((5, 5, 3), np.uint8))


def test_clip_box():
    assert clip_box((-5, -2, 30, 8), (10, 20)) == (0, 0, 20, 8)
    assert clip_box((25, 12, 30, 15), (10, 20)) == (20, 10, 20, 10)  # outside: empty, not inverted


def test_expand_box_hand_computed():
    # 20 x 40 box centred at (20, 40); ratio 1.5 -> 30 x 60 centred at the same point
    assert expand_box((10, 20, 30, 60), 1.5, (100, 100)) == (5, 10, 35, 70)
    assert expand_box((10, 20, 30, 60), 1.0, (100, 100)) == (10, 20, 30, 60)
    assert expand_box((10, 20, 30, 60), 0.5, (100, 100)) == (15, 30, 25, 50)
    # odd growth: 10 -> 13 px centred on 25 spans 18.5..31.5, the start floored -> 18..31
    assert expand_box((20, 20, 30, 30), 1.3, (100, 100)) == (18, 18, 31, 31)


def test_expand_box_clips_to_image():
    assert expand_box((0, 0, 10, 10), 3.0, (50, 20)) == (0, 0, 20, 20)
    assert expand_box((40, 40, 50, 50), 2.0, (50, 60)) == (35, 35, 55, 50)


def test_expand_box_random_reproducible_and_in_range():
    box, hw = (40, 40, 60, 80), (200, 200)
    a = [expand_box_random(box, (1.3, 3.0), hw, np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(0)
    for _ in range(50):
        w, h = box_size(expand_box_random(box, (1.3, 3.0), hw, rng))
        assert 26 <= w <= 60 and 52 <= h <= 120


def test_square_box_centred_when_it_fits():
    assert square_box((40, 10, 60, 50), (100, 100)) == (30, 10, 70, 50)
    assert square_box((10, 40, 50, 60), (100, 100)) == (10, 30, 50, 70)


def test_square_box_shifted_inside_not_clipped():
    # side 40 around x-centre 5 would start at -15: shifted to 0
    sq = square_box((0, 10, 10, 50), (100, 100))
    assert sq == (0, 10, 40, 50)
    sq = square_box((90, 60, 100, 100), (100, 100))
    assert sq == (60, 60, 100, 100)


def test_square_box_larger_than_image_spans_it():
    # box 20 wide x 80 high in a 100 (h) x 50 (w) image: side 80 > width 50
    sq = square_box((10, 10, 30, 90), (100, 50))
    assert sq == (0, 10, 50, 90)


def test_square_box_contains_input_randomised():
    rng = np.random.default_rng(1)
    for _ in range(200):
        h, w = rng.integers(10, 200, 2)
        x1, x2 = np.sort(rng.integers(0, w + 1, 2))
        y1, y2 = np.sort(rng.integers(0, h + 1, 2))
        if x2 == x1 or y2 == y1:
            continue
        sx1, sy1, sx2, sy2 = square_box((x1, y1, x2, y2), (h, w))
        assert sx1 <= x1 and sy1 <= y1 and sx2 >= x2 and sy2 >= y2
        assert 0 <= sx1 and 0 <= sy1 and sx2 <= w and sy2 <= h
        side = max(x2 - x1, y2 - y1)
        assert (sx2 - sx1, sy2 - sy1) == (min(side, w), min(side, h))


def test_scale_box_never_shrinks():
    assert scale_box((10, 10, 20, 20), 2.0) == (20, 20, 40, 40)
    assert scale_box((1, 1, 3, 3), 0.5) == (0, 0, 2, 2)
    assert scale_box((10, 0, 20, 100), 512 / 100) == (51, 0, 103, 512)


def test_bad_box_raises():
    with pytest.raises(ValueError):
        expand_box((10, 10, 5, 20), 1.2, (50, 50))
    with pytest.raises(ValueError):
        expand_box((0, 0, 5), 1.2, (50, 50))


def test_box_fraction():
    assert box_fraction((10, 20, 30, 60), (100, 50)) == (0.4, 0.4)
