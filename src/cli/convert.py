"""`anydoor convert`: the authors' released checkpoint (or a DINOv2 release file) -> our pretrained layout."""

from __future__ import annotations

import argparse
import sys

DTYPES = ("float32", "float16", "bfloat16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="the authors' AnyDoor .ckpt (Lightning, with state_dict), or a "
                                           "DINOv2 release .pth (e.g. dinov2_vitg14_pretrain.pth)")
    parser.add_argument("--out", required=True, help="output folder (pretrained layout, see docs/design.md)")
    parser.add_argument("--config", default=None,
                        help="the authors' model YAML (configs/anydoor.yaml format) for a non-default "
                             "architecture; default: the released one")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written weights")
    parser.add_argument("--vit-heads", type=int, default=None,
                        help="DINOv2 attention heads (not visible in the weights); default width // 64")
    parser.add_argument("--reference-size", type=int, default=224, help="ID-encoder input side (pixels)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")


def _is_dinov2_release(keys) -> bool:
    return "cls_token" in keys and "pos_embed" in keys and not any(k.startswith("model.") for k in keys)


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    import torch

    from models.components import conversion as conv

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise SystemExit(f"anydoor convert: {out} is not empty (pass --overwrite to write into it)")
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    start = time.perf_counter()
    try:
        state = conv.load_state_dict(args.checkpoint)
        if _is_dinov2_release(state.keys()):
            from safetensors.torch import save_file

            vit, dropped = conv.convert_dinov2(state, args.vit_heads)
            out.mkdir(parents=True, exist_ok=True)
            tensors = {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in vit.state_dict.items()}
            save_file(tensors, str(out / "model.safetensors"))
            (out / "config.json").write_text(json.dumps(vit.config, indent=2) + "\n")
            print(f"DINOv2 -> timm ViT: {len(tensors)} tensors to {out / 'model.safetensors'} "
                  f"(dropped {dropped}); use it as IDEncoder(weights=..., vit_kwargs=config['vit_kwargs'])")
            return 0
        ldm_config = conv.load_ldm_config(args.config)
        components = conv.convert_anydoor_checkpoint(state, ldm_config, args.vit_heads, args.reference_size)
        conv.save_converted(components, out, dtype)
    except (conv.ConversionError, FileNotFoundError) as err:
        print(f"anydoor convert: {err}", file=sys.stderr)
        return 1
    from models.pipeline import write_model_index

    write_model_index(out, first_stage="AutoencoderKL")
    counts = ", ".join(f"{k} {len(v.state_dict)}" for k, v in components.items() if v.state_dict)
    print(f"converted {len(state)} tensors in {time.perf_counter() - start:.1f} s -> {out} ({counts}; "
          f"dropped {', '.join(conv.dropped_keys(state))})")
    return 0
