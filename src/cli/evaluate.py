"""`anydoor eval`: score generations (PSNR/SSIM in the box, on the mask and outside it; DINO-I, CLIP-I)
against baselines on the same jobs.

Settings come from ``--config`` (YAML, keys as the long flags with ``_``; ``methods`` and ``scorers``
as ``{name: {class_path, init_args}}``) and are overridden by flags. Heavy imports happen in ``run``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "jobs": None,
    "out": "outputs/eval",
    "size": None,
    "limit": None,
    "batch_size": 8,
    "grid_rows": 8,
    "baselines": True,
    "save_images": True,
    "steps": None,
    "guidance": None,
    "seed": 0,
    "device": "cpu",
    "methods": {},
    "scorers": {},
    "training_log": None,
    "checkpoint_series": None,
    "checkpoint_config": None,
    "run": None,
    "series_final": None,
}


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


def load_settings(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    settings = dict(DEFAULTS)
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise SystemExit(f"anydoor eval: config {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise SystemExit(f"anydoor eval: {path} must hold a mapping")
        unknown = set(data) - set(DEFAULTS)
        if unknown:
            raise SystemExit(f"anydoor eval: {path}: unknown keys {sorted(unknown)} (known: {sorted(DEFAULTS)})")
        settings.update({k: v for k, v in data.items() if v is not None or k in ("size", "limit")})
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None and key not in ("methods", "scorers"):
            settings[key] = value
    settings["methods"] = dict(settings.get("methods") or {})
    settings["scorers"] = dict(settings.get("scorers") or {})
    for name, folder in map(_named, args.model):
        settings["methods"][name] = {"class_path": "evaluation.methods.PipelineMethod", "init_args": {"model": folder}}
    for name, folder in map(_named, args.generated):
        settings["methods"][name] = {"class_path": "evaluation.methods.FromFolder", "init_args": {"folder": folder}}
    if args.dino:
        settings["scorers"]["dino_i"] = {"class_path": "evaluation.identity.DinoScorer", "init_args": {"model_name": args.dino[0], "weights": args.dino[1]}}
    if args.clip:
        if len(args.clip) > 2:
            raise SystemExit("anydoor eval: --clip takes MODEL [WEIGHTS]")
        settings["scorers"]["clip_i"] = {"class_path": "evaluation.identity.ClipScorer", "init_args": dict(zip(("model", "weights"), args.clip))}
    if not settings["jobs"]:
        raise SystemExit("anydoor eval: give --jobs (or jobs: in --config)")
    return settings


def fill_run(value: Any, run: str | None) -> Any:
    """Replace ``{run}`` in every string of the settings with the resolved training run folder, so the
    untrained model, the checkpoint and the curves all come from the same run."""
    if isinstance(value, str) and "{run}" in value:
        if run is None:
            raise SystemExit(f"anydoor eval: {value!r} needs a training run: set run: (or --run)")
        return value.replace("{run}", run)
    if isinstance(value, dict):
        return {k: fill_run(v, run) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_run(v, run) for v in value]
    return value


def _model_overrides(spec: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Pass steps/guidance/seed/device flags to model-backed methods (not to baselines)."""
    if spec.get("class_path", "").rsplit(".", 1)[-1] not in ("PipelineMethod", "ModuleMethod"):
        return spec
    init = dict(spec.get("init_args") or {})
    for key in ("steps", "guidance", "seed", "device"):
        if settings.get(key) is not None:
            init.setdefault(key, settings[key])
    return {**spec, "init_args": init}


def run(args: argparse.Namespace) -> int:
    import json

    from evaluation.curves import plot_training, read_scalars, score_checkpoints
    from evaluation.jobs import load_jobs
    from evaluation.methods import BackgroundFill, CopyPaste, latest
    from evaluation.runner import evaluate, markdown_table
    from evaluation.shard_jobs import jobs_from_shards

    settings = load_settings(args)
    if settings["run"]:
        try:
            settings["run"] = str(latest(settings["run"]))
        except FileNotFoundError as err:
            raise SystemExit(f"anydoor eval: {err}") from err
    settings = fill_run(settings, settings["run"])
    out = Path(settings["out"])
    jobs_path = Path(settings["jobs"])
    if jobs_path.is_dir() and ((jobs_path / "manifest.json").is_file() or any(jobs_path.glob("*.tar"))):
        jobs_path = jobs_from_shards(jobs_path, out / "jobs", limit=settings["limit"])
    try:
        jobs = load_jobs(jobs_path)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"anydoor eval: {err}") from err
    if settings["limit"] is not None:
        jobs = jobs[: settings["limit"]]

    from evaluation.runner import instantiate

    methods: dict[str, Any] = {}
    if settings["baselines"]:
        methods.update(background=BackgroundFill(), copy_paste=CopyPaste())
    for name, spec in settings["methods"].items():
        print(f"loading {name} ...", file=sys.stderr)
        methods[name] = instantiate(_model_overrides(spec, settings))
    scorers = {name: instantiate(spec) for name, spec in settings["scorers"].items()}
    sizes = {m.size for m in methods.values() if getattr(m, "size", None)}
    if len(sizes) > 1:
        raise SystemExit(f"anydoor eval: the models use different crop sizes {sorted(sizes)}; evaluate them separately")
    size = settings["size"] or (sizes.pop() if sizes else 512)
    described = {n: m.describe() for n, m in methods.items() if hasattr(m, "describe")}
    record = {k: v for k, v in settings.items() if k not in ("methods", "scorers")}
    record.update(jobs=str(jobs_path), methods=described, scorers=settings["scorers"])
    result = evaluate(
        jobs, methods, out, size=size, scorers=scorers, batch_size=settings["batch_size"],
        grid_rows=settings["grid_rows"], save_images=settings["save_images"], settings=record,
    )
    print(markdown_table(result["summary"], list(result["metrics"])))
    series = None
    if settings["checkpoint_series"]:
        pattern = settings["checkpoint_series"]
        if settings["training_log"] and not Path(pattern).is_absolute():
            pattern = str(latest(settings["training_log"]) / pattern)  # the same run as the curves
        series = score_checkpoints(settings["checkpoint_config"], pattern, jobs, size=size, seed=settings["seed"])
        final = settings["series_final"]
        if final and final in result["summary"] and settings["training_log"]:
            # the end-of-run model (e.g. the export written when training stops, which can be newer than
            # the last periodic checkpoint) at the last logged step
            scalars = read_scalars(settings["training_log"])
            last = max((s for values in scalars.values() for s, _ in values), default=None)
            stats = result["summary"][final]
            series.append({"step": last, "checkpoint": f"method {final}", **{k: stats[k]["mean"] for k in ("psnr_box", "psnr_mask") if k in stats}})
        (out / "checkpoint_series.json").write_text(json.dumps(series, indent=1))
    if settings["training_log"]:
        lines = {n: result["summary"][n]["psnr_box"]["mean"] for n in ("background", "copy_paste") if "psnr_box" in result["summary"].get(n, {})}
        png = plot_training(settings["training_log"], out / "training_curves.png", checkpoint_series=series, baselines=lines)
        print(f"training curves: {png}", file=sys.stderr)
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.md'}, {out / 'grid.png'}", file=sys.stderr)
    return 0
