"""Time one generation part by part (ID encoder, one guided step, VAE decode, end to end) + peak memory.

    python -m benchmarks.bench_infer                       # full-size architecture, random weights
    python -m benchmarks.bench_infer --size tiny --e2e-steps 50 --scheduler ddim
    python -m benchmarks.bench_infer --model outputs/tiny/version_0/export/pretrained --compare-solvers

Random weights (no download); the timings are those of the real architecture. On CPU the thread
count is fixed (default 2, the issue's reference setting). ``--precision bf16`` times every part
under bf16 autocast (``--part-error`` also reports each part's relative error against fp32). The
authors' figures beside ours were measured for their code on this machine, fp32, same torch build:
REFERENCE_CPU_1THREAD in issue 16, REFERENCE_CPU (2 threads) in issue 5. Run one precision per
process and alternate them; the JSON records threads, load average and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import sys
import time

import numpy as np
import torch

from models.components.denoiser import AnyDoorDenoiser
from models.components.first_stage import latent_channels, latent_factor
from models.components.precision import PRECISIONS, autocast, cached_weight_casts, cpu_has_native_bf16
from src.cpu_allocator import keep_freed_memory

# The authors' code, full size, fp32 CPU: 2 threads (issue 5; generation = DDIM 50) and 1 thread (issue 16).
REFERENCE_CPU = {"guided_step_s": 28.0, "id_encoder_s": 4.9, "vae_decode_s": 19.0,
                 "generation_s": 24 * 60, "peak_rss_gib": 11.4}
REFERENCE_CPU_1THREAD = {"guided_step_s": 29.9, "id_encoder_s": 6.53, "vae_decode_s": 18.0}
ROWS = (("ID encoder", "id_encoder_s"), ("guided step", "guided_step_s"), ("VAE decode", "vae_decode_s"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CPU_SECONDS: dict[str, float] = {}  # process CPU seconds of the best run, by label


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(fn, device: torch.device, repeats: int = 1, label: str = "") -> tuple[float, object]:
    """Best wall time of ``repeats`` runs; its process CPU time goes to CPU_SECONDS[label]. On a
    shared CPU, CPU time / threads is the wall time an idle machine would show (spin-waits aside)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        start, cpu = time.perf_counter(), _cpu()
        out = fn()
        _sync(device)
        wall = time.perf_counter() - start
        if wall < best:
            best = wall
            if label:
                CPU_SECONDS[label] = round(_cpu() - cpu, 2)
    return best, out


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def random_pipeline(size: str):
    """``tiny``: configs/tiny.yaml's model; ``full``: the released architecture. Random init, fp32,
    no recommended sampler (the pipeline's fallback: DPM-Solver++ 20 steps, guidance 5)."""
    from models.pipeline import AnyDoorPipeline

    if size == "tiny":
        from models.anydoor_module import AnyDoorModule

        module = AnyDoorModule.from_config_file("configs/tiny.yaml")
    else:
        from benchmarks.full_size import full_size_module

        module = full_size_module()
    return AnyDoorPipeline(**module.to_pipeline().components)


def make_job(seed: int = 0):
    from models.pipeline import Job

    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 256, (300, 240, 4), dtype=np.uint8)
    ref[..., 3] = 0
    ref[40:260, 30:210, 3] = 255
    target = rng.integers(0, 256, (720, 960, 3), dtype=np.uint8)
    return Job(reference=ref, target=target, box=(400, 250, 620, 520), name="bench")


def compare_solvers(pipe, job, seed: int = 0) -> dict[str, float]:
    """Crops of several solvers from the same noise vs DDIM 50 (the authors' default) and vs a
    converged reference (DDIM 500): mean |difference| in 8-bit pixel levels."""
    side = pipe.crop_size // latent_factor(pipe.vae)
    noise = torch.randn(1, latent_channels(pipe.vae), side, side, generator=torch.Generator().manual_seed(seed))
    runs = {"ddim500": ("ddim", 500, None), "ddim50": ("ddim", 50, None), "ddim20": ("ddim", 20, None),
            "dpm20": ("dpm", 20, None), "dpm20_leading": ("dpm", 20, "leading"), "dpm10": ("dpm", 10, None)}
    crops = {}
    for name, (sched, steps, spacing) in runs.items():
        out = pipe(job, num_inference_steps=steps, scheduler=sched, timestep_spacing=spacing, latents=noise.clone(),
                   progress=False)
        crops[name] = out.crops[0].astype(np.float64)
    res = {}
    for name in runs:
        if name != "ddim500":
            res[f"{name}_vs_ddim50"] = round(float(np.abs(crops[name] - crops["ddim50"]).mean()), 3)
            res[f"{name}_vs_ddim500"] = round(float(np.abs(crops[name] - crops["ddim500"]).mean()), 3)
    other = pipe(job, num_inference_steps=50, latents=torch.randn(noise.shape, generator=torch.Generator().manual_seed(seed + 1)),
                 progress=False).crops[0].astype(np.float64)
    res["ddim50_other_seed_vs_ddim50"] = round(float(np.abs(other - crops["ddim50"]).mean()), 3)  # scale
    return res


