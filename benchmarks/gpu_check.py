"""GPU validation in one call: the planner's estimates beside real peaks, training and inference speed.

    python -m benchmarks.gpu_check --out RESULTS_DIR            # on a CUDA machine, < 8 min on one H200
    python -m benchmarks.gpu_check --out /tmp/x --device cpu --config configs/tiny.yaml --dry-run

Random weights, no downloads. Stages, each skipped (and said so) once ``--budget-s`` is spent:
1. memory: for configs/anydoor.yaml's setting (bf16-mixed, checkpointing, AdamW), the same without
   checkpointing, and the settings of configs/anydoor_24gb.yaml and anydoor_16gb.yaml (8-bit AdamW,
   needs bitsandbytes; frozen parts in bf16) at batch 1 and 4: ``torch.cuda.max_memory_allocated``
   over one steady-state step beside ``plan_memory``'s tracked peak for the same setting (goal:
   within 15%), and samples/s over the timed steps; all on ``--config``'s model.
2. training speed at the 24 and 16 GB configs' own batch sizes.
3. inference: ID encoder, one guided denoiser step (cond + uncond batched, SDPA), VAE decode, in fp16
   and bf16, NCHW and channels-last, eager and ``torch.compile``; seconds per 512 px image at 20 and
   50 steps = encoder + steps x guided step + decode.
Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``. ``--dry-run`` runs every stage on the
chosen device with one step each and no compile (the test suite runs it on CPU with the tiny config).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from benchmarks.full_model import build_module, optimizer_callable, random_batch, read_config
from benchmarks.plan_memory import GIB, Setting, eight_bit_row, make_optimizer, plan, set_checkpointing, train_step
from models.components.first_stage import decode_latents, latent_channels, latent_factor

ROOT = Path(__file__).resolve().parents[1]


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


Run = tuple[str, dict[str, Any], Setting]  # (config name, that config, its setting)


def memory_runs(configs: dict[str, dict[str, Any]], batches: list[int]) -> list[Run]:
    """Stages 1 and 2: ``anydoor`` at ``batches`` with and without checkpointing, every other config at
    ``batches`` and at its own batch size; configs with 8-bit AdamW only where bitsandbytes imports."""
    from benchmarks.plan_memory import config_settings

    try:
        import bitsandbytes  # noqa: F401
        eight_bit = True
    except ImportError:
        eight_bit = False
    out: list[Run] = []
    for name, config in configs.items():
        if name == "anydoor":
            base = config_settings(config, batches)
            out += [(name, config, s) for s in base]
            out += [(f"{name} no-ckpt", config, replace(s, checkpointing=False)) for s in base]
        elif eight_bit or config_settings(config)[0].optimizer != "adamw8bit":
            out += [(name, config, s) for s in config_settings(config, batches) + config_settings(config)]
    return out


def measure_training(model_config: dict[str, Any], runs: list[Run], device: torch.device, steps: int,
                     budget: Budget, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Real peak memory and samples/s per run beside the planner's estimate. The model is
    ``model_config``'s (so a dry run stays tiny) with each run's setting (precision, checkpointing,
    frozen dtype, LoRA) and its config's optimizer; rebuilt when the frozen dtype or trainable set changes."""
    estimates = plan([replace(s, optimizer="adamw") for _, _, s in runs], model_config, log=lambda _: None)
    results = []
    module, built = None, None
    for (name, config, s), est in zip(runs, estimates):
        est = eight_bit_row(est) if s.optimizer == "adamw8bit" else est
        row = {"config": name, "setting": s.label(), "batch": s.batch, "planned_peak_gib": round(est.peak / GIB, 2)}
        if budget.left() < 30:
            results.append({**row, "skipped": "time budget"})
            continue
        if built != (s.frozen, s.trainable):
            module = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            options = s.module_options(model_config["model"]["init_args"].get("lora"))
            module = build_module(model_config, device, ema_decay=None, **options).train()
            built = (s.frozen, s.trainable)
        module.optimizer_factory = optimizer_callable(config)
        optimizer = make_optimizer(module)
        set_checkpointing(module, s.checkpointing)
        batch = random_batch(s.batch, s.size, device=device,
                             num_timesteps=module.noise_scheduler.config.num_train_timesteps)
        try:
            train_step(module, optimizer, batch, s.precision, emulate_autocast=False)  # creates the state
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = _timed(lambda: train_step(module, optimizer, batch, s.precision, emulate_autocast=False),
                             device, steps)
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated()
                row.update(measured_peak_gib=round(peak / GIB, 2), measured_over_planned=round(peak / est.peak, 3),
                           reserved_gib=round(torch.cuda.max_memory_reserved() / GIB, 2))
            row.update(step_s=round(seconds, 4), samples_per_s=round(s.batch / seconds, 2))
        except torch.OutOfMemoryError as err:
            row["error"] = f"out of memory: {str(err).splitlines()[0]}"
        results.append(row)
        log(json.dumps(row))
        del optimizer, batch
        module.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    del module
    return results


