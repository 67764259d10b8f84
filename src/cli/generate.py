"""`anydoor generate`: teleport a reference object into a target image (one job, or a job file).

    anydoor generate --reference obj.png --target scene.jpg --box 40 60 200 260 --out out.png --model DIR
    anydoor generate --jobs jobs.csv --out-dir outs/ --model DIR

A job file is the one schema `anydoor eval` reads too (``src.jobs``): a JSON list, a CSV with a
header, or a folder of job folders, with ``reference``, ``reference_mask`` (optional for an RGBA
reference), ``target``, ``box`` or ``target_mask``, and optionally ``out`` (default
``<out-dir>/<name>.png``), ``seed`` and ``name``; paths relative to the file.

Everything that can be checked before generating is: the job file's schema, every output path
(extension, parent folder, an existing file without ``--overwrite``, two jobs writing one file) and,
for a single job, its images. Exit status: 0 all written; 1 a job failed or was skipped (in
``--jobs`` mode the others still run and the skipped ones are listed at the end) or bad input
(one line naming the file and the reason); 2 a command-line usage error.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

DEFAULT_MODEL = "pretrained/anydoor"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    one = parser.add_argument_group("one job (the job file's keys; --ref, --ref-mask and --mask are short aliases)")
    one.add_argument("--reference", "--ref", dest="reference", help="reference image (RGBA: alpha is the object mask)")
    one.add_argument("--reference-mask", "--ref-mask", dest="reference_mask", help="reference object mask")
    one.add_argument("--target", help="target image")
    where = one.add_mutually_exclusive_group()
    where.add_argument("--box", type=int, nargs=4, metavar=("X1", "Y1", "X2", "Y2"),
                       help="where to put the object, exclusive ends")
    where.add_argument("--target-mask", "--mask", dest="target_mask", help="target mask: where the object goes")
    one.add_argument("--out", help="output image path (.png, .jpg, .webp, .bmp, .tif)")
    batch = parser.add_argument_group("batch")
    batch.add_argument("--jobs", help="job file (.json / .csv) or folder, the schema `anydoor eval` reads (see docs)")
    batch.add_argument("--out-dir", default="outputs/generate", help="where jobs without 'out' are written (<name>.png)")
    batch.add_argument("--batch-size", type=int, default=1, help="jobs per forward pass")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files (default: refuse)")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="refuse input images with more pixels than this (default 64 MP, ~8000 x 8000: "
                             "src.image_io.DEFAULT_MAX_PIXELS; the model works on a crop, more only costs memory)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="pretrained folder (anydoor convert / save_pretrained)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampling steps (default: the model folder's recommendation, else 20 for dpm, 50 for ddim)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale, 1 = off (default: the model folder's, else 5)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of jobs that do not give their own")
    parser.add_argument("--scheduler", choices=("ddim", "dpm"), default=None,
                        help="dpm (DPM-Solver++ 2M, 20 steps) or ddim (the authors' sampler, 50 steps); default: "
                             "the sampler the model folder recommends (a make-train export: its one DDIM step), else dpm")
    parser.add_argument("--timestep-spacing", choices=("leading", "trailing", "linspace"), default=None,
                        help="override the timestep spacing (default: trailing for dpm, the saved "
                             "config's for ddim: the authors' leading)")
    parser.add_argument("--crop-ratio", type=float, default=None,
                        help="context crop around the grown box (default: the model folder's preprocessing)")
    parser.add_argument("--mask-shape", action="store_true",
                        help="with a target mask: give the model the mask's shape instead of its box")
    parser.add_argument("--composite", choices=("box", "mask", "crop"), default="box",
                        help="what is pasted back: the grown target box (default), the target mask dilated by "
                             "--mask-dilate px, or the whole generated crop (the authors' paste-back, about twice "
                             "the box); every other pixel keeps the target's bytes")
    parser.add_argument("--mask-dilate", type=int, default=4, help="with --composite mask: grow the mask by this many px")
    parser.add_argument("--feather", type=int, default=None,
                        help="soft seam width (px) inside the pasted region (default: 6 for box/mask, 0 for crop)")
    parser.add_argument("--margin", type=int, default=5, help="with --composite crop: crop border (px) kept from the target")
    parser.add_argument("--save-intermediates", action="store_true", help="also write the crop and the collage")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="weights' dtype: default float16 on GPU, float32 on CPU")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="bf16: bf16 autocast around the ID encoder, the steps and the decode, float32 weights "
                             "(faster on CPUs with native bf16; grey-level differences in docs/inference.md). "
                             "Default: bf16 on a CPU with avx512_bf16 or AMX and float32 weights, else fp32")


def _outputs(out: Path, intermediates: bool) -> list[Path]:
    """Every file one job writes: the image, then its crop and collage with ``--save-intermediates``."""
    extra = [out.with_name(f"{out.stem}_{kind}.png") for kind in ("crop", "collage")] if intermediates else []
    return [out, *extra]


def _specs(args: argparse.Namespace) -> list:
    """The jobs to run: the one job of the flags, or a job file's (schema errors end the command)."""
    from src.jobs import JobSpec, read_jobs

    if args.jobs is None:
        missing = [f"--{n}" for n in ("reference", "target", "out") if getattr(args, n) is None]
        if args.box is None and args.target_mask is None:
            missing.append("--box or --target-mask")
        if missing:
            raise SystemExit(f"anydoor generate: missing {', '.join(missing)} (or give --jobs FILE)")
        record = {k: getattr(args, k) for k in ("reference", "reference_mask", "target", "target_mask", "out")}
        record["box"] = args.box
        try:
            return [JobSpec.from_record(record, None, "")]
        except ValueError as err:
            raise SystemExit(f"anydoor generate: {err}") from None
    if any(getattr(args, k) for k in ("reference", "reference_mask", "target", "box", "target_mask", "out")):
        raise SystemExit("anydoor generate: --jobs cannot be combined with the one-job options (--reference ... --out)")
    try:
        specs = read_jobs(args.jobs)
    except ValueError as err:
        raise SystemExit(f"anydoor generate: {err}") from None
    out_dir = Path(args.out_dir)
    return [s if s.out is not None else replace(s, out=out_dir / f"{s.name}.png") for s in specs]