def compare_precision(pipe, job, steps: int, scheduler: str, seed: int = 0) -> dict[str, float]:
    """The same job, seed and sampler in fp32 and bf16: grey-level differences of the 8-bit outputs."""
    outs = {p: pipe(job, num_inference_steps=steps, scheduler=scheduler, generator=torch.Generator().manual_seed(seed),
                    progress=False, precision=p) for p in PRECISIONS}
    crop = np.abs(outs["bf16"].crops[0].astype(np.int16) - outs["fp32"].crops[0].astype(np.int16))
    image = np.abs(outs["bf16"].images[0].astype(np.int16) - outs["fp32"].images[0].astype(np.int16))
    other = pipe(job, num_inference_steps=steps, scheduler=scheduler, generator=torch.Generator().manual_seed(seed + 1),
                 progress=False).crops[0].astype(np.int16)
    return {"crop_max": int(crop.max()), "crop_mean": round(float(crop.mean()), 3),
            "image_max": int(image.max()), "image_mean": round(float(image.mean()), 3),
            "crop_mean_other_seed_fp32": round(float(np.abs(other - outs["fp32"].crops[0]).mean()), 3)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def part_errors(pipe, ref, tokens, guided_step, step_out, latents, decoded, amp) -> dict[str, float]:
    """Relative L2 error of each part's output under autocast against the same part in fp32."""
    with torch.no_grad():
        with amp():
            low_tokens = pipe.encode_references(ref, guidance=True)
        errors = {"id_tokens": _rel(low_tokens, pipe.encode_references(ref, guidance=True))}
        errors["guided_eps"] = _rel(step_out, guided_step("fp32"))
        errors["vae_decode"] = _rel(decoded, pipe.decode(latents))
    return {k: float(f"{v:.3g}") for k, v in errors.items()}


def reference_for(res: dict) -> dict | None:
    """The authors' figures measured under this run's conditions (full size, fp32 CPU), if any."""
    if res["size"] != "full" or res["device"] != "cpu":
        return None
    return {1: REFERENCE_CPU_1THREAD, 2: REFERENCE_CPU}.get(res["threads"])


def rows_table(res: dict, reference: dict | None) -> str:
    """The issue's rows: ours (wall, process CPU), the authors' figure and the ratio."""
    cpu = res.get("process_cpu_s", {})
    lines = [f"precision {res['precision']}, {res['threads']} thread(s), malloc keeps freed memory: "
             f"{res['malloc_keeps_freed_memory']}, load {res['load_average_start']} -> "
             f"{res['load_average_end']}, {res['date']}",
             f"{'part':<14}{'ours wall s':>12}{'ours CPU s':>12}{'authors s':>11}{'ratio':>8}"]
    keys = list(ROWS) + [("end to end", k) for k in res if k.startswith("generation_") and k.endswith("_s")
                         and "estimate" not in k]
    for name, key in keys:
        label = "generation" if name == "end to end" else key.removesuffix("_s")
        ref = reference.get(key) if reference else None
        ratio = f"{res[key] / ref:.2f}" if ref else "-"
        lines.append(f"{name:<14}{res[key]:>12.2f}{cpu.get(label, float('nan')):>12.2f}"
                     f"{(f'{ref:.2f}' if ref else '-'):>11}{ratio:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="default float32 on CPU, float16 on GPU")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--step-repeats", type=int, default=2, help="guided steps timed (best kept)")
    parser.add_argument("--e2e-steps", type=int, default=20, help="steps of the end-to-end run (0 skips it)")
    parser.add_argument("--scheduler", choices=("ddim", "dpm"), default="dpm")
    parser.add_argument("--unbatched", action="store_true", help="also time cond and uncond as two passes")
    parser.add_argument("--compare-solvers", action="store_true",
                        help="only compare DPM-Solver++ / DDIM step counts against DDIM 50 (use with --size tiny)")
    parser.add_argument("--compare-precision", action="store_true",
                        help="only compare fp32 and bf16 outputs (8-bit grey levels) of one job, same seed")
    parser.add_argument("--contiguous", action="store_true",
                        help="NCHW convolutions (default: channels-last, GroupNorm kept NCHW: use_channels_last)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32, or bf16 autocast around every part (fp32 weights)")
    parser.add_argument("--part-error", action="store_true",
                        help="with --precision bf16: also run each part in fp32 and report the relative error")
    parser.add_argument("--malloc-default", action="store_true",
                        help="leave glibc's allocator as it is (default: keep freed memory, as anydoor generate does)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--model", default=None,
                        help="a pretrained folder (e.g. a make-train export) instead of random weights; overrides --size")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    kept = False if args.malloc_default else keep_freed_memory()
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    res: dict[str, object] = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "load_average_start": _load(), "size": args.size, "device": str(device),
                              "dtype": str(dtype).removeprefix("torch."), "precision": args.precision,
                              "threads": torch.get_num_threads() if device.type == "cpu" else None,
                              "cpu_native_bf16": cpu_has_native_bf16(), "malloc_keeps_freed_memory": kept}
    amp = lambda precision=args.precision: autocast(precision, device)  # noqa: E731  (a fresh context per part)
    if args.model:
        from models.pipeline import AnyDoorPipeline

        res["model"] = args.model
        res["size"] = None
        t, pipe = _timed(lambda: AnyDoorPipeline.from_pretrained(args.model).to(device, dtype), device)
    else:
        t, pipe = _timed(lambda: random_pipeline(args.size).to(device, dtype), device)
    pipe.use_channels_last(not args.contiguous)
    if args.compare_precision:
        res["precision_diff_levels"] = compare_precision(pipe, make_job(), args.e2e_steps or 20, args.scheduler)
        print(json.dumps(res, indent=2))
        return 0
    if args.compare_solvers:
        res["solver_mean_abs_diff_levels"] = compare_solvers(pipe, make_job())
        print(json.dumps(res, indent=2))
        return 0
    res["channels_last"] = not args.contiguous
    res["build_s"] = round(t, 2)
    res["crop_px"] = pipe.crop_size
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    job = make_job()
    _, prepared, _ = pipe.prepare(job)
    ref = torch.from_numpy(pipe.prepare(job)[0])[None].to(device)
    collage = torch.from_numpy(prepared.sample["collage"])[None].to(device, dtype)
    with amp():
        t, _ = _timed(lambda: pipe.unconditional_tokens(1), device, label="id_encoder_black_once")
        res["id_encoder_black_once_s"] = round(t, 3)  # computed once per model, then cached
        t, tokens = _timed(lambda: pipe.encode_references(ref, guidance=True), device, label="id_encoder")
    tokens = tokens.to(dtype)
    res["id_encoder_s"] = round(t, 3)  # one DINOv2 pass per call (black-reference tokens cached)

    side = pipe.crop_size // latent_factor(pipe.vae)
    latents = torch.randn(1, latent_channels(pipe.vae), side, side, generator=torch.Generator().manual_seed(0))
    latents = latents.to(device, dtype)
    tstep = torch.tensor([981], device=device)
    fmt = torch.contiguous_format if args.contiguous else torch.channels_last
    collages = torch.cat([collage, collage]).contiguous(memory_format=fmt)
    denoiser = AnyDoorDenoiser(pipe.unet, pipe.controlnet)

    def guided_step(precision: str = args.precision):
        with torch.no_grad(), amp(precision):
            x = torch.cat([latents, latents]).contiguous(memory_format=fmt)
            eps = denoiser(x, tstep.expand(2), tokens, collages).to(dtype)
            u, c = eps.chunk(2)
            return u + 5.0 * (c - u)

    # as in the pipeline: one autocast over the steps, weights cast once (the first step pays it)
    with amp(), cached_weight_casts(pipe.unet, pipe.controlnet):
        t, _ = _timed(guided_step, device, 1, label="guided_step_first")
        res["guided_step_first_s"] = round(t, 3)
        t, step_out = _timed(guided_step, device, args.step_repeats, label="guided_step")
    res["guided_step_s"] = round(t, 3)
    if args.unbatched:
        def two_passes():
            with torch.no_grad():
                return [denoiser(latents, tstep, tok[None], collage) for tok in tokens]

        t, _ = _timed(two_passes, device, args.step_repeats, label="guided_step_unbatched")
        res["guided_step_unbatched_s"] = round(t, 3)
    with amp():
        t, decoded = _timed(lambda: pipe.decode(latents), device, label="vae_decode")
    res["vae_decode_s"] = round(t, 3)
    if args.part_error and args.precision != "fp32":
        res["part_relative_error_vs_fp32"] = part_errors(pipe, ref, tokens, guided_step, step_out, latents, decoded, amp)
    if args.e2e_steps > 0:
        t, _ = _timed(lambda: pipe(job, num_inference_steps=args.e2e_steps, scheduler=args.scheduler,
                                   generator=torch.Generator().manual_seed(0), progress=False,
                                   precision=args.precision), device, label="generation")
        res[f"generation_{args.scheduler}{args.e2e_steps}_s"] = round(t, 2)
        res["generation_ddim50_estimate_s"] = round(res["id_encoder_s"] + 50 * res["guided_step_s"]
                                                    + res["vae_decode_s"], 1)
    if device.type == "cpu":
        res["process_cpu_s"] = dict(CPU_SECONDS)
    res["peak_rss_gib"] = round(_peak_rss_gib(), 2)
    res["load_average_end"] = _load()  # the CPU is shared: a load above the thread count inflates timings
    if device.type == "cuda":
        res["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    reference = reference_for(res)
    if reference:
        res["reference_cpu"] = reference
        res["vs_reference"] = {key: round(res[key] / reference[key], 3) for _, key in ROWS}
        res["guided_step_vs_reference"] = res["vs_reference"]["guided_step_s"]
    print(json.dumps(res, indent=2))
    print(rows_table(res, reference))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
