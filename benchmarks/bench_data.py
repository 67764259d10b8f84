"""Data loader throughput: samples/s in one process (per core) and with N workers.

    python -m benchmarks.bench_data --shards data/synthetic/bench [--image-size 512] [--workers 2]

Also times decoding alone (the two JPEG frames + masks a pair needs) to show where time goes.
Single-process rates are given per wall second and per CPU second of this process: on a shared
machine the second is what one dedicated core would do.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable


def timed(fn: Callable[[], int]) -> tuple[float, float]:
    """(items per wall second, items per CPU second of this process) for ``fn() -> items``."""
    w, c = time.perf_counter(), time.process_time()
    n = fn()
    return n / (time.perf_counter() - w), n / max(time.process_time() - c, 1e-9)


def line(label: str, rates: tuple[float, float]) -> None:
    print(f"{label:<44} {rates[0]:7.1f} samples/s wall, {rates[1]:7.1f} per CPU second")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="folder written by `anydoor shards`")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--reference-size", type=int, default=224)
    parser.add_argument("--samples", type=int, default=300, help="samples timed per measurement")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    import cv2
    import numpy as np
    import torch
    import webdataset as wds

    from datamodules.anydoor_datamodule import AnyDoorDataModule
    from datamodules.components.pairs import PairBuilder
    from datamodules.components.shard_format import decode_frame, decode_mask_crop
    from datamodules.components.shard_lists import resolve

    # one core for the single-process numbers (OpenCV and torch would otherwise use every core)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    sources, counts = resolve(args.shards)
    urls = [u for v in sources.values() for u in v]
    first = next(iter(wds.WebDataset(urls[:1], shardshuffle=False)))
    meta = json.loads(first["json"])
    print(f"shards: {args.shards} ({sum(len(v) for v in sources.values())} shards, {sum(counts.values())} samples, "
          f"frames {meta['size'][1]}x{meta['size'][0]}); crops {args.image_size} px, reference {args.reference_size} px")

    samples = list(wds.WebDataset(urls, shardshuffle=False))
    rng = np.random.default_rng(0)
    n = args.samples

    def decode_only() -> int:
        for k in range(n):
            s = samples[k % len(samples)]
            m = json.loads(s["json"])
            for i in rng.choice(len(m["boxes"]), size=min(2, len(m["boxes"])), replace=False):
                decode_frame(s, int(i))
                decode_mask_crop(s, int(i))
        return n

    line("decode only (2 full frames + masks)", timed(decode_only))

    builder = PairBuilder(image_size=args.image_size, reference_size=args.reference_size)
    for k in range(20):
        builder(samples[k % len(samples)], rng)

    def build() -> int:
        for k in range(n):
            builder(samples[k % len(samples)], rng)
        return n

    line("pair build, 1 process (samples in memory)", timed(build))

    dm = AnyDoorDataModule(args.shards, batch_size=args.batch_size, num_workers=0, image_size=args.image_size,
                           reference_size=args.reference_size, samples_per_epoch=n + 8 * args.batch_size)
    it = iter(dm.train_dataloader())
    for _ in range(8):
        next(it)
    line("loader, 1 process (shards -> batches)", timed(lambda: sum(len(b["kind"]) for b in it)))

    if args.workers > 0:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        dm = AnyDoorDataModule(args.shards, batch_size=args.batch_size, num_workers=args.workers, image_size=args.image_size,
                               reference_size=args.reference_size, samples_per_epoch=2 * n + 16 * args.batch_size * args.workers)
        it = iter(dm.train_dataloader())
        for _ in range(4 * args.workers):
            next(it)
        t = time.perf_counter()
        got = sum(len(b["kind"]) for b in it)
        multi = got / (time.perf_counter() - t)
        print(f"{f'loader, {args.workers} worker processes':<44} {multi:7.1f} samples/s wall ({multi / args.workers:.1f} per worker)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
