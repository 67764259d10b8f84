"""Packing: resumable after a kill, parallel equals serial, URL/pipe: output, manifest consistency."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tarfile

import pytest

from datamodules.packing.filters import MaskRules
from datamodules.packing.packer import pack
from datamodules.packing.sources.images import CocoReader, SA1BReader
from datamodules.packing.sources.video import VideoReader
from datamodules.packing.state import summary
from datamodules.packing.stats import InputError
from src.files import TMP_MARK
from tests.datamodules.conftest import make_coco, make_sa1b, make_video


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
    assert [p.name for p in partial.glob("*.tar")] == ["video-000000.tar"]  # shard 1 was cut mid-way ...
    assert not list(partial.glob(f".*{TMP_MARK}*"))  # ... and its temporary removed on the way out
    (partial / f".video-000001.tar{TMP_MARK}deadbeef").write_bytes(b"half a shard")  # what a SIGKILL leaves
    resumed = pack(reader, str(partial), items_per_shard=2, workers=1, progress=False)
    assert tar_contents(partial) == tar_contents(tmp_path / "full")
    assert not list(partial.glob(f"*{TMP_MARK}*"))
    assert resumed == full and resumed["total_samples"] == 5
    assert (partial / "report.jsonl").read_bytes() == (tmp_path / "full" / "report.jsonl").read_bytes()


def test_parallel_equals_serial_and_rerun_is_a_no_op(tmp_path, video_root):
    reader = VideoReader(str(video_root), frame_stride=2)
    serial = pack(reader, str(tmp_path / "a"), items_per_shard=1, workers=1, progress=False)
    parallel = pack(reader, str(tmp_path / "b"), items_per_shard=1, workers=2, progress=False)
    assert tar_contents(tmp_path / "a") == tar_contents(tmp_path / "b")
    assert serial == parallel
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "b").glob("*.tar")}
    again = pack(reader, str(tmp_path / "b"), items_per_shard=1, workers=2, progress=False)
    assert again == parallel
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "b").glob("*.tar")} == mtimes  # nothing rewritten


@pytest.fixture
def own_videos(tmp_path, video_root):
    root = tmp_path / "vids"
    shutil.copytree(video_root, root)  # copy2 keeps the modification times
    return root


@pytest.mark.parametrize("change, message", [
    ({"items_per_shard": 2}, r"--items-per-shard 1 -> 2"),
    ({"max_side": 32}, r"--max-side None -> 32"),
    ({"reader": {"rules": MaskRules(min_area=0.02)}}, r"--min-area 0.01 -> 0.02"),
    ({"reader": {"frames_per_track": 3}}, r"--frames-per-track 8 -> 3"),
])
def test_changed_options_are_refused_and_named(tmp_path, own_videos, change, message):
    reader = VideoReader(str(own_videos), frame_stride=2)
    pack(reader, str(tmp_path / "a"), items_per_shard=1, progress=False)
    before = tar_contents(tmp_path / "a")
    kw = {"items_per_shard": 1, **{k: v for k, v in change.items() if k != "reader"}}
    other = dataclasses.replace(reader, **change.get("reader", {}))
    with pytest.raises(InputError, match=message + r".*--overwrite"):
        pack(other, str(tmp_path / "a"), progress=False, **kw)
    assert tar_contents(tmp_path / "a") == before  # nothing touched
    pack(other, str(tmp_path / "a"), progress=False, overwrite=True, **kw)
    pack(other, str(tmp_path / "fresh"), progress=False, **kw)
    assert tar_contents(tmp_path / "a") == tar_contents(tmp_path / "fresh")


def test_changed_input_files_are_refused_and_named(tmp_path, own_videos):
    reader = VideoReader(str(own_videos), frame_stride=2)
    pack(reader, str(tmp_path / "a"), items_per_shard=2, progress=False)
    # the same number of files, other content: clip1's masklets now come from clip4
    shutil.copyfile(own_videos / "clip4_manual.json", own_videos / "clip1_manual.json")
    with pytest.raises(InputError, match=r"video clip1 changed \(in video-000000.tar\).*--overwrite"):
        pack(reader, str(tmp_path / "a"), items_per_shard=2, progress=False)
    os.utime(own_videos / "clip2.mp4", ns=(0, 0))  # a touched file counts too (no content hashing)
    with pytest.raises(InputError, match=r"video clip1 changed .*; video clip2 changed \(in video-000001.tar\)"):
        pack(reader, str(tmp_path / "a"), items_per_shard=2, progress=False)
    make_video(own_videos, stem="clip5", frames=6, stride=2)
    with pytest.raises(InputError, match=r"the source has 6 items now, 5 when this pack began"):
        pack(reader, str(tmp_path / "a"), items_per_shard=2, progress=False)
    manifest = pack(reader, str(tmp_path / "a"), items_per_shard=2, progress=False, overwrite=True)
    assert manifest["total_samples"] == 6 and len(manifest["shards"]) == 3


def test_changed_annotations_in_one_json_are_seen(tmp_path):
    ann, images = make_coco(tmp_path / "coco")
    reader = CocoReader(str(ann), str(images))
    pack(reader, str(tmp_path / "out"), progress=False)
    data = json.loads(ann.read_text())
    data["annotations"][2]["iscrowd"] = 1
    ann.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"image 2 changed \(in coco-000000.tar\)"):
        pack(reader, str(tmp_path / "out"), progress=False)


def test_stray_and_missing_shards(tmp_path, video_root, caplog):
    reader = VideoReader(str(video_root), frame_stride=2)
    out = tmp_path / "out"
    pack(reader, str(out), items_per_shard=2, progress=False)
    full = tar_contents(out)
    tarfile.open(out / "other-000003.tar", "w").close()  # not made by this pack
    (out / "video-000001.tar").unlink()  # finished earlier, deleted since
    manifest = pack(reader, str(out), items_per_shard=2, progress=False)
    assert manifest["unknown_files"] == ["other-000003.tar"]
    assert "other-000003.tar" not in json.dumps(manifest["sources"])
    assert "video-000001.tar: finished earlier but missing now" in caplog.text
    assert {k: v for k, v in tar_contents(out).items() if k != "other-000003.tar"} == full
    lines = summary(manifest, out / "report.jsonl")
    assert any("1 .tar files in the output were not made by this pack" in line and "other-000003.tar" in line for line in lines)


@pytest.mark.parametrize("victim", ["video.plan", "video-000001.json"])
def test_unreadable_state_file_is_named_with_the_fix(tmp_path, video_root, victim):
    reader = VideoReader(str(video_root), frame_stride=2)
    out = tmp_path / "out"
    pack(reader, str(out), items_per_shard=2, progress=False)
    path = out / ".parts" / victim
    path.write_text(path.read_text()[:20])  # truncated
    fix = "start over with --overwrite" if victim == "video.plan" else "delete it to pack that shard again, or start over"
    with pytest.raises(InputError, match=re.escape(str(path)) + r": unreadable pack state \(.*\); " + fix):
        pack(reader, str(out), items_per_shard=2, progress=False)
    if victim == "video.plan":
        pack(reader, str(out), items_per_shard=2, progress=False, overwrite=True)  # the fix the message gives
    else:
        path.unlink()  # the fix the message gives: that one shard is packed again
        pack(reader, str(out), items_per_shard=2, progress=False)
    assert tar_contents(out) == tar_contents_of(reader, tmp_path / "fresh")


def tar_contents_of(reader, out):
    pack(reader, str(out), items_per_shard=2, progress=False)
    return tar_contents(out)


def test_shards_without_a_plan_are_refused(tmp_path, video_root):
    reader = VideoReader(str(video_root), frame_stride=2)
    out = tmp_path / "out"
    pack(reader, str(out), items_per_shard=2, progress=False)
    (out / ".parts" / "video.plan").unlink()
    with pytest.raises(InputError, match=r"holds 3 finished shards of 'video' but no video.plan .*start over with --overwrite"):
        pack(reader, str(out), items_per_shard=2, progress=False)


def test_state_of_an_older_version_is_refused(tmp_path, video_root):
    reader = VideoReader(str(video_root), frame_stride=2)
    out = tmp_path / "out"
    (out / ".parts").mkdir(parents=True)
    (out / ".parts" / "video.plan").write_text(json.dumps({"items": 5, "items_per_shard": 2, "max_side": None}))
    with pytest.raises(InputError, match=r"another version of anydoor shards \(anydoor-shards/1; this is anydoor-shards/2\)"):
        pack(reader, str(out), items_per_shard=2, progress=False)


def test_a_second_pack_into_the_same_folder_is_refused(tmp_path, video_root):
    import fcntl

    reader = VideoReader(str(video_root), frame_stride=2)
    out = tmp_path / "out"
    pack(reader, str(out), items_per_shard=2, progress=False)
    with open(out / ".parts" / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(InputError, match="another anydoor shards is writing here"):
            pack(reader, str(out), items_per_shard=2, progress=False)


def test_empty_source_is_an_error_unless_allowed(tmp_path):
    (tmp_path / "vids").mkdir()
    reader = VideoReader(str(tmp_path / "vids"))
    with pytest.raises(InputError, match=r"nothing to pack for 'video': no video files .* under .*--allow-empty"):
        pack(reader, str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()  # not even .parts/
    manifest = pack(reader, str(tmp_path / "out"), progress=False, allow_empty=True)
    assert manifest["total_samples"] == 0 and manifest["shards"] == []


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
    with pytest.raises(InputError, match="state-dir"):
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
