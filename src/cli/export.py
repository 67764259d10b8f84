"""`anydoor export`: a training checkpoint of this project + its run's config -> a model folder
(an ordinary fp32 one: a LoRA run's adapters merged, frozen parts trained in bf16 rebuilt in fp32)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a Lightning .ckpt written by `lightning fit` (trainable weights only; "
                        "LoRA adapters are merged into the exported weights)")
    parser.add_argument("--out", required=True, help="output model folder (docs/design.md)")
    parser.add_argument("--config", default=None,
                        help="the training config (default: the config.yaml Lightning saved in the checkpoint's run folder)")
    parser.add_argument("--no-ema", dest="use_ema", action="store_false", help="the raw weights, not the EMA")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    ckpt, out = Path(args.checkpoint), Path(args.out)
    config = Path(args.config) if args.config else ckpt.parent.parent / "config.yaml"  # <run>/checkpoints/x.ckpt
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        print(f"anydoor export: {out} is not empty (pass --overwrite to replace it)", file=sys.stderr)
        return 1
    try:
        from callbacks.export import write_model_folder
        from models.anydoor_module import AnyDoorModule
        from src.conditioning import Preprocessing

        module = AnyDoorModule.from_config_file(config).eval()
        step, has_ema = module.load_training_checkpoint(ckpt)
        write_model_folder(module, out, Preprocessing.centre_of(), use_ema=args.use_ema and has_ema)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"anydoor export: {err} (a checkpoint of `lightning fit` with its run's config; "
              "`anydoor convert` reads the authors' checkpoint)", file=sys.stderr)
        return 1
    ema = ", EMA weights" if args.use_ema and has_ema else ""
    print(f"exported {ckpt} (step {step}{ema}) -> {out}")
    return 0
