"""`anydoor eval`: score generations (PSNR/SSIM in the box, on the mask and outside it; DINO-I, CLIP-I)
against baselines on the same jobs.

Settings come from ``--config`` (YAML, keys as the long flags with ``_``; ``methods`` and ``scorers``
as ``{name: {class_path, init_args}}``) and are overridden by flags; ``evaluation.config`` validates
them with jsonargparse and builds only the project's own classes. Bad input (config, job file,
image, model folder) ends with one line naming the file and exit status 1, never a traceback.
Heavy imports happen in ``run``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# flags that override the config's key of the same name
FLAG_KEYS = ("jobs", "out", "size", "limit", "baselines", "steps", "guidance", "seed", "device", "batch_size",
             "grid_rows", "max_pixels", "training_log", "checkpoint_series", "run", "checkpoint_config")


def _named(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    return (name, path) if sep else (Path(value.rstrip("/")).name, value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML with any of the settings below plus methods/scorers (class_path/init_args)")
    parser.add_argument("--jobs", help="jobs.json, a folder of job folders, or a shard folder (held-out set: jobs derived from it)")
    parser.add_argument("--out", help="output folder (default outputs/eval)")
    parser.add_argument("--size", type=int, help="crop side in px (default: the model's, else 512)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N jobs")
    parser.add_argument("--model", action="append", default=[], metavar="[NAME=]DIR", help="a pretrained model folder to generate with (repeatable)")
    parser.add_argument("--generated", action="append", default=[], metavar="[NAME=]DIR", help="a folder of already generated full images <job>.png (repeatable)")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false", default=None, help="skip the background and copy-paste baselines")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's recipe, else 50)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's, else 5.0)")
    parser.add_argument("--seed", type=int, help="noise seed (each job adds its own offset)")
    parser.add_argument("--device", help="cpu or cuda")
    parser.add_argument("--batch-size", dest="batch_size", type=int)
    parser.add_argument("--grid-rows", dest="grid_rows", type=int, help="jobs shown in grid.png")
    parser.add_argument("--dino", nargs=2, metavar=("TIMM_MODEL", "WEIGHTS"), help="DINO-I with a timm ViT and a local weight file")
    parser.add_argument("--clip", nargs="+", metavar="MODEL", help="CLIP-I: an open_clip name and a local weight file, or a local open_clip folder")
    parser.add_argument("--training-log", dest="training_log", help="TensorBoard run folder ('*' = newest) to plot loss and held-out PSNR over steps")
    parser.add_argument("--checkpoint-series", dest="checkpoint_series", help="glob of training checkpoints to score over steps, relative to the --training-log run")
    parser.add_argument("--run", help="a training run folder ('*' = newest); the config's {run} placeholders point at it")
    parser.add_argument("--checkpoint-config", dest="checkpoint_config", help="the training config the checkpoints come from (default: the run's saved config.yaml)")
    parser.add_argument("--max-pixels", dest="max_pixels", type=int,
                        help="refuse job images with more pixels than this (default 64 MP, ~8000 x 8000: "
                             "src.image_io.DEFAULT_MAX_PIXELS)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as settings: plain keys, plus methods/scorers entries for --model/--generated/--dino/--clip."""
    overrides: dict[str, Any] = {key: getattr(args, key, None) for key in FLAG_KEYS}
    methods = {name: {"class_path": "evaluation.methods.PipelineMethod", "init_args": {"model": folder}}
               for name, folder in map(_named, args.model)}
    methods.update({name: {"class_path": "evaluation.methods.FromFolder", "init_args": {"folder": folder}}
                    for name, folder in map(_named, args.generated)})
    scorers = {}
    if args.dino:
        scorers["dino_i"] = {"class_path": "evaluation.identity.DinoScorer",
                             "init_args": {"model_name": args.dino[0], "weights": args.dino[1]}}
    if args.clip:
        if len(args.clip) > 2:
            raise SystemExit("anydoor eval: --clip takes MODEL [WEIGHTS]")
        scorers["clip_i"] = {"class_path": "evaluation.identity.ClipScorer", "init_args": dict(zip(("model", "weights"), args.clip))}
    overrides.update(methods=methods, scorers=scorers)
    return overrides


