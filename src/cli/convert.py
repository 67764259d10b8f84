"""`anydoor convert`: the authors' released checkpoint (or a DINOv2 release file, or a model folder of
an earlier layout) -> a model folder of this project's layout."""

from __future__ import annotations

import argparse
import sys

DTYPES = ("float32", "float16", "bfloat16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="the authors' AnyDoor .ckpt (Lightning, with state_dict), a DINOv2 "
                                           "release .pth (e.g. dinov2_vitg14_pretrain.pth), or a model folder "
                                           "written by an earlier version (migrated)")
    parser.add_argument("--out", required=True, help="output folder (pretrained layout, see docs/design.md)")
    parser.add_argument("--config", default=None,
                        help="the authors' model YAML (configs/anydoor.yaml format) for a non-default "
                             "architecture; default: the released one")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written weights")
    parser.add_argument("--vit-heads", type=int, default=None,
                        help="DINOv2 attention heads (not visible in the weights); default width // 64")
    parser.add_argument("--reference-size", type=int, default=224, help="ID-encoder input side (pixels)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def _is_dinov2_release(keys) -> bool:
    return "cls_token" in keys and "pos_embed" in keys and not any(k.startswith("model.") for k in keys)


def _convert_file(args: argparse.Namespace, out) -> str:
    import json
    import time

    import torch

    from models.components import conversion as conv
    from models.components.ldm_configs import load_ldm_config
    from models.components.weights import load_state_dict_file
    from models.pipeline import AUTHORS_SAMPLING
    from src.conditioning import AUTHORS_PREPROCESSING
    from src.files import atomic_dir

    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    start = time.perf_counter()
    state = load_state_dict_file(args.checkpoint)
    if _is_dinov2_release(state.keys()):
        from safetensors.torch import save_file

        vit, dropped = conv.convert_dinov2(state, args.vit_heads)
        tensors = {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in vit.state_dict.items()}
        with atomic_dir(out) as tmp:
            save_file(tensors, str(tmp / "model.safetensors"))
            (tmp / "config.json").write_text(json.dumps(vit.config, indent=2) + "\n")
        return (f"DINOv2 -> timm ViT: {len(tensors)} tensors to {out / 'model.safetensors'} (dropped {dropped}); "
                "use it as IDEncoder(weights=..., vit_kwargs=config['vit_kwargs'])")
    components = conv.convert_anydoor_checkpoint(state, load_ldm_config(args.config), args.vit_heads,
                                                 args.reference_size)
    with atomic_dir(out) as tmp:
        conv.save_converted(components, tmp, dtype, sampling=AUTHORS_SAMPLING._asdict(),
                            preprocessing=AUTHORS_PREPROCESSING._asdict())
    counts = ", ".join(f"{k} {len(v.state_dict)}" for k, v in components.items() if v.state_dict)
    return (f"converted {len(state)} tensors in {time.perf_counter() - start:.1f} s -> {out} ({counts}; "
            f"dropped {', '.join(conv.dropped_keys(state))}); recorded the authors' sampler ({AUTHORS_SAMPLING}) "
            f"and preprocessing ({AUTHORS_PREPROCESSING})")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    out, source = Path(args.out), Path(args.checkpoint)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        print(f"anydoor convert: {out} is not empty (pass --overwrite to replace it)", file=sys.stderr)
        return 1
    try:
        if source.is_dir():
            from models.legacy import legacy_reasons, migrate_folder

            if not legacy_reasons(source):
                raise ValueError(f"{source} is a model folder of the current layout already: nothing to convert")
            print(f"migrated {source} -> {out}: {migrate_folder(source, out)}")
        else:
            print(_convert_file(args, out))
    except (ValueError, FileNotFoundError) as err:  # ConversionError is a ValueError
        print(f"anydoor convert: {err}", file=sys.stderr)
        return 1
    return 0
