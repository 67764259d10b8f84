"""The pack-time object rules, one reason each."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.packing.filters import MaskRules


def mask_with(*rects: tuple[int, int, int, int], hw=(100, 100)) -> np.ndarray:
    m = np.zeros(hw, np.uint8)
    for x1, y1, x2, y2 in rects:
        m[y1:y2, x1:x2] = 1
    return m


@pytest.mark.parametrize(
    "mask, reason",
    [
        (mask_with(), "mask_empty"),
        (mask_with((5, 5, 6, 6)), "mask_too_small"),  # one pixel
        (mask_with((0, 0, 9, 9)), "area_too_small"),  # 0.81 %
        (mask_with((0, 0, 90, 90)), "area_too_large"),  # 81 %
        (mask_with((0, 0, 100, 5)), "box_too_small"),  # 5 % area but only 5 % of the height
        (mask_with((0, 0, 20, 20), (50, 50, 70, 70)), "fragmented"),  # two equal parts: connectivity 0.5
        (mask_with((0, 0, 30, 30), (90, 90, 92, 92)), None),  # a speck: connectivity 0.996
        (mask_with((10, 10, 60, 60)), None),
    ],
)
def test_rules(mask, reason):
    assert MaskRules().check(mask) == reason


def test_rules_out_of_range_are_refused():
    with pytest.raises(ValueError, match="--min-area"):
        MaskRules(min_area=0.5, max_area=0.2)
    with pytest.raises(ValueError, match="--min-connectivity"):
        MaskRules(min_connectivity=1.5)