def run(args: argparse.Namespace) -> int:
    """Exit status 0 when the report is written; bad input ends with one line per problem and 1."""
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as err:  # ConfigError, ImageError, job errors: each names its file
        raise SystemExit("\n".join(f"anydoor eval: {line}" for line in str(err).splitlines())) from None


def _run(args: argparse.Namespace) -> int:
    import json

    from evaluation.config import load_settings
    from evaluation.curves import plot_training, read_scalars, score_checkpoints
    from evaluation.methods import BackgroundFill, CopyPaste, latest
    from evaluation.runner import evaluate, markdown_table
    from evaluation.shard_jobs import jobs_from_shards
    from src.files import atomic_write
    from src.jobs import read_jobs

    parser, cfg = load_settings(args.config, _overrides(args))
    out = Path(cfg.out)
    jobs_path = Path(cfg.jobs)
    if jobs_path.is_dir() and ((jobs_path / "manifest.json").is_file() or any(jobs_path.glob("*.tar"))):
        jobs_path = jobs_from_shards(jobs_path, out / "jobs", limit=cfg.limit)
    jobs = read_jobs(jobs_path)[: cfg.limit]
    missing = [f"{job.source}: {key} {path}: no such file" for job in jobs for key, path in job.paths().items()
               if not path.is_file()]
    if missing:  # before any model is loaded
        raise ValueError("\n".join(missing))

    print(f"loading {len(cfg.methods)} method(s) and {len(cfg.scorers)} scorer(s) ...", file=sys.stderr)
    built = parser.instantiate(cfg)
    methods: dict[str, Any] = {}
    if cfg.baselines:
        methods.update(background=BackgroundFill(), copy_paste=CopyPaste())
    methods.update(built.methods)
    described = {n: m.describe() for n, m in methods.items() if hasattr(m, "describe")}
    for name, d in described.items():  # the resolved sampler, as `anydoor generate` prints it
        print(f"{name}: sampling {d['scheduler']}, {d['steps']} step(s), guidance {d['guidance']:g} ({d['model']})",
              file=sys.stderr)
    sizes = {m.size for m in methods.values() if getattr(m, "size", None)}
    if len(sizes) > 1:
        raise ValueError(f"the models use different crop sizes {sorted(sizes)}; evaluate them separately")
    size = cfg.size or (sizes.pop() if sizes else 512)
    settings = cfg.as_dict()
    record = {k: v for k, v in settings.items() if k not in ("methods", "scorers")}
    record.update(jobs=str(jobs_path), methods=described, scorers=settings["scorers"])
    result = evaluate(
        jobs, methods, out, size=size, scorers=built.scorers, batch_size=cfg.batch_size,
        grid_rows=cfg.grid_rows, save_images=cfg.save_images, settings=record, max_pixels=cfg.max_pixels,
    )
    print(markdown_table(result["summary"], list(result["metrics"])))
    series = None
    if cfg.checkpoint_series:
        pattern = cfg.checkpoint_series
        if cfg.training_log and not Path(pattern).is_absolute():
            pattern = str(latest(cfg.training_log) / pattern)  # the same run as the curves
        series = score_checkpoints(cfg.checkpoint_config, pattern, jobs, size=size, seed=cfg.seed)
        final = cfg.series_final
        if final and final in result["summary"] and cfg.training_log:
            # the end-of-run model (e.g. the export written when training stops, which can be newer than
            # the last periodic checkpoint) at the last logged step
            scalars = read_scalars(cfg.training_log)
            last = max((s for values in scalars.values() for s, _ in values), default=None)
            stats = result["summary"][final]
            series.append({"step": last, "checkpoint": f"method {final}", **{k: stats[k]["mean"] for k in ("psnr_box", "psnr_mask") if k in stats}})
        atomic_write(out / "checkpoint_series.json", json.dumps(series, indent=1))
    if cfg.training_log:
        lines = {n: result["summary"][n]["psnr_box"]["mean"] for n in ("background", "copy_paste") if "psnr_box" in result["summary"].get(n, {})}
        png = plot_training(cfg.training_log, out / "training_curves.png", checkpoint_series=series, baselines=lines)
        print(f"training curves: {png}", file=sys.stderr)
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.md'}, {out / 'grid.png'}", file=sys.stderr)
    return 0


