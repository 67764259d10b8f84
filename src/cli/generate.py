"""`anydoor generate`: teleport a reference object into a target image (one job, or a JSON/CSV list).

    anydoor generate --ref obj.png --target scene.jpg --box 40 60 200 260 --out out.png --model DIR
    anydoor generate --jobs jobs.csv --out-dir outs/ --model DIR

A jobs file is a JSON list of objects or a CSV with a header, with the fields ``ref``, ``ref_mask``
(optional when ``ref`` is RGBA), ``target``, ``box`` ("x1 y1 x2 y2") or ``mask``, ``out``
(optional; default ``<out-dir>/<index>_<target stem>.png``) and optionally ``seed``. Relative
paths are relative to the jobs file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "pretrained/anydoor"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    one = parser.add_argument_group("one job")
    one.add_argument("--ref", help="reference image (RGBA: alpha is the object mask)")
    one.add_argument("--ref-mask", help="reference object mask (non-zero = object)")
    one.add_argument("--target", help="target image")
    where = one.add_mutually_exclusive_group()
    where.add_argument("--box", type=int, nargs=4, metavar=("X1", "Y1", "X2", "Y2"),
                       help="where to put the object, exclusive ends")
    where.add_argument("--mask", help="target mask (non-zero = where the object goes)")
    one.add_argument("--out", help="output image path")
    batch = parser.add_argument_group("batch")
    batch.add_argument("--jobs", help="JSON or CSV list of jobs (see module doc)")
    batch.add_argument("--out-dir", default="outputs/generate", help="where jobs without 'out' are written")
    batch.add_argument("--batch-size", type=int, default=1, help="jobs per forward pass")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="pretrained folder (anydoor convert / save_pretrained)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampling steps (default: the model folder's recommendation, else 20 for dpm, 50 for ddim)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale, 1 = off (default: the model folder's, else 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scheduler", choices=("ddim", "dpm"), default=None,
                        help="dpm (DPM-Solver++ 2M, 20 steps) or ddim (the authors' sampler, 50 steps); default: "
                             "the sampler the model folder recommends (a make-train export: its one DDIM step), else dpm")
    parser.add_argument("--timestep-spacing", choices=("leading", "trailing", "linspace"), default=None,
                        help="override the timestep spacing (default: trailing for dpm, the saved "
                             "config's for ddim: the authors' leading)")
    parser.add_argument("--crop-ratio", type=float, default=2.0, help="context crop around the grown box")
    parser.add_argument("--mask-shape", action="store_true",
                        help="with --mask: give the model the mask's shape instead of its box")
    parser.add_argument("--margin", type=int, default=5, help="crop border (px) kept from the target on paste")
    parser.add_argument("--feather", type=int, default=0, help="soft seam width (px) when pasting back")
    parser.add_argument("--save-intermediates", action="store_true", help="also write the crop and the collage")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="default float16 on GPU, float32 on CPU")


def read_image(path: str | Path, mode: str | None = None):
    """uint8 array of an image file (``mode``: "RGB", "L", or None for RGB/RGBA as stored)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            if mode is None:
                mode = "RGBA" if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info else "RGB"
            return np.asarray(img.convert(mode))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: cannot be read as an image ({err})") from err


def _box(value: Any, where: str) -> list[int]:
    parts = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    try:
        box = [int(float(v)) for v in parts]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4:
        raise ValueError(f"{where}: box must be four numbers x1 y1 x2 y2, got {value!r}")
    return box


