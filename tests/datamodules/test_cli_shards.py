"""`anydoor shards` as a user drives it: arguments, one-line errors, the console report, Ctrl-C and
kill -9 in the middle of a pack (real subprocesses and signals), and the data benchmark's smoke run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datamodules.packing.packer import pack
from datamodules.packing.sources.video import VideoReader
from src.cli.main import build_parser, main
from tests.datamodules.conftest import make_coco, make_messy_vos, make_video
from tests.datamodules.test_packer import tar_contents

REPO = Path(__file__).parents[2]


def shards(*args: str, **kw) -> subprocess.CompletedProcess:
    """The real command in a subprocess (so exit status, stderr and tracebacks are what a user sees)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "src.cli.main", "shards", *args, "--no-progress"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300, **kw)


def test_synthetic_defaults_match_the_makefile():
    args = build_parser().parse_args(["shards", "synthetic", "--out", "x", "--seed", "1000", "--videos", "16", "--images", "16"])
    assert (args.seed, args.videos, args.images, args.frame_size) == (1000, 16, 16, (384, 216))


def test_missing_inputs_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--image-root"):
        main(["shards", "coco", str(tmp_path / "a.json"), "--out", str(tmp_path / "o")])
    ann, _ = make_coco(tmp_path / "coco")
    with pytest.raises(SystemExit, match=r"nowhere: no such folder \(--image-root"):
        main(["shards", "coco", str(ann), "--image-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="no such folder"):
        main(["shards", "vos", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--no-progress"])
    with pytest.raises(SystemExit, match=r"--min-area <= --max-area"):
        main(["shards", "vos", str(tmp_path), "--out", str(tmp_path / "o"), "--min-area", "0.7"])
    assert not (tmp_path / "o").exists()
    for bad in (["--frame-size", "big"], ["--workers", "0"], ["--videos", "-1"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["shards", "synthetic", "--out", "x", *bad])
    err = capsys.readouterr().err
    assert "expected WIDTHxHEIGHT" in err and "expected 1 or more, got 0" in err and "expected 0 or more, got -1" in err


def test_bad_coco_json_is_one_line_without_traceback(tmp_path):
    ann, images = make_coco(tmp_path / "coco")
    ann.write_text('{"images": [{"id": 1, "file_name": "0000.jpg", "width": 64}], "annotations": []}')
    out = tmp_path / "out"
    result = shards("coco", str(ann), "--image-root", str(images), "--out", str(out))
    assert result.returncode == 1
    assert result.stderr == f"anydoor shards: {ann}: images[0] (id 1) has no 'height'\n"
    assert not out.exists()


def test_empty_results_are_errors_unless_allowed(tmp_path, capsys):
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(SystemExit, match=r"nothing to pack for 'vos': no video folders in .*JPEGImages"):
        main(["shards", "vos", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"])
    assert not (tmp_path / "o").exists()
    assert main(["shards", "vos", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress", "--allow-empty"]) == 0
    # every item rejected: the manifest and the report are written (they say why), and the exit status says it
    root = make_video(tmp_path / "clips", frames=4, stride=2)
    with pytest.raises(SystemExit, match=r"video: 0 samples packed, every item was rejected \(see .*report.jsonl\)"):
        main(["shards", "video", str(root), "--frame-stride", "2", "--min-frames", "3", "--out", str(tmp_path / "o2"), "--no-progress"])
    assert "too_few_frames 1" in capsys.readouterr().out
    assert main(["shards", "video", str(root), "--frame-stride", "2", "--min-frames", "3", "--out", str(tmp_path / "o2"),
                 "--no-progress", "--allow-empty"]) == 0


def test_console_report_names_the_first_items_per_reason(tmp_path, capsys):
    root = make_messy_vos(tmp_path / "vos")
    assert main(["shards", "vos", str(root), "--out", str(tmp_path / "out"), "--no-progress", "--items-per-shard", "2"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert f"  rejected: 10 items, every one listed in {tmp_path / 'out' / 'report.jsonl'}" in lines
    i = lines.index("    missing_video_dir 1: listed in meta.json but has no frame folder")
    assert lines[i + 1] == f"      source=vos video=lost file={root / 'JPEGImages' / 'lost'}"
    for reason in ("truncated_image", "empty_file", "frame_without_mask", "mask_too_small", "object_absent", "mask_16bit",
                   "area_too_small", "unlisted_video", "missing_masks"):
        assert f"    {reason} 1: " in out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["report"]["items"] == 10 == len((tmp_path / "out" / "report.jsonl").read_text().splitlines())


def test_video_masks_in_their_own_folder(tmp_path):
    make_video(tmp_path / "data" / "part1", stem="clip", frames=6, masks="png", stride=1)
    (tmp_path / "masks" / "part1").mkdir(parents=True)
    (tmp_path / "data" / "part1" / "clip").rename(tmp_path / "masks" / "part1" / "clip")
    args = ["shards", "video", str(tmp_path / "data"), "--masks", "png", "--frame-stride", "1", "--no-progress"]
    with pytest.raises(SystemExit, match="0 samples packed"):  # without the option: the masks are not found
        main([*args, "--out", str(tmp_path / "without")])
    assert main([*args, "--masks-dir", str(tmp_path / "masks"), "--out", str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["samples"] == {"video/video": 1} and manifest["rejected"] == {}
    with pytest.raises(SystemExit, match=r"elsewhere: no such folder \(--masks-dir\)"):
        main([*args, "--masks-dir", str(tmp_path / "elsewhere"), "--out", str(tmp_path / "o3")])


N_CLIPS = 96  # enough work after the first shard that Ctrl-C always lands mid-pack


@pytest.fixture(scope="module")
def many_clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("many")
    for i in range(N_CLIPS):
        make_video(root, stem=f"clip{i:02d}", frames=8, h=72, w=96, stride=2)
    return root


@pytest.fixture(scope="module")
def many_clips_packed(many_clips, tmp_path_factory) -> tuple[Path, dict]:
    """The uninterrupted run the interrupted ones must equal."""
    out = tmp_path_factory.mktemp("full")
    return out, pack(VideoReader(str(many_clips), frame_stride=2), str(out), items_per_shard=1, progress=False)


def _children(pid: int) -> set[int]:
    kids = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        kids |= {int(k) for k in (task / "children").read_text().split()}
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; it only waits to be reaped


def _start_and_wait_for_first_shard(root: Path, out: Path, workers: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "src.cli.main", "shards", "video", str(root), "--frame-stride", "2", "--items-per-shard", "1",
           "--workers", str(workers), "--out", str(out), "--no-progress"]
    # its own process group, like a terminal's foreground job, started with Ctrl-C's default action as a
    # shell gives it (a handler ignored in this test process would otherwise be inherited across exec)
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not list((out / ".parts").glob("video-*.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the pack ended before it could be interrupted: {proc.communicate()}"
    return proc


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("workers", [1, 3])
def test_ctrl_c_prints_one_line_and_resumes_to_the_same_shards(tmp_path, many_clips, many_clips_packed, workers):
    full, reference = many_clips_packed
    out = tmp_path / "out"
    proc = _start_and_wait_for_first_shard(many_clips, out, workers)
    kids = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches every process of the foreground group
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    [line] = stderr.splitlines()
    assert line.startswith("anydoor shards: interrupted: ") and line.endswith("run the same command again to resume"), line
    done = int(line.split("interrupted: ")[1].split(" of ")[0])
    assert 1 <= done < N_CLIPS and done == len(list((out / ".parts").glob("video-*.json")))
    assert not any(_alive(k) for k in kids)
    again = shards("video", str(many_clips), "--frame-stride", "2", "--items-per-shard", "1", "--workers", str(workers), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert f"{done} of {N_CLIPS} shards already done, resuming" in again.stderr
    assert tar_contents(out) == tar_contents(full)  # byte for byte
    assert (out / "manifest.json").read_bytes() == (full / "manifest.json").read_bytes()
    assert json.loads((out / "manifest.json").read_text()) == reference
    assert (out / "report.jsonl").read_bytes() == (full / "report.jsonl").read_bytes()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")
def test_workers_die_with_their_parent(tmp_path, many_clips):
    out = tmp_path / "out"
    proc = _start_and_wait_for_first_shard(many_clips, out, workers=3)
    kids = _children(proc.pid)
    assert len(kids) == 3
    proc.kill()  # only the parent, as `kill -9 PID` does
    proc.communicate()
    deadline = time.time() + 10
    while any(_alive(k) for k in kids) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(_alive(k) for k in kids)
    records = sorted(p.name for p in (out / ".parts").glob("*"))
    time.sleep(0.5)
    assert sorted(p.name for p in (out / ".parts").glob("*")) == records  # nobody writes any more


def test_bench_data_runs(synthetic_shards, capsys):
    from benchmarks.bench_data import main as bench

    assert bench(["--shards", str(synthetic_shards), "--samples", "4", "--workers", "0", "--image-size", "32", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "per CPU second" in out and "frames 128x72" in out
