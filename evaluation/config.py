"""`anydoor eval` settings: a YAML file plus flags, validated and instantiated by jsonargparse.

Configs and run folders are untrusted input (a run folder may come from someone else), so before
jsonargparse imports anything every ``class_path`` is checked against an allowlist of the project's
own modules: ``evaluation.methods`` / ``evaluation.identity`` for the eval config's methods and
scorers, ``models.*`` (and ``torch.optim`` for optimizer callables) for the ``model`` section of a
training run's ``config.yaml``. A ``class_path: subprocess.run`` is refused with one line naming the
file; nothing is imported or run. jsonargparse then checks every key and ``init_args`` against the
classes' signatures (unknown keys and wrong types are errors before any model is loaded).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from src.image_io import DEFAULT_MAX_PIXELS

EVAL_MODULES = ("evaluation.methods", "evaluation.identity")
MODEL_METHODS = ("PipelineMethod", "ModuleMethod")  # take the steps/guidance/seed/device settings
MODEL_SETTINGS = ("steps", "guidance", "seed", "device")


class ConfigError(ValueError):
    """A settings problem, one line naming the file (or flag) and the key."""


def _inside(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


def check_class_paths(tree: Any, allowed: tuple[str, ...], source: str, key: str = "") -> None:
    """Refuse any ``class_path`` in ``tree`` that is not a class defined in an ``allowed`` module.

    Only the allowed modules are ever imported here; anything else fails on its name alone."""
    if isinstance(tree, Mapping):
        if "class_path" in tree:
            path = tree["class_path"]
            module_name, _, name = path.rpartition(".") if isinstance(path, str) else ("", "", "")
            where = f"{source}: {key or 'class_path'}"
            if not _inside(module_name, allowed):
                raise ConfigError(f"{where}: class_path {path!r} refused: only classes of {', '.join(allowed)} "
                                  "are built from a config (configs and run folders are untrusted input)")
            try:
                obj = getattr(importlib.import_module(module_name), name)
            except (ImportError, AttributeError) as err:
                raise ConfigError(f"{where}: cannot import {path!r} ({err})") from None
            if not inspect.isclass(obj) or not _inside(obj.__module__, allowed):
                raise ConfigError(f"{where}: {path!r} is not a class of {', '.join(allowed)}")
        for k, v in tree.items():
            check_class_paths(v, allowed, source, f"{key}.{k}" if key else str(k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            check_class_paths(v, allowed, source, f"{key}[{i}]")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file; errors name the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping of settings, got {type(data).__name__}")
    return data


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def fill_run(value: Any, run: str | None) -> Any:
    """Replace ``{run}`` in every string of the settings with the resolved training run folder, so the
    untrained model, the checkpoint and the curves all come from the same run."""
    if isinstance(value, str) and "{run}" in value:
        if run is None:
            raise ConfigError(f"{value!r} needs a training run: set run: (or --run)")
        return value.replace("{run}", run)
    if isinstance(value, dict):
        return {k: fill_run(v, run) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_run(v, run) for v in value]
    return value


def settings_parser():
    """The schema of an eval config (keys = the long flags with ``_``)."""
    from jsonargparse import ArgumentParser
    from jsonargparse.typing import NonNegativeInt, PositiveInt

    from evaluation.identity import Scorer
    from evaluation.methods import Method

    p = ArgumentParser(prog="anydoor eval", exit_on_error=False, default_env=False)
    p.add_argument("--jobs", type=Optional[str], default=None, help="job file or folder, or a shard folder")
    p.add_argument("--out", type=str, default="outputs/eval")
    p.add_argument("--size", type=Optional[PositiveInt], default=None, help="crop side (default: the models')")
    p.add_argument("--limit", type=Optional[PositiveInt], default=None)
    p.add_argument("--batch_size", type=PositiveInt, default=8)
    p.add_argument("--grid_rows", type=NonNegativeInt, default=8)
    p.add_argument("--baselines", type=bool, default=True)
    p.add_argument("--save_images", type=bool, default=True)
    p.add_argument("--steps", type=Optional[PositiveInt], default=None)
    p.add_argument("--guidance", type=Optional[float], default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--max_pixels", type=PositiveInt, default=DEFAULT_MAX_PIXELS)
    p.add_argument("--methods", type=dict[str, Method], default={})
    p.add_argument("--scorers", type=dict[str, Scorer], default={})
    p.add_argument("--run", type=Optional[str], default=None)
    p.add_argument("--training_log", type=Optional[str], default=None)
    p.add_argument("--checkpoint_series", type=Optional[str], default=None)
    p.add_argument("--checkpoint_config", type=Optional[str], default=None)
    p.add_argument("--series_final", type=Optional[str], default=None)
    return p


def load_settings(config: str | Path | None, overrides: Mapping[str, Any]) -> tuple[Any, Any]:
    """(parser, validated settings): the config file's values, then ``overrides`` (flags; ``methods``
    and ``scorers`` entries are added to the file's). ``{run}`` is filled and the model settings
    (``steps``, ``guidance``, ``seed``, ``device``) passed to model methods that do not set them."""
    from evaluation.methods import latest

    source = str(config) if config else "the command line"
    raw = read_yaml(config) if config else {}
    for key, value in overrides.items():
        if key in ("methods", "scorers"):
            raw[key] = {**(raw.get(key) or {}), **value}
        elif value is not None:
            raw[key] = value
    for key in ("methods", "scorers"):
        if key in raw:
            check_class_paths(raw[key], EVAL_MODULES, source, key)
    if raw.get("run"):
        try:
            raw["run"] = str(latest(raw["run"]))
        except FileNotFoundError as err:
            raise ConfigError(str(err)) from None
    raw = fill_run(raw, raw.get("run"))
    for spec in (raw.get("methods") or {}).values():
        if isinstance(spec, dict) and str(spec.get("class_path", "")).rsplit(".", 1)[-1] in MODEL_METHODS:
            init = spec.setdefault("init_args", {}) or {}
            spec["init_args"] = {**{k: raw[k] for k in MODEL_SETTINGS if raw.get(k) is not None}, **init}
    parser = settings_parser()
    try:
        settings = parser.parse_object(raw)
    except argparse.ArgumentError as err:  # jsonargparse's; keep its message, drop the trace
        raise ConfigError(f"{source}: {_one_line(err)}") from None
    if not settings.jobs:
        raise ConfigError("give --jobs (or jobs: in --config)")
    return parser, settings
