"""Packing: resumable after a kill, parallel equals serial, URL/pipe: output, manifest consistency."""

from __future__ import annotations

import json
import tarfile

import pytest

from datamodules.packing.packer import pack
from datamodules.packing.sources.images import SA1BReader
from datamodules.packing.sources.video import VideoReader
from tests.datamodules.conftest import make_sa1b, make_video


class Killed(BaseException):
    """Stands in for SIGKILL/KeyboardInterrupt: not an Exception, so nothing in the packer catches it."""


def tar_contents(folder) -> dict[str, dict[str, bytes]]:
    out = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tf:
            out[path.name] = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
    return out


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vids")
    for i in range(5):
        make_video(root, stem=f"clip{i}", frames=6, stride=2)
    return root


def test_killed_pack_resumes_to_the_same_shards(tmp_path, video_root):
    reader = VideoReader(str(video_root), frame_stride=2)
    full = pack(reader, str(tmp_path / "full"), items_per_shard=2, workers=1, progress=False)

    class DiesOnFourthItem(VideoReader):
        def read(self, item, stats):
            if item == "clip3.mp4":
                raise Killed()
            yield from super().read(item, stats)

    with pytest.raises(Killed):
        pack(DiesOnFourthItem(str(video_root), frame_stride=2), str(tmp_path / "resumed"), items_per_shard=2, workers=1, progress=False)
    partial = tmp_path / "resumed"
    assert [p.name for p in partial.glob("*.tar")] == ["video-000000.tar"]  # shard 1 was cut mid-way
    assert list(partial.glob(".video-000001.tar.tmp"))  # ... and only its temp file exists
    resumed = pack(reader, str(partial), items_per_shard=2, workers=1, progress=False)
    assert tar_contents(partial) == tar_contents(tmp_path / "full")
    assert not list(partial.glob("*.tmp"))
    assert {k: v for k, v in resumed.items()} == {k: v for k, v in full.items()}
    assert resumed["total_samples"] == 5


def test_parallel_equals_serial_and_rerun_is_a_no_op(tmp_path, video_root):
    reader = VideoReader(str(video_root), frame_stride=2)
    serial = pack(reader, str(tmp_path / "a"), items_per_shard=1, workers=1, progress=False)
    parallel = pack(reader, str(tmp_path / "b"), items_per_shard=1, workers=2, progress=False)
    assert tar_contents(tmp_path / "a") == tar_contents(tmp_path / "b")
    assert serial == parallel
    again = pack(reader, str(tmp_path / "b"), items_per_shard=1, workers=2, progress=False)
    assert again == parallel


def test_changed_shard_plan_is_refused(tmp_path, video_root):
    reader = VideoReader(str(video_root), frame_stride=2)
    pack(reader, str(tmp_path / "a"), items_per_shard=1, progress=False)
    with pytest.raises(ValueError, match="fresh output"):
        pack(reader, str(tmp_path / "a"), items_per_shard=2, progress=False)


def test_two_sources_share_one_manifest(tmp_path, video_root):
    out = tmp_path / "mixed"
    pack(VideoReader(str(video_root), frame_stride=2, name="clips"), str(out), items_per_shard=3, progress=False)
    manifest = pack(SA1BReader(str(make_sa1b(tmp_path / "sa"))), str(out), progress=False)
    assert manifest["sources"]["clips"]["samples"] == 5 and manifest["sources"]["sa1b"]["samples"] == 2
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert sorted(s["url"] for s in manifest["shards"]) == sorted(p.name for p in out.glob("*.tar"))


def test_pipe_output(tmp_path, video_root):
    remote = tmp_path / "remote"
    remote.mkdir()
    reader = VideoReader(str(video_root), frame_stride=2)
    manifest = pack(reader, f"pipe:cat > {remote}/{{name}}", items_per_shard=2, state_dir=str(tmp_path / "state"), progress=False)
    assert sorted(p.name for p in remote.glob("*.tar")) == ["video-000000.tar", "video-000001.tar", "video-000002.tar"]
    assert manifest["total_samples"] == 5
    assert manifest["shards"][0]["url"] == "video-000000.tar"  # relative to the manifest, which goes next to the shards
    with pytest.raises(ValueError, match="state-dir"):
        pack(reader, f"pipe:cat > {remote}/{{name}}", progress=False)


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_to_the_same_shards(tmp_path):
    """A real kill (SIGKILL mid-pack), then the same command again, equals one uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def cmd(out):
        return [sys.executable, "-m", "src.cli.main", "shards", "synthetic", "--out", str(out), "--videos", "16", "--images", "0",
                "--frame-size", "128x72", "--frames", "8", "--items-per-shard", "1", "--workers", "1", "--no-progress"]

    env = dict(os.environ, PYTHONPATH=os.getcwd())
    subprocess.run(cmd(tmp_path / "full"), check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (out / ".parts" / "synthetic_video-000001.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / ".parts").glob("synthetic_video-*.json")))
    if proc.returncode != -signal.SIGKILL or done >= 16:
        pytest.skip("the pack finished before it could be killed")
    assert not (out / "manifest.json").exists()
    subprocess.run(cmd(out), check=True, env=env, capture_output=True)
    assert tar_contents(out) == tar_contents(tmp_path / "full")
    assert json.loads((out / "manifest.json").read_text()) == json.loads((tmp_path / "full" / "manifest.json").read_text())
