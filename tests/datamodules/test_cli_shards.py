"""`anydoor shards` argument handling and the data benchmark's smoke run."""

from __future__ import annotations

import pytest

from src.cli.main import build_parser, main


def test_synthetic_defaults_match_the_makefile():
    args = build_parser().parse_args(["shards", "synthetic", "--out", "x", "--seed", "1000", "--videos", "16", "--images", "16"])
    assert (args.seed, args.videos, args.images, args.frame_size) == (1000, 16, 16, (384, 216))


def test_missing_inputs_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--image-root"):
        main(["shards", "coco", str(tmp_path / "a.json"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="no such folder"):
        main(["shards", "vos", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--no-progress"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["shards", "synthetic", "--out", "x", "--frame-size", "big"])
    assert "expected WIDTHxHEIGHT" in capsys.readouterr().err


def test_bench_data_runs(synthetic_shards, capsys):
    from benchmarks.bench_data import main as bench

    assert bench(["--shards", str(synthetic_shards), "--samples", "4", "--workers", "0", "--image-size", "32", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "per CPU second" in out and "frames 128x72" in out
