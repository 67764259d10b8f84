"""Early, short errors for `lightning`: every path in the config checked before a model is built, and
jsonargparse's 60-line messages cut down to the offending key, what it accepts and what it got.

Pure functions over plain dicts and message text (no Lightning import), so they test in milliseconds.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from pathlib import Path
from typing import Any, Iterable, Optional


REMOTE = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*://|pipe:)")  # URLs and webdataset pipes are left to the loader
SPECIAL_CKPT = {"last", "best", "hpc", "registry"}
SYNTHETIC_HINT = "build the synthetic set with `make shards`"


class ConfigError(ValueError):
    """Problems found before anything was built; the message is a few lines, one per problem."""


def _where(path: str) -> str:
    return path if Path(path).is_absolute() else f"{path} (relative to {Path.cwd()})"


def _init_args(node: Any) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {}
    return dict(node.get("init_args") or {}) if "class_path" in node or "init_args" in node else node


def _diffusers_part(folder: Path) -> Optional[str]:
    """Why ``folder`` is not a diffusers model folder (config.json + weights), or None."""
    if not folder.is_dir():
        return f"{folder}: no such folder"
    if not (folder / "config.json").is_file():
        return f"{folder}: no config.json"
    if not any(folder.glob("diffusion_pytorch_model*")):
        return f"{folder}: no weights (diffusion_pytorch_model.safetensors)"
    return None


def model_problems(model: dict[str, Any]) -> list[str]:
    """The model's local sources: SD folder parts it will read, the DINOv2 weight file, a VAE folder."""
    args, problems = _init_args(model), []
    key = "model.init_args"
    sd_path = args.get("sd_path")
    vae_key = "vae" if "vae" in args or "first_stage" not in args else "first_stage"  # first_stage: older configs
    first_stage = dict(args.get(vae_key) or {"type": "vae"})
    vae_path = first_stage.get("path")
    if sd_path:
        if not Path(sd_path).is_dir():
            problems.append(f"{key}.sd_path: {_where(sd_path)}: no such folder")
        else:
            parts = ["unet"] + (["vae"] if first_stage.get("type", "vae") == "vae" and not vae_path else [])
            problems += [f"{key}.sd_path: {why}" for part in parts if (why := _diffusers_part(Path(sd_path) / part))]
    elif vae_key in args and first_stage.get("type", "vae") == "vae" and not vae_path:
        problems.append(f"{key}.{vae_key}: a VAE needs sd_path or {vae_key}.path")
    if vae_path and (why := _diffusers_part(Path(vae_path))):
        problems.append(f"{key}.{vae_key}.path: {why}")
    weights = (args.get("id_encoder") or {}).get("weights")
    if weights and not REMOTE.match(str(weights)) and not Path(weights).is_file():
        problems.append(f"{key}.id_encoder.weights: {_where(weights)}: no such file")
    return problems


def _shard_items(spec: Any) -> Iterable[str]:
    from datamodules.components.shard_lists import parse_spec  # the datamodule's own reading of the forms

    if isinstance(spec, str):
        try:
            spec = parse_spec(spec)
        except ValueError:
            pass  # resolve() below names the problem
    if isinstance(spec, dict):
        for urls in spec.values():
            yield from _shard_items(urls)
    elif isinstance(spec, (list, tuple)):
        for item in spec:
            yield from _shard_items(item)
    elif spec is not None:
        yield str(spec)


def shard_problems(key: str, spec: Any) -> list[str]:
    """Local shard sources exist and hold shards (folders, manifests, brace patterns); URLs are not
    fetched. ``shard_lists.resolve`` (what the datamodule runs) names missing shard files."""
    from datamodules.components.shard_lists import resolve

    problems = []
    for item in _shard_items(spec):
        if REMOTE.match(item):
            continue
        hint = f"; {SYNTHETIC_HINT}" if "synthetic" in Path(item).parts else ""
        if not any(c in item for c in "{*?[") and not Path(item).exists():
            problems.append(f"{key}: {_where(item)}: no such file or folder{hint}")
            continue
        try:
            resolve(item)
        except (OSError, ValueError, KeyError) as err:  # resolve's messages mostly name the file already
            problems.append(f"{key}: {err if str(err).startswith(item) else f'{item}: {err}'}{hint}")
    return problems


