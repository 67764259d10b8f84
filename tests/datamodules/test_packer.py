"""Packing: resumable after a kill, parallel equals serial, URL/pipe: output, manifest consistency."""

from __future__ import annotations

import json
import tarfile

import pytest

from datamodules.components.packer import pack
from datamodules.components.sources.images import SA1BReader
from datamodules.components.sources.video import VideoReader
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
