"""Time the per-sample image ops on one core: ``python -m benchmarks.bench_ops``.

The data loader's budget is >= 40 samples/s per core for the whole sample build (25 ms).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np


def _scene(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    img = cv2.resize(rng.integers(0, 256, (h // 16, w // 16, 3)).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, h // 2), (w // 6, h // 4), 20, 0, 360, 1, -1)
    return img, mask


def _time(fn, n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="repetitions per measurement")
    parser.add_argument("--size", type=int, default=512, help="target crop side S")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args(argv)

    cv2.setNumThreads(1)  # one core, like one data-loader worker
    from src.conditioning import prepare_reference, prepare_target
    from src.highfreq import high_frequency_map
    from src.masks import perturb_mask

    rng = np.random.default_rng(0)
    img, mask = _scene(args.height, args.width, rng)
    big = cv2.resize(mask, (args.size, args.size), interpolation=cv2.INTER_NEAREST)
    ref = prepare_reference(img, mask, rng=rng)
    rows = {
        f"perturb_mask {args.size}x{args.size}": _time(lambda: perturb_mask(big, rng=rng), args.n),
        "high_frequency_map 224x224": _time(lambda: high_frequency_map((ref.image.transpose(1, 2, 0) * 255).astype(np.uint8), ref.mask), args.n),
        "prepare_reference (train)": _time(lambda: prepare_reference(img, mask, rng=rng), args.n),
        f"prepare_target (train, S={args.size})": _time(lambda: prepare_target(img, mask, ref, rng=rng, size=args.size), args.n),
    }
    both = _time(lambda: prepare_target(img, mask, prepare_reference(img, mask, rng=rng), rng=rng, size=args.size), args.n)
    for name, sec in rows.items():
        print(f"{name:40s} {sec * 1e3:7.2f} ms")
    print(f"{'whole sample (reference + target)':40s} {both * 1e3:7.2f} ms  = {1 / both:.0f} samples/s per core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
