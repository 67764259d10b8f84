"""Data loader throughput and page faults: decoding alone, pair building, the whole loader, with N workers.

    python -m benchmarks.bench_data --shards data/synthetic/bench [--image-size 512] [--workers 2]

Rates are samples per wall second and per CPU second of the process that did the work (on a
shared machine the second is what one dedicated core would do); minor page faults per sample come
from ``resource.getrusage``. With ``--workers N`` the workers' CPU time and faults are read from
``RUSAGE_CHILDREN`` once the loader has shut them down.

The script measures whatever ``datamodules`` package comes first on the path, so the same
measurement runs against another checkout. ``--against DIR --repeat N`` does an A/B comparison:
N rounds, each running this script once on DIR's code and once on this checkout's, in separate
processes and alternating which goes first, then prints every run and the medians (docs/data.md, "Speed").
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # this checkout
# The authors' own loader path (their dataset class + DataLoader collate, same 1280x720 shards, 512 px,
# batch 8, 1 thread), measured alternating A/B with ours in separate processes in issue 16: samples per
# CPU second. Only a reference point for the whole-loader row; their code is not a dependency.
AUTHORS_LOADER_RATE = 14.8


def usage(who: int) -> tuple[float, int]:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime, r.ru_minflt


def timed(fn: Callable[[], int], who: int = resource.RUSAGE_SELF) -> dict:
    """Samples per wall second and per CPU second, and minor faults per sample, of ``fn() -> samples`` (``who`` did the work)."""
    wall, (cpu, faults) = time.perf_counter(), usage(who)
    n = fn()
    wall, (cpu2, faults2) = time.perf_counter() - wall, usage(who)
    return {"samples": n, "wall": n / wall, "cpu": n / max(cpu2 - cpu, 1e-9), "faults": (faults2 - faults) / n}


def authors_ratio(rate: float) -> str:
    return f"{rate / AUTHORS_LOADER_RATE:.2f}x the authors' {AUTHORS_LOADER_RATE}/s (their figure, issue 16, alternating A/B, 1 thread)"


def line(label: str, r: dict, note: str = "") -> None:
    print(f"{label:<46} {r['wall']:7.1f} /s wall {r['cpu']:7.1f} /CPU-s {r['faults']:8.0f} faults/sample"
          + (f"  = {note}" if note else ""), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="folder written by `anydoor shards`")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--reference-size", type=int, default=224)
    parser.add_argument("--samples", type=int, default=300, help="samples timed per measurement")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="0: skip the worker measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tune-allocator", action=argparse.BooleanOptionalAction, default=None,
                        help="tune glibc malloc here and in workers (default: when the code under test has tune_malloc)")
    parser.add_argument("--only", choices=["decode", "pairs", "loader", "workers"], action="append",
                        help="run only these measurements (repeatable)")
    parser.add_argument("--stats", type=int, metavar="N",
                        help="instead of timing: statistics of N training pairs (crop/box geometry, kinds, mask channel)")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    parser.add_argument("--against", help="A/B: another checkout whose datamodules to measure alternately with this one")
    parser.add_argument("--repeat", type=int, default=3, help="A/B rounds (with --against)")
    args, rest = parser.parse_known_args(argv)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.against:
        return compare(args, argv if argv is not None else sys.argv[1:])
    only = set(args.only or ["decode", "pairs", "loader", "workers"])

    import cv2
    import numpy as np
    import torch
    import webdataset as wds

    import datamodules
    from datamodules.anydoor_datamodule import AnyDoorDataModule
    from datamodules.components import streams
    from datamodules.components.pairs import PairBuilder
    from datamodules.components.shard_format import decode_frame, decode_mask_crop
    from datamodules.components.shard_lists import resolve

    if args.stats:
        return pair_stats(args, AnyDoorDataModule)
    has_tuning = hasattr(streams, "tune_malloc")
    tune = has_tuning if args.tune_allocator is None else args.tune_allocator
    if tune and not has_tuning:
        parser.error("the code under test has no streams.tune_malloc")
    dm_kwargs = {"tune_allocator": tune} if "tune_allocator" in inspect.signature(AnyDoorDataModule).parameters else {}
    if tune:
        streams.tune_malloc()  # what a loader worker does first; here before anything is measured
    # one core for the single-process numbers (OpenCV and torch would otherwise use every core)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    sources, counts = resolve(args.shards)
    urls = [u for v in sources.values() for u in v]
    first = next(iter(wds.WebDataset(urls[:1], shardshuffle=False)))
    meta = json.loads(first["json"])
    print(f"code: {os.path.dirname(datamodules.__file__)}; allocator tuned: {tune}; load average {os.getloadavg()[0]:.2f}")
    print(f"shards: {args.shards} ({sum(len(v) for v in sources.values())} shards, {sum(counts.values())} samples, "
          f"frames {meta['size'][1]}x{meta['size'][0]}); crops {args.image_size} px, reference {args.reference_size} px, "
          f"batch {args.batch_size}")
    print(f"{'':<46} samples per wall second, per CPU second, minor page faults per sample")
    results: dict[str, dict] = {}
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    rng = np.random.default_rng(0)
    n = args.samples

    if "decode" in only:
        def decode_only() -> int:
            for k in range(n):
                s = samples[k % len(samples)]
                m = json.loads(s["json"])
                for i in rng.choice(len(m["boxes"]), size=min(2, len(m["boxes"])), replace=False):
                    decode_frame(s, int(i))
                    decode_mask_crop(s, int(i))
            return n

        decode_only()  # warm-up
        results["decode"] = timed(decode_only)
        line("decode only (2 full frames + masks)", results["decode"])

    def loader_kwargs(workers: int, samples_per_epoch: int) -> dict:
        return dict(batch_size=args.batch_size, num_workers=workers, image_size=args.image_size,
                    reference_size=args.reference_size, samples_per_epoch=samples_per_epoch, **dm_kwargs)

    if "pairs" in only:
        # the pairs the loader builds: packed (uint8) where the code under test's datamodule packs by default
        packed = inspect.signature(AnyDoorDataModule).parameters.get("packed")
        pair_kwargs = {"packed": bool(packed.default)} if packed is not None else {}
        builder = PairBuilder(image_size=args.image_size, reference_size=args.reference_size, **pair_kwargs)
        for k in range(20):
            builder(samples[k % len(samples)], rng)

        def build() -> int:
            for k in range(n):
                builder(samples[k % len(samples)], rng)
            return n

        results["pairs"] = timed(build)
        line("pair build, 1 process (samples in memory)", results["pairs"])

    if "loader" in only:
        warm = 8 * args.batch_size
        it = iter(AnyDoorDataModule(args.shards, **loader_kwargs(0, n + warm)).train_dataloader())
        for _ in range(8):
            next(it)
        results["loader"] = timed(lambda: sum(len(b["kind"]) for b in it))
        line(f"loader, 1 process (shards -> batches of {args.batch_size})", results["loader"], authors_ratio(results["loader"]["cpu"]))
        del it

    if "workers" in only and args.workers > 0:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        gc.collect()
        loader = AnyDoorDataModule(args.shards, **loader_kwargs(args.workers, n)).train_dataloader()
        main_cpu, main_faults = usage(resource.RUSAGE_SELF)

        def whole_pass() -> int:  # the workers' start-up is included: they exit (and are counted) at the end
            nonlocal loader
            got = sum(len(b["kind"]) for b in loader)
            del loader
            gc.collect()
            return got

        r = timed(whole_pass, resource.RUSAGE_CHILDREN)
        r["worker_max_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        cpu, faults = usage(resource.RUSAGE_SELF)
        r["main_faults"] = (faults - main_faults) / r["samples"]
        r["main_cpu_per_sample_ms"] = 1000 * (cpu - main_cpu) / r["samples"]
        results["workers"] = r
        line(f"loader, {args.workers} worker processes (per worker CPU)", r)
        print(f"{'':<46} main process: {r['main_cpu_per_sample_ms']:.2f} ms CPU and {r['main_faults']:.0f} faults per sample; "
              f"largest worker {r['worker_max_rss_mb']:.0f} MB resident")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        print(json.dumps({"code": os.path.dirname(datamodules.__file__), "tuned": tune, "load": os.getloadavg()[0], **results}))
    return 0


def pair_stats(args: argparse.Namespace, datamodule: type) -> int:
    """Distribution of training pairs: shows that a change of random stream left the pairs' statistics as they were."""
    import numpy as np
    import torch

    dm = datamodule(args.shards, batch_size=args.batch_size, num_workers=0, image_size=args.image_size,
                    reference_size=args.reference_size, samples_per_epoch=args.stats)
    rows: dict[str, list] = {k: [] for k in ("video", "box_w", "box_h", "box_cx", "box_cy", "object", "mask_is_box",
                                             "padding", "ref_white", "target_mean")}
    size = args.image_size
    from src.packed import unpack_batch

    for b in map(unpack_batch, dm.train_dataloader()):
        box = b["box"].double() / size
        rows["video"] += (b["kind"] == 0).tolist()
        rows["box_w"] += (box[:, 2] - box[:, 0]).tolist()
        rows["box_h"] += (box[:, 3] - box[:, 1]).tolist()
        rows["box_cx"] += ((box[:, 0] + box[:, 2]) / 2).tolist()
        rows["box_cy"] += ((box[:, 1] + box[:, 3]) / 2).tolist()
        rows["object"] += b["object_mask"].mean(dim=(1, 2, 3)).tolist()
        channel = b["collage"][:, 3]
        for c, (x1, y1, x2, y2) in zip(channel, b["box"].tolist()):
            inside = torch.zeros_like(c, dtype=torch.bool)
            inside[y1:y2, x1:x2] = True
            rows["mask_is_box"].append(bool(((c == 1) == inside)[c >= 0].all()))
        rows["padding"] += (channel == -1).float().mean(dim=(1, 2)).tolist()
        rows["ref_white"] += (b["reference"] == 1).all(dim=1).float().mean(dim=(1, 2)).tolist()
        rows["target_mean"] += b["target"].mean(dim=(1, 2, 3)).tolist()
    print(f"{len(rows['video'])} pairs; mean, std, quartiles")
    out = {}
    for k, v in rows.items():
        a = np.asarray(v, dtype=np.float64)
        out[k] = [float(a.mean()), float(a.std()), *map(float, np.percentile(a, [25, 50, 75]))]
        print(f"  {k:<12} {out[k][0]:7.4f} {out[k][1]:7.4f}   {out[k][2]:7.4f} {out[k][3]:7.4f} {out[k][4]:7.4f}")
    if args.json:
        print(json.dumps(out))
    return 0


