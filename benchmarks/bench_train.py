"""Training step time and peak memory: the tiny default on CPU; the full size on a GPU if present.

    python -m benchmarks.bench_train [--steps 20] [--batch 8] [--full-batch 4] [--skip-full]

Full size = SD-2.1-base-shaped U-Net/ControlNet/VAE + ViT-g/14, random init (no downloads), bf16
autocast, gradient checkpointing, AdamW (8-bit with --8bit if bitsandbytes is installed).
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import time
from pathlib import Path

import torch
import yaml

from models.anydoor_module import AnyDoorModule

def random_batch(batch: int, size: int, generator: torch.Generator, device: str) -> dict[str, torch.Tensor]:
    b = {
        "reference": torch.rand(batch, 3, 224, 224, generator=generator),
        "target": torch.rand(batch, 3, size, size, generator=generator) * 2 - 1,
        "collage": torch.rand(batch, 4, size, size, generator=generator) * 2 - 1,
        "kind": torch.randint(0, 3, (batch,), generator=generator),
        "timesteps": torch.randint(0, 1000, (batch,), generator=generator),  # as the timestep callback adds them
        "box": torch.tensor([[size // 4, size // 4, 3 * size // 4, 3 * size // 4]] * batch),
    }
    return {k: v.to(device) for k, v in b.items()}


def time_steps(module: AnyDoorModule, batch: dict, steps: int, device: str, autocast: bool) -> float:
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    module.train()
    times = []
    for i in range(steps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            loss = module.diffusion_loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # the first two steps warm up allocators and kernels
            times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def bench_tiny(steps: int, batch: int) -> dict:
    cfg = yaml.safe_load(Path("configs/tiny.yaml").read_text())
    module = AnyDoorModule.from_config_file("configs/tiny.yaml")
    module.optimizer_factory = functools.partial(torch.optim.AdamW, **cfg["model"]["init_args"]["optimizer"]["init_args"])
    size = cfg["data"]["init_args"]["image_size"]
    step = time_steps(module, random_batch(batch, size, torch.Generator().manual_seed(0), "cpu"), steps, "cpu", False)
    n_train = sum(p.numel() for p in module.trainable_parameters().values())
    return {"config": "tiny", "device": "cpu", "threads": torch.get_num_threads(), "batch": batch,
            "image_size": size, "precision": "fp32", "trainable_params_M": round(n_train / 1e6, 2),
            "step_s": round(step, 4), "samples_per_s": round(batch / step, 2),
            "peak_rss_GiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def bench_full(steps: int, batch: int, eight_bit: bool) -> dict:
    from benchmarks.full_size import full_size_module

    if eight_bit:
        import bitsandbytes as bnb

        optimizer = functools.partial(bnb.optim.AdamW8bit, lr=1e-5)
    else:
        optimizer = functools.partial(torch.optim.AdamW, lr=1e-5)
    module = full_size_module(gradient_checkpointing=True, optimizer=optimizer)
    module.vae.to(torch.bfloat16)
    module.id_encoder.vit.to(torch.bfloat16)
    module.to("cuda")
    torch.cuda.reset_peak_memory_stats()
    step = time_steps(module, random_batch(batch, 512, torch.Generator().manual_seed(0), "cuda"), steps, "cuda", True)
    n_train = sum(p.numel() for p in module.trainable_parameters().values())
    return {"config": "full (SD-2.1-base + ViT-g/14 shapes)", "device": torch.cuda.get_device_name(), "batch": batch,
            "image_size": 512, "precision": "bf16 autocast, fp32 weights", "adamw": "8-bit" if eight_bit else "fp32",
            "trainable_params_M": round(n_train / 1e6, 1), "step_s": round(step, 3),
            "samples_per_s": round(batch / step, 2),
            "peak_gpu_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--full-batch", type=int, default=4)
    p.add_argument("--8bit", dest="eight_bit", action="store_true")
    p.add_argument("--skip-full", action="store_true")
    args = p.parse_args(argv)
    print(json.dumps(bench_tiny(args.steps, args.batch)))
    if args.skip_full:
        return 0
    if not torch.cuda.is_available():
        print(json.dumps({"config": "full", "skipped": "no CUDA device on this machine"}))
        return 0
    print(json.dumps(bench_full(args.steps, args.full_batch, args.eight_bit)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
