"""anydoor: teleport an object into any scene (pack data, generate, convert, export, evaluate, demo).

The `anydoor` console script has one sub-command per module in ``SUBCOMMANDS``. Each sub-command module defines ``add_arguments(parser)`` and ``run(args) -> int`` and imports
nothing heavy at module level, so ``anydoor --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "shards": ("src.cli.shards", "pack video/image sources into WebDataset shards"),
    "generate": ("src.cli.generate", "teleport a reference object into a target image"),
    "convert": ("src.cli.convert", "convert the authors' released checkpoint (or an older model folder) to our layout"),
    "export": ("src.cli.export", "turn a training checkpoint into a model folder"),
    "eval": ("src.cli.evaluate", "score generations (DINO-I, CLIP-I, PSNR/SSIM) against baselines"),
    "demo": ("src.cli.demo", "serve the web demo (a Gradio page) on this machine"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anydoor", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
