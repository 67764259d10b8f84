"""`anydoor shards` (placeholder until its issue lands: it refuses to run)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SystemExit("anydoor shards: not implemented yet")