def read_jobs(path: str | Path) -> list[dict[str, Any]]:
    """Job records from a JSON list or a CSV file, paths resolved against the file's folder."""
    import csv
    import json

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such jobs file")
    try:
        if path.suffix.lower() == ".json":
            records = json.loads(path.read_text())
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise ValueError("expected a JSON list of objects")
        elif path.suffix.lower() == ".csv":
            with open(path, newline="") as f:
                records = [{k: v for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]
        else:
            raise ValueError("jobs file must end in .json or .csv")
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot be parsed ({err})") from err
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    jobs = []
    for i, rec in enumerate(records):
        where = f"{path} job {i}"
        for key in ("ref", "target"):
            if key not in rec:
                raise ValueError(f"{where}: missing {key!r}")
        if ("box" in rec) == ("mask" in rec):
            raise ValueError(f"{where}: give exactly one of 'box' and 'mask'")
        job = {k: rec[k] for k in ("ref", "ref_mask", "target", "mask", "out") if k in rec}
        for key in ("ref", "ref_mask", "target", "mask", "out"):
            if key in job and not Path(job[key]).is_absolute():
                job[key] = str(path.parent / job[key])
        if "box" in rec:
            job["box"] = _box(rec["box"], where)
        if "seed" in rec:
            job["seed"] = int(rec["seed"])
        job["where"] = where
        jobs.append(job)
    if not jobs:
        raise ValueError(f"{path}: holds no jobs")
    return jobs


def load_job(record: dict[str, Any]):
    """Read the images of one job record into a pipeline ``Job`` (errors name the file)."""
    from models.pipeline import Job

    ref = read_image(record["ref"])
    ref_mask = read_image(record["ref_mask"], "L") if record.get("ref_mask") else None
    if ref_mask is None and ref.shape[2] != 4:
        raise ValueError(f"{record['ref']}: not RGBA, so give a reference mask (--ref-mask / 'ref_mask')")
    target = read_image(record["target"], "RGB")
    mask = read_image(record["mask"], "L") if record.get("mask") else None
    return Job(reference=ref, target=target, reference_mask=ref_mask, box=record.get("box"), target_mask=mask,
               name=record.get("where") or f"{record['ref']} -> {record['target']}")


def _write(path: Path, array) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _collage_preview(collage):
    """RGB part and location channel of a 4 x S x S collage side by side, uint8."""
    import numpy as np

    rgb = ((collage[:3].transpose(1, 2, 0) + 1) * 127.5).clip(0, 255).round().astype(np.uint8)
    loc = ((collage[3] + 1) * 127.5).clip(0, 255).round().astype(np.uint8)
    return np.concatenate([rgb, np.repeat(loc[..., None], 3, axis=2)], axis=1)


def run(args: argparse.Namespace) -> int:
    if args.steps is not None and args.steps < 1:
        raise SystemExit(f"anydoor generate: --steps must be >= 1, got {args.steps}")
    if args.jobs is None:
        missing = [f"--{n}" for n in ("ref", "target", "out") if getattr(args, n) is None]
        if args.box is None and args.mask is None:
            missing.append("--box or --mask")
        if missing:
            raise SystemExit(f"anydoor generate: missing {', '.join(missing)} (or give --jobs FILE)")
        records = [{"ref": args.ref, "ref_mask": args.ref_mask, "target": args.target, "box": args.box,
                    "mask": args.mask, "out": args.out, "seed": args.seed}]
    else:
        if args.ref or args.target or args.out:
            raise SystemExit("anydoor generate: --jobs cannot be combined with --ref/--target/--out")
        try:
            records = read_jobs(args.jobs)
        except ValueError as err:
            raise SystemExit(f"anydoor generate: {err}") from err

    import torch
    from tqdm.auto import tqdm

    from models.pipeline import AnyDoorPipeline

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    try:
        pipe = AnyDoorPipeline.from_pretrained(args.model, torch_dtype=dtype, device=device)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"anydoor generate: {err}") from err
    pipe.use_channels_last(device.type == "cpu")  # faster oneDNN convolutions (docs/inference.md)

    scheduler, steps, guidance = pipe.sampling_settings(args.scheduler, args.steps, args.guidance, default_scheduler="dpm")
    print(f"sampling: {scheduler}, {steps} step(s), guidance {guidance:g}", file=sys.stderr)
    out_dir = Path(args.out_dir)
    mask_channel = "mask" if args.mask_shape else "box"
    failed: list[str] = []
    written = 0
    size = max(1, args.batch_size)
    bar = tqdm(total=len(records), desc="jobs", unit="job", disable=len(records) == 1)
    for start in range(0, len(records), size):
        chunk = records[start : start + size]
        jobs, outs, gens = [], [], []
        for i, rec in enumerate(chunk, start):
            try:
                job = load_job(rec)
                pipe.prepare(job, crop_ratio=args.crop_ratio, mask_channel=mask_channel)  # validate alone
                jobs.append(job)
            except ValueError as err:
                failed.append(str(err))
                bar.update(1)
                continue
            outs.append(Path(rec["out"]) if rec.get("out") else out_dir / f"{i:05d}_{Path(rec['target']).stem}.png")
            gens.append(torch.Generator(device="cpu").manual_seed(int(rec.get("seed", args.seed))))
        if not jobs:
            continue
        try:
            result = pipe(jobs, num_inference_steps=steps, guidance_scale=guidance,
                          scheduler=scheduler, timestep_spacing=args.timestep_spacing, generator=gens,
                          crop_ratio=args.crop_ratio, mask_channel=mask_channel,
                          margin=args.margin, feather=args.feather, progress=len(records) == 1)
        except ValueError as err:
            failed.append(str(err))
            bar.update(len(jobs))
            continue
        for k, out in enumerate(outs):
            _write(out, result.images[k])
            if args.save_intermediates:
                _write(out.with_name(out.stem + "_crop.png"), result.crops[k])
                _write(out.with_name(out.stem + "_collage.png"), _collage_preview(result.collages[k]))
            written += 1
        bar.update(len(jobs))
    bar.close()
    for msg in failed:
        print(f"skipped: {msg}", file=sys.stderr)
    print(f"wrote {written} image(s); skipped {len(failed)}")
    return 0 if not failed else 1
