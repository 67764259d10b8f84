"""Checks that turn bad input into one clear line: a model folder, parts that must fit together, a job.

A wrong folder or mismatched parts would otherwise surface as a diffusers traceback or a matrix-shape
error deep inside the first denoising step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import nn

from models.components.first_stage import latent_channels, latent_factor
from src.collage import COLLAGE_CHANNELS

PARTS = ("id_encoder", "controlnet", "unet", "vae", "scheduler")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_folder(folder: Path) -> None:
    """A loadable model folder: every part, safetensors weights only, not an earlier layout."""
    from models.legacy import legacy_reasons

    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    missing = [p for p in PARTS if not (folder / p / ("scheduler_config.json" if p == "scheduler" else "config.json")).is_file()]
    missing += [] if (folder / "model_index.json").is_file() else ["model_index.json"]
    if missing:
        raise FileNotFoundError(f"model folder {folder} is missing {', '.join(missing)} (expected model_index.json, "
                                "id_encoder/, controlnet/, unet/, vae/, scheduler/; see docs/design.md; "
                                "`anydoor convert` and `anydoor export` write this layout)")
    reasons = legacy_reasons(folder)
    if reasons:
        raise ValueError(f"model folder {folder} has the layout of an earlier version ({'; '.join(reasons)}): "
                         f"migrate it once with `anydoor convert {folder} --out NEW_FOLDER`")
    index = json.loads((folder / "model_index.json").read_text())
    for part in ("id_encoder", "controlnet", "unet", "vae"):
        if index.get(part, [None, None])[1] == "SpaceToDepthFirstStage":
            continue  # parameter-free: config only
        files = sorted((folder / part).iterdir())
        if any(f.name.endswith((".safetensors", ".safetensors.index.json")) for f in files):
            continue
        pickles = [f.name for f in files if f.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ValueError(f"model folder {folder}: {part}/{pickles[0]} is a pickle; only safetensors weights "
                             "are loaded (reading a pickle can run code): re-save that part with safetensors")
        raise FileNotFoundError(f"model folder {folder}: cannot load {part}/ (no .safetensors weights)")


def check_parts(id_encoder: nn.Module, controlnet: nn.Module, unet: nn.Module, vae: nn.Module) -> None:
    """Every size two parts must agree on, with both values in the message."""
    u, c = unet.config, controlnet.config
    embedding = c.conditioning_embedding_out_channels
    pairs = [
        ("id_encoder out_dim", id_encoder.config.out_dim, "unet cross_attention_dim", u.cross_attention_dim),
        ("controlnet cross_attention_dim", c.cross_attention_dim, "unet cross_attention_dim", u.cross_attention_dim),
        ("controlnet block_out_channels", tuple(c.block_out_channels), "unet block_out_channels", tuple(u.block_out_channels)),
        ("controlnet down_block_types", tuple(c.down_block_types), "unet down_block_types", tuple(u.down_block_types)),
        ("controlnet layers_per_block", c.layers_per_block, "unet layers_per_block", u.layers_per_block),
        ("controlnet in_channels", c.in_channels, "unet in_channels", u.in_channels),
        ("controlnet conditioning_channels", c.conditioning_channels, "collage channels", COLLAGE_CHANNELS),
        ("vae latent channels", latent_channels(vae), "unet in_channels", u.in_channels),
        ("vae latent channels", latent_channels(vae), "unet out_channels", u.out_channels),
        ("controlnet collage-embedding downsampling", 2 ** (len(embedding) - 1), "vae downsampling", latent_factor(vae)),
    ]
    bad = [f"{a} is {x} but {b} is {y}" for a, x, b, y in pairs if x != y]
    if bad:
        raise ValueError("the model's parts do not fit together: " + "; ".join(bad))
    weight = controlnet.conv_in.weight
    if not weight.is_meta and weight.abs().max() > 0:
        raise ValueError("controlnet conv_in must be zero: AnyDoor's ControlNet never sees the noisy latent")


def _check_uint8_image(image: Any, what: str, channels: tuple[int, ...] = (3,)) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] not in channels or image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 H x W x {'/'.join(map(str, channels))}, "
                         f"got {image.dtype} {image.shape}")
    return image


def _check_mask(mask: Any, hw: tuple[int, int], what: str) -> np.ndarray:
    """An ``H x W`` (or ``H x W x C``, first channel) mask of the image's size with an object: uint8 {0, 1}."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != tuple(hw):
        raise ValueError(f"{what} is {mask.shape[1]} x {mask.shape[0]}, its image {hw[1]} x {hw[0]}")
    if not mask.any():
        raise ValueError(f"{what} is empty (no object pixel)")
    return (mask > 0).astype(np.uint8)


def _check_box(box: Sequence[int], hw: tuple[int, int], what: str) -> tuple[int, int, int, int]:
    if len(box) != 4:
        raise ValueError(f"{what}: a box is (x1, y1, x2, y2), got {tuple(box)}")
    x1, y1, x2, y2 = (int(v) for v in box)
    h, w = hw
    if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
        raise ValueError(f"{what}: box {(x1, y1, x2, y2)} is degenerate or outside the {w} x {h} image "
                         "(need 0 <= x1 < x2 <= width, 0 <= y1 < y2 <= height, exclusive ends)")
    return x1, y1, x2, y2


def check_job(job: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    """(reference RGB, reference mask, target, box or target mask) of a pipeline ``Job``."""
    ref = _check_uint8_image(job.reference, "reference image", (3, 4))
    ref_mask = job.reference_mask
    if ref_mask is None:
        if ref.shape[2] != 4:
            raise ValueError("reference has no mask: give a reference mask or an RGBA reference")
        ref_mask = ref[..., 3] > 127
    ref = np.ascontiguousarray(ref[..., :3])
    ref_mask = _check_mask(ref_mask, ref.shape[:2], "reference mask")
    target = _check_uint8_image(job.target, "target image")
    if (job.box is None) == (job.target_mask is None):
        raise ValueError("give exactly one of a target box and a target mask")
    if job.box is not None:
        return ref, ref_mask, target, _check_box(job.box, target.shape[:2], "target")
    return ref, ref_mask, target, _check_mask(job.target_mask, target.shape[:2], "target mask")


def check_weights_complete(folder: Path, parts: dict[str, nn.Module]) -> None:
    """Every weight of every part came from its file. diffusers only warns about missing keys and
    leaves them randomly initialised; a truncated or mismatched file must fail instead."""
    from safetensors import safe_open

    for name, module in parts.items():
        expected = set(module.state_dict())
        if not expected:
            continue
        index = sorted((folder / name).glob("*.safetensors.index.json"))
        if index:
            stored = set(json.loads(index[0].read_text())["weight_map"])
        else:
            stored = set()
            for file in (folder / name).glob("*.safetensors"):
                with safe_open(str(file), framework="pt") as f:
                    stored |= set(f.keys())
        missing = sorted(expected - stored)
        if missing:
            raise ValueError(f"model folder {folder}: {name}/ has no weights for {missing[:5]} "
                             f"({len(missing)} missing): the file is truncated or belongs to another model")
