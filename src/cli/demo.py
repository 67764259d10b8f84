"""`anydoor demo`: the web demo (a Gradio page) for a model folder, on this machine.

    anydoor demo                                    # the newest `make train` export, on 127.0.0.1:7860
    anydoor demo --model pretrained/anydoor --device cuda --dtype float16

It binds 127.0.0.1 unless ``--host`` says otherwise (a non-local address also needs
``--allow-remote``: the page has no login), makes no public link unless ``--share``, runs one
generation at a time, and deletes uploaded files once read (docs/demo.md).
"""

from __future__ import annotations

import argparse

from demo.server import DEFAULT_HOST, DEFAULT_PORT, KEEP_MINUTES
from src.image_io import DEFAULT_MAX_PIXELS

TRAIN_EXPORTS = "outputs/tiny/version_*/export/pretrained"  # where `make train` leaves its model folder
HOW_TO_GET_A_MODEL = (
    "no model folder. Get one:\n"
    "  make train         # trains the tiny default on this CPU (about 25 min), exports " + TRAIN_EXPORTS + "\n"
    "  anydoor convert epoch=1-step=8687.ckpt --out pretrained/anydoor   # the authors' released checkpoint\n"
    "then: make demo   (or: anydoor demo --model pretrained/anydoor)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help=f"model folder (default: the newest `make train` export, {TRAIN_EXPORTS})")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a --host other than 127.0.0.1/localhost/::1 (the page has no login)")
    parser.add_argument("--share", action="store_true",
                        help="also make a public gradio.live link (needs internet; anyone with it can use the model)")
    parser.add_argument("--device", default=None, help="cpu / cuda / cuda:1 (default: cuda when available)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="default float16 on a GPU, float32 on a CPU")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse uploaded images with more pixels (default %(default)s); 0 = no limit")
    parser.add_argument("--keep-minutes", type=float, default=KEEP_MINUTES,
                        help="delete the pictures the page shows (results included) this long after they "
                             "were made (default %(default)s); uploads are deleted as soon as they are read")


def newest_export(pattern: str = TRAIN_EXPORTS) -> str:
    from evaluation.methods import latest

    return str(latest(pattern))


def run(args: argparse.Namespace) -> int:
    from demo.server import check_host

    try:
        check_host(args.host, args.allow_remote)
    except ValueError as err:
        raise SystemExit(f"anydoor demo: {err}") from None
    if args.max_pixels < 0 or args.keep_minutes <= 0:
        raise SystemExit("anydoor demo: --max-pixels must be >= 0 and --keep-minutes > 0")
    try:
        model = args.model or newest_export()
    except FileNotFoundError:
        raise SystemExit(f"anydoor demo: {HOW_TO_GET_A_MODEL}") from None

    from demo.server import serve

    try:
        serve(model, device=args.device, dtype=args.dtype, host=args.host, port=args.port,
              allow_remote=args.allow_remote, share=args.share, max_pixels=args.max_pixels or None,
              keep_minutes=args.keep_minutes)
    except FileNotFoundError as err:
        raise SystemExit(f"anydoor demo: {err}\n{HOW_TO_GET_A_MODEL}") from None
    except (ValueError, OSError) as err:
        raise SystemExit(f"anydoor demo: {err}") from None
    return 0