def precision_problems(config: dict[str, Any]) -> list[str]:
    """``model.init_args.frozen_dtype`` (frozen parts stored in bf16/fp16) runs under autocast only."""
    frozen = _init_args(config.get("model")).get("frozen_dtype")
    precision = str((config.get("trainer") or {}).get("precision", "32-true"))
    if frozen in (None, "float32") or precision in ("16", "bf16") or precision.endswith("-mixed"):  # 16/bf16: aliases
        return []
    return [f"model.init_args.frozen_dtype: {frozen} needs trainer.precision bf16-mixed or 16-mixed, got {precision}"]


def config_problems(config: dict[str, Any], subcommand: str) -> list[str]:
    """Every problem with the paths in one subcommand's config (a dict), all at once."""
    problems = model_problems(config.get("model") or {}) + precision_problems(config)
    data = _init_args(config.get("data"))
    for name in (["train_shards"] if subcommand == "fit" else []) + ["val_shards"]:
        problems += shard_problems(f"data.init_args.{name}", data.get(name))
    ckpt = config.get("ckpt_path")
    if ckpt and str(ckpt) not in SPECIAL_CKPT and not REMOTE.match(str(ckpt)) and not Path(ckpt).is_file():
        problems.append(f"ckpt_path: {_where(str(ckpt))}: no such file")
    return problems


# --------------------------------------------------------------------------- jsonargparse messages
BOILERPLATE = re.compile(
    r"^(Does not validate against any of the Union subtypes|Subtypes: .*|Errors:|Given value type: .*"
    r"|Expected a <class 'NoneType'>|Expected a path but .* either not accessible or invalid)$")


def _type_name(text: str) -> str:
    return re.sub(r"<class '(?:builtins\.)?([\w.]+)'>", r"\1", text).replace("typing.", "")


def init_parameters(class_path: str) -> list[str]:
    """Keyword names ``class_path`` accepts (for "did you mean"); empty when it cannot be imported."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, TypeError, ValueError):
        return []


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def short_parse_error(message: str, options: Iterable[str] = ()) -> str:
    """jsonargparse's error message cut to ``key: what is wrong`` lines."""
    message = message.strip()
    if message.startswith("unrecognized arguments:"):
        given = [t.split("=", 1)[0] for t in message.split(":", 1)[1].split() if t.startswith("-")]
        return "\n".join(f"unknown option {g}{_did_you_mean(g, options)}" for g in given) or message
    keys = re.findall(r'Parser key "([^"]+)"', message)
    classes = re.findall(r"Problem with given class_path '([^']+)'", message)
    key = keys[0] if keys else ""
    if classes and len(keys) > 1:
        key = f"{keys[0]}.init_args.{keys[-1]}"
    got, expected, reasons = None, [], []
    for raw in message.splitlines():
        line = re.sub(r'^Parser key "[^"]+":\s*', "", raw.strip().lstrip("- ").strip())
        if not line or BOILERPLATE.match(line) or line.startswith("Problem with given class_path"):
            continue
        if m := re.match(r"Given value: NestedArg\(key='[^']*', val='(.*)'\)$", line):
            got = m.group(1)
        elif m := re.match(r"Given value: (.*)$", line):
            got = m.group(1) if got is None and len(m.group(1)) <= 80 else got
        elif m := re.match(r"Expected a (.*?)(?:\. Got value: (.*))?$", line):
            literal = re.match(r"(?:typing\.)?Literal\[(.*)\]$", m.group(1))
            expected += literal.group(1).split(", ") if literal else [_type_name(m.group(1))]
            got = m.group(2) if m.group(2) is not None else got
        elif m := re.match(r"Option '([^']+)' is not accepted", line):
            key = f"{key}.init_args.{m.group(1)}" if classes else m.group(1)
            reasons.append(f"not an option of {classes[0] if classes else key}"
                           f"{_did_you_mean(m.group(1), init_parameters(classes[0]) if classes else options)}")
        elif line.startswith("Subcommand ") and "does not accept option" in line:
            bad = line.rsplit("option", 1)[1].strip(" '")
            return f"unknown key {bad} in the config{_did_you_mean(bad, (o.lstrip('-') for o in options))}"
        elif classes and ("has no attribute" in line or "No module named" in line or "not found" in line):
            reasons.append(f"cannot import {classes[0]} ({line})")
        else:
            reasons.append(line)
    if expected:
        choices = list(dict.fromkeys(expected))
        wanted = f"one of {', '.join(choices)}" if len(choices) > 1 else choices[0]
        reasons.insert(0, f"expected {wanted}" + (f", got {got!r}" if got is not None else ""))
    reasons = list(dict.fromkeys(reasons))
    text = "; ".join(reasons) if reasons else message.splitlines()[0]
    return f"{key}: {text}" if key and not text.startswith(key) else text