def compare(args: argparse.Namespace, argv: list[str]) -> int:
    """Run this script on ``--against``'s code and on this checkout's, alternately, and summarise."""
    skip = {"--against", "--repeat"}
    passed, it = [], iter(argv)
    for a in it:
        if a.split("=")[0] in skip:
            if "=" not in a:
                next(it, None)
            continue
        passed.append(a)
    codes = {"before": str(Path(args.against).resolve()), "after": str(HERE)}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for r in range(args.repeat):
        for label in ("before", "after") if r % 2 == 0 else ("after", "before"):
            env = dict(os.environ, PYTHONPATH=codes[label], OMP_NUM_THREADS="1")
            load = os.getloadavg()[0]
            out = subprocess.run([sys.executable, __file__, *passed, "--json"], env=env, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["load_before"] = load
            runs[label].append(result)
            print(f"round {r + 1} {label:<6} load {load:5.2f} -> {result['load']:5.2f}: " + ", ".join(
                f"{k} {result[k]['cpu']:.1f}/CPU-s ({result[k]['faults']:.0f} f/s)" for k in ("decode", "pairs", "loader", "workers") if k in result),
                flush=True)
    print(f"medians over {args.repeat} rounds (samples per CPU second; minor faults per sample):")
    for key in ("decode", "pairs", "loader", "workers"):
        if key not in runs["after"][0]:
            continue
        med = {lab: (statistics.median(x[key]["cpu"] for x in runs[lab]), statistics.median(x[key]["faults"] for x in runs[lab]))
               for lab in runs}
        print(f"  {key:<8} before {med['before'][0]:7.1f} ({med['before'][1]:5.0f} faults)   after {med['after'][0]:7.1f} "
              f"({med['after'][1]:5.0f} faults)   ratio {med['after'][0] / med['before'][0]:.2f}"
              + (f"\n           after = {authors_ratio(med['after'][0])}" if key == "loader" else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
