"""Training step time of the tiny default on CPU (the full size has its own tools, below).

    python -m benchmarks.bench_train [--steps 10] [--batch 8]

Full size without a GPU, memory: ``python -m benchmarks.plan_memory`` (docs/training.md's table).
Full size on a GPU, real peaks beside the plan and samples/s: ``python -m benchmarks.gpu_check --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from benchmarks.full_model import build_module, optimizer_callable, random_batch, read_config
from benchmarks.plan_memory import make_optimizer, train_step


def bench_tiny(steps: int, batch: int, config_path: str = "configs/tiny.yaml") -> dict:
    config = read_config(config_path)
    module = build_module(config, "cpu", optimizer=optimizer_callable(config))
    module.train()
    optimizer = make_optimizer(module)
    size = int(config["data"]["init_args"]["image_size"])
    data = random_batch(batch, size, int(config["data"]["init_args"].get("reference_size", 224)))
    precision = str(config["trainer"].get("precision", "32-true"))
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        train_step(module, optimizer, data, precision, emulate_autocast=False)
        if i >= 2:  # the first two steps warm up allocators and kernels
            times.append(time.perf_counter() - start)
    step = sorted(times)[len(times) // 2]
    n_train = sum(p.numel() for p in module.trainable_parameters().values())
    return {"config": config_path, "device": "cpu", "threads": torch.get_num_threads(), "batch": batch,
            "image_size": size, "precision": precision, "trainable_params_M": round(n_train / 1e6, 2),
            "step_s": round(step, 4), "samples_per_s": round(batch / step, 2),
            "peak_rss_GiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "load_average": Path("/proc/loadavg").read_text().split()[:3]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--config", default="configs/tiny.yaml")
    args = p.parse_args(argv)
    print(json.dumps(bench_tiny(args.steps, args.batch, args.config)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
