"""Check the memory planner against a real run: a small config planned on fake tensors, then run on CPU.

    python -m benchmarks.check_planner                      # configs/tiny.yaml, batch 8 and 32
    python -m benchmarks.check_planner --batches 8 --json check.json

Planned: ``plan_memory.plan`` (fake tensors, CUDA autocast policy replayed, bytes unrounded as
CPU allocations are), for fp32 and bf16-mixed with and without checkpointing, frozen parts in bf16,
and LoRA (rank 16) with them. Measured, independently of that booking: the bytes live before the step
(weights, buffers, optimizer state, counted exactly) plus the peak of the running sum of every
allocation and free the PyTorch profiler records during the same step on real tensors (c10's CPU
allocator, kernels' scratch buffers included). The autocast policy itself is checked against
CUDA's real one in tests/benchmarks/test_memtrack.py.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional

import torch

from benchmarks.full_model import random_batch, read_config
from benchmarks.plan_memory import Setting, make_optimizer, plan, set_checkpointing, train_step, warm_optimizer


def measured_peak(config: dict[str, Any], setting: Setting) -> int:
    """Peak tensor bytes of one real CPU step of ``config``'s model at ``setting`` (see module doc)."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.full_model import build_module

    module = build_module(config, "cpu", ema_decay=None, **setting.module_options(config["model"]["init_args"].get("lora")))
    optimizer = make_optimizer(module)
    warm_optimizer(module, optimizer)
    set_checkpointing(module, setting.checkpointing)
    tensors = [*module.parameters(), *module.buffers(),
               *(v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor))]
    before = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())
    reference_size = int(config["data"]["init_args"].get("reference_size", 224))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        batch = random_batch(setting.batch, setting.size, reference_size,
                             num_timesteps=module.noise_scheduler.config.num_train_timesteps)
        train_step(module, optimizer, batch, setting.precision)
        del batch
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    return before + peak


def check(config: dict[str, Any], settings: list[Setting]) -> list[dict[str, Any]]:
    rows = plan(settings, config, block=1, log=lambda _: None)
    out = []
    for s, row in zip(settings, rows):
        real = measured_peak(config, s)
        out.append({"setting": s.label(), "batch": s.batch, "size": s.size, "planned_MiB": round(row.peak / 2**20, 1),
                    "measured_MiB": round(real / 2**20, 1), "planned_over_measured": round(row.peak / real, 3)})
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    try:
        config = read_config(args.config)
    except ValueError as err:
        raise SystemExit(f"check_planner: {err}") from None
    size = int(config["data"]["init_args"].get("image_size", 512))
    settings = [Setting(b, precision, ckpt, size=size) for b in args.batches
                for precision, ckpt in (("32-true", False), ("32-true", True), ("bf16-mixed", False), ("bf16-mixed", True))]
    settings += [Setting(b, "bf16-mixed", True, frozen="bf16", size=size) for b in args.batches]
    settings += [Setting(b, "bf16-mixed", True, frozen="bf16", trainable="lora-16", size=size) for b in args.batches]
    results = check(config, settings)
    for r in results:
        print(json.dumps(r))
    worst = max(abs(r["planned_over_measured"] - 1) for r in results)
    print(f"largest planned/measured deviation: {worst:.1%} (goal: within 15%)")
    if args.json:
        from src.files import atomic_write

        atomic_write(args.json, json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
