"""Job images on disk for the job-schema and `anydoor generate` tests (tests only)."""

from pathlib import Path

import numpy as np
from PIL import Image


def write_job_images(folder: Path, ref_hw: tuple[int, int], target_hw: tuple[int, int], rgb_ext: str = "png") -> None:
    """``ref.png`` (RGBA, object = alpha), ``ref_rgb.<rgb_ext>`` + ``ref_mask.png``, ``scene.png``:
    random pixels, the object the middle of the reference."""
    rng = np.random.default_rng(0)
    (h, w), (th, tw) = ref_hw, target_hw
    ref = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    ref[..., 3] = 0
    ref[h // 6 : h - h // 6, w // 6 : w - w // 4, 3] = 255
    Image.fromarray(ref).save(folder / "ref.png")
    Image.fromarray(ref[..., :3].copy()).save(folder / f"ref_rgb.{rgb_ext}")
    Image.fromarray(ref[..., 3].copy()).save(folder / "ref_mask.png")
    Image.fromarray(rng.integers(0, 256, (th, tw, 3), dtype=np.uint8)).save(folder / "scene.png")
