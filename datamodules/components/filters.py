"""The reference's pack-time object rules: area 1%-64% of the frame, one dominant connected part."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from src.masks import mask_area_ratio, mask_connectivity


@dataclass(frozen=True)
class MaskRules:
    min_area: float = 0.01
    max_area: float = 0.64
    min_connectivity: float = 0.9
    min_pixels: int = 2  # empty and one-pixel masks are rejected outright

    def check(self, mask: np.ndarray) -> str | None:
        """The rejection reason for one object mask in one frame, or None when it passes."""
        n = int(np.count_nonzero(mask))
        if n < self.min_pixels:
            return "mask_empty"
        ratio = mask_area_ratio(mask)
        if ratio < self.min_area:
            return "area_too_small"
        if ratio > self.max_area:
            return "area_too_large"
        if mask_connectivity(mask) < self.min_connectivity:
            return "fragmented"
        return None
