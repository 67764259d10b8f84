"""The reference's object rules, applied at pack time: area 1%-64% of the frame, one dominant
connected part, and a box at least 10% of the frame on each side (its ``check_region_size``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from src.geometry import box_fraction, mask_to_box
from src.masks import mask_area_ratio, mask_connectivity


@dataclass(frozen=True)
class MaskRules:
    min_area: float = 0.01
    max_area: float = 0.64
    min_connectivity: float = 0.9
    min_box_side: float = 0.1
    min_pixels: int = 2  # a one-pixel mask has no shape to learn from

    def __post_init__(self) -> None:
        if not 0 <= self.min_area <= self.max_area <= 1:
            raise ValueError(f"need 0 <= --min-area <= --max-area <= 1, got {self.min_area} and {self.max_area}")
        if not 0 <= self.min_connectivity <= 1 or not 0 <= self.min_box_side <= 1:
            raise ValueError("--min-connectivity and --min-box-side are shares between 0 and 1")

    def check(self, mask: np.ndarray) -> str | None:
        """The rejection reason for one object mask in one frame, or None when it passes."""
        n = int(np.count_nonzero(mask))
        if n == 0:
            return "mask_empty"
        if n < self.min_pixels:
            return "mask_too_small"
        ratio = mask_area_ratio(mask)
        if ratio < self.min_area:
            return "area_too_small"
        if ratio > self.max_area:
            return "area_too_large"
        if min(box_fraction(mask_to_box(mask), mask.shape)) < self.min_box_side:
            return "box_too_small"
        if mask_connectivity(mask) < self.min_connectivity:
            return "fragmented"
        return None