def _check_outputs(specs: list, args: argparse.Namespace) -> dict[int, str]:
    """Validate every output path before any work; returns {job index: reason} for jobs to skip.
    Two jobs writing one file is an error for the whole command (which one should win?)."""
    from src.image_io import check_output_path

    owners: dict[Path, int] = {}
    problems: dict[int, str] = {}
    for i, spec in enumerate(specs):
        for path in _outputs(spec.out, args.save_intermediates):
            key = path.expanduser().resolve()
            if key in owners and owners[key] != i:
                raise SystemExit(f"anydoor generate: {spec.source}: writes {path}, as {specs[owners[key]].source} "
                                 "does: give each job its own 'out' (or 'name')")
            owners[key] = i
            try:
                check_output_path(path, overwrite=args.overwrite)
            except ValueError as err:
                problems.setdefault(i, f"{spec.source}: {err}" if spec.source else str(err))
    return problems


def run(args: argparse.Namespace) -> int:
    from src.image_io import DEFAULT_MAX_PIXELS

    args.max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    for flag, value, low in (("--steps", args.steps, 1), ("--max-pixels", args.max_pixels, 1),
                             ("--batch-size", args.batch_size, 1)):
        if value is not None and value < low:
            raise SystemExit(f"anydoor generate: {flag} must be >= {low}, got {value}")
    specs = _specs(args)
    skipped = _check_outputs(specs, args)
    single = args.jobs is None
    if single and skipped:
        raise SystemExit(f"anydoor generate: {skipped[0]}")
    preloaded = None
    if single:  # read the images before loading the model: a bad file costs no model load
        try:
            preloaded = specs[0].read(args.max_pixels)
        except ValueError as err:
            raise SystemExit(f"anydoor generate: {err}") from None

    import torch
    from tqdm.auto import tqdm

    from models.components.precision import default_precision
    from models.pipeline import AnyDoorPipeline, Job
    from src.collage import collage_picture
    from src.cpu_allocator import keep_freed_memory
    from src.image_io import write_image

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        keep_freed_memory()  # large activations reused instead of faulted in again (src/cpu_allocator.py)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    try:
        pipe = AnyDoorPipeline.from_pretrained(args.model, torch_dtype=dtype, device=device)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"anydoor generate: {err}") from None
    pipe.use_channels_last(device.type == "cpu")  # faster oneDNN convolutions (docs/inference.md)
    precision = args.precision or default_precision(device, dtype)

    scheduler, steps, guidance = pipe.sampling_settings(args.scheduler, args.steps, args.guidance)
    print(f"sampling: {scheduler}, {steps} step(s), guidance {guidance:g}, precision {precision}", file=sys.stderr)
    mask_channel = "mask" if args.mask_shape else "box"
    failed = [skipped[i] for i in sorted(skipped)]
    todo = [i for i in range(len(specs)) if i not in skipped]
    written = 0
    size = args.batch_size
    bar = tqdm(total=len(specs), initial=len(skipped), desc="jobs", unit="job", disable=single)
    for start in range(0, len(todo), size):
        chunk = [specs[i] for i in todo[start : start + size]]
        jobs, ready = [], []
        for spec in chunk:
            try:
                job = Job(**(preloaded if single else spec.read(args.max_pixels)))
                pipe.prepare(job, crop_ratio=args.crop_ratio, mask_channel=mask_channel)  # validate alone
            except ValueError as err:  # ImageError included: unreadable, too large, 16-bit float out of range ...
                failed.append(f"{spec.source}: {err}" if spec.source and not str(err).startswith(spec.source) else str(err))
                bar.update(1)
                continue
            jobs.append(job)
            ready.append(spec)
        if not jobs:
            continue
        gens = [torch.Generator(device="cpu").manual_seed(spec.seed if spec.seed is not None else args.seed) for spec in ready]
        try:
            result = pipe(jobs, num_inference_steps=steps, guidance_scale=guidance,
                          scheduler=scheduler, timestep_spacing=args.timestep_spacing, generator=gens,
                          crop_ratio=args.crop_ratio, mask_channel=mask_channel,
                          composite=args.composite, mask_dilate=args.mask_dilate,
                          margin=args.margin, feather=args.feather, progress=single, precision=precision)
        except ValueError as err:
            failed.extend(f"{spec.source or spec.out}: {err}" for spec in ready)
            bar.update(len(jobs))
            continue
        for k, spec in enumerate(ready):
            images = [result.images[k]]
            if args.save_intermediates:
                images += [result.crops[k], collage_picture(result.collages[k], min_side=0)]
            try:
                for path, image in zip(_outputs(spec.out, args.save_intermediates), images):
                    write_image(path, image, overwrite=args.overwrite)  # atomic: a failed write keeps the old file
            except (ValueError, OSError) as err:
                failed.append(f"{spec.source or spec.out}: cannot write: {err}")
                continue
            region = result.regions[k]
            where = "no pixel changed" if region is None else "changed region {} {} {} {}".format(*region)
            tqdm.write(f"{spec.out}: {where} ({args.composite} compositing)")
            written += 1
        bar.update(len(jobs))
    bar.close()
    if single and failed:
        raise SystemExit(f"anydoor generate: {failed[0]}")
    for message in failed:
        print(f"skipped: {message}", file=sys.stderr)
    print(f"wrote {written} image(s); skipped {len(failed)}")
    return 0 if not failed else 1