def measure_inference(config: dict[str, Any], device: torch.device, dtypes: list[torch.dtype], compile_too: bool,
                      repeats: int, budget: Budget, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Seconds per part and per image for each dtype / memory format, eager first, then compiled
    (channels-last first), so a short budget drops the slow compiles rather than the eager rows."""
    variants = [(d, cl, False) for d in dtypes for cl in (False, True)]
    if compile_too:
        variants += [(d, cl, True) for cl in (True, False) for d in dtypes]
    size = int(config["data"]["init_args"].get("image_size", 512))
    models: dict[torch.dtype, Any] = {}
    results = []
    for dtype, channels_last, compiled in variants:
        row = {"dtype": str(dtype).removeprefix("torch."), "channels_last": channels_last, "compile": compiled}
        if budget.left() < (150 if compiled else 20):
            results.append({**row, "skipped": "time budget"})
            continue
        if dtype not in models:
            module = build_module(config, device, ema_decay=None).to(device, dtype).eval()
            batch = random_batch(1, size, device=device)
            f = latent_factor(module.vae)
            latents = torch.randn(1, latent_channels(module.vae), size // f, size // f, device=device, dtype=dtype)
            with torch.no_grad():
                tokens = torch.cat([module.id_encoder.unconditional_tokens(1, device),
                                    module.id_tokens(batch["reference"])])
                enc_s = _timed(lambda: module.id_tokens(batch["reference"]), device, repeats)
                dec_s = _timed(lambda: decode_latents(module.vae, latents), device, repeats)
            models[dtype] = (module, batch, latents, tokens, enc_s, dec_s)
        module, batch, latents, tokens, enc_s, dec_s = models[dtype]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        module.denoiser.to(memory_format=fmt)
        denoiser = torch.compile(module.denoiser) if compiled else module.denoiser
        x = torch.cat([latents, latents]).contiguous(memory_format=fmt)
        hint = torch.cat([batch["collage"], batch["collage"]]).to(dtype).contiguous(memory_format=fmt)
        t = torch.full((2,), 981, device=device)

        def step():
            with torch.no_grad():
                u, c = denoiser(x, t, tokens, hint).chunk(2)
                return u + 4.5 * (c - u)

        start = time.perf_counter()
        step()  # compiles when compiled
        _sync(device)
        row["first_call_s"] = round(time.perf_counter() - start, 2)
        step_s = _timed(step, device, repeats)
        row.update(guided_step_s=round(step_s, 4), id_encoder_s=round(enc_s, 4), vae_decode_s=round(dec_s, 4),
                   image_20_steps_s=round(enc_s + 20 * step_s + dec_s, 3),
                   image_50_steps_s=round(enc_s + 50 * step_s + dec_s, 3))
        results.append(row)
        log(json.dumps(row))
        if compiled:
            torch._dynamo.reset()
    return results


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# gpu_check {report['date']}", "", f"device: {report['device']}, torch {report['torch']}", "",
             "| config | setting | batch | planned GiB | measured GiB | measured/planned | samples/s |",
             "|---|---|---|---|---|---|---|"]
    for r in report["training"]:
        lines.append(f"| {r['config']} | {r['setting']} | {r['batch']} | {r['planned_peak_gib']} | "
                     f"{r.get('measured_peak_gib', r.get('skipped', r.get('error', '-')))} | "
                     f"{r.get('measured_over_planned', '-')} | {r.get('samples_per_s', '-')} |")
    lines += ["", "| dtype | channels-last | compile | guided step s | s/image 20 steps | s/image 50 steps |",
              "|---|---|---|---|---|---|"]
    for r in report["inference"]:
        lines.append(f"| {r['dtype']} | {r['channels_last']} | {r['compile']} | {r.get('guided_step_s', r.get('skipped'))} "
                     f"| {r.get('image_20_steps_s', '-')} | {r.get('image_50_steps_s', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--device", default="cuda")
    p.add_argument("--config", default=str(ROOT / "configs" / "anydoor.yaml"))
    p.add_argument("--config-24gb", default=str(ROOT / "configs" / "anydoor_24gb.yaml"))
    p.add_argument("--config-16gb", default=str(ROOT / "configs" / "anydoor_16gb.yaml"))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--budget-s", type=float, default=400.0,
                   help="start no stage after this many seconds (a compile needs 150 s left)")
    p.add_argument("--dry-run", action="store_true", help="one step per stage, no compile (any device)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (use --device cpu --dry-run to check the script)")
    try:
        configs = {"anydoor": read_config(args.config), "anydoor_24gb": read_config(args.config_24gb),
                   "anydoor_16gb": read_config(args.config_16gb)}
    except ValueError as err:
        raise SystemExit(f"gpu_check: {err}") from None
    budget = Budget(args.budget_s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "config": args.config, "dry_run": args.dry_run}
    log = lambda line: print(line, flush=True)  # noqa: E731
    steps = 1 if args.dry_run else 3
    start = time.perf_counter()
    runs = memory_runs(configs, args.batches)
    report["training"] = measure_training(configs["anydoor"], runs, device, steps, budget, log)
    dtypes = [torch.float32] if device.type == "cpu" else [torch.float16, torch.bfloat16]
    report["inference"] = measure_inference(configs["anydoor"], device, dtypes, not args.dry_run, steps, budget, log)
    report["seconds"] = round(time.perf_counter() - start, 1)
    from src.files import atomic_write

    atomic_write(out / "gpu_check.json", json.dumps(report, indent=2))
    atomic_write(out / "gpu_check.md", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
