"""Crafted bad input: every rejected video, track, frame, image and annotation is reported with its
identifiers, its file and a documented reason; the pack goes on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.packing.packer import pack
from datamodules.packing.sources.images import CocoReader, SA1BReader
from datamodules.packing.sources.video import VideoReader
from datamodules.packing.sources.vos import VOSReader
from datamodules.packing.stats import REASONS, InputError, PackStats
from tests.datamodules.conftest import disk, make_coco, make_sa1b, make_video, make_vos, palette_png, rle


def run(reader, out, **kw):
    return pack(reader, str(out), items_per_shard=1, workers=1, progress=False, **kw)


def report(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "report.jsonl").read_text().splitlines()]


def first(items: list[dict], **match) -> dict:
    found = [i for i in items if all(i.get(k) == v for k, v in match.items())]
    assert found, f"no report item with {match} in {items}"
    return found[0]


def test_docs_list_every_reason_the_code_can_give():
    text = (Path(__file__).parents[2] / "docs" / "data.md").read_text()
    section = text.split("### Reasons", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.M))
    assert documented == set(REASONS)


def test_unknown_reasons_and_identifiers_are_refused():
    stats = PackStats(source="s")
    with pytest.raises(KeyError):
        stats.reject("some_new_reason")
    with pytest.raises(KeyError):
        stats.reject("crowd", imgae=3)
    stats.reject("crowd", image=3, annotation=None, file="x.json")
    assert stats.report == [{"reason": "crowd", "source": "s", "image": 3, "file": "x.json"}]


def test_vos_bad_frames_and_masks(tmp_path):
    root = make_vos(tmp_path / "vos", videos=1, frames=8)
    frames, masks = root / "JPEGImages" / "vid0", root / "Annotations" / "vid0"
    data = (frames / "00000.jpg").read_bytes()
    (frames / "00000.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG (its header still reads)
    (frames / "00005.jpg").write_bytes(b"not a jpeg at all")
    (frames / "00010.jpg").write_bytes(b"")
    (masks / "00015.png").unlink()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / "00020.png")  # another size
    Image.fromarray(np.ones((48, 64), np.uint16) * 300).save(masks / "00025.png")  # 16-bit
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(masks / "00030.png")  # RGB
    palette_png(masks / "00099.png", np.zeros((48, 64)))  # no frame
    (frames / "._00035.jpg").write_bytes(b"macOS metadata")  # hidden: not data, not reported
    manifest = run(VOSReader(str(root)), tmp_path / "out")
    files = {Path(i["file"]).name: i for i in report(tmp_path / "out") if "frame" in i and "object" not in i}
    assert {name: i["reason"] for name, i in files.items()} == {
        "00000.jpg": "truncated_image", "00005.jpg": "not_an_image", "00010.jpg": "empty_file",
        "00015.jpg": "frame_without_mask", "00020.png": "mask_size_mismatch", "00025.png": "mask_16bit",
        "00030.png": "mask_rgb", "00099.png": "mask_without_frame",
    }
    assert files["00025.png"] == {"reason": "mask_16bit", "source": "vos", "video": "vid0", "frame": "00025",
                                  "file": str(masks / "00025.png"), "detail": "mode I;16; expected an 8-bit palette or grayscale PNG"}
    # frames 00000 and 00035 keep usable masks; 00000 does not decode: both tracks end with one frame
    tracks = [i for i in report(tmp_path / "out") if i["reason"] == "too_few_frames"]
    assert [(t["video"], t["object"]) for t in tracks] == [("vid0", 1), ("vid0", 2)]
    assert tracks[0]["detail"] == "1 usable of 2 frames with the object, 2 needed"
    assert manifest["rejected"]["truncated_image"] == 1  # a bad frame is reported once, not once per object
    assert manifest["total_samples"] == 0
    assert manifest["report"] == {"file": "report.jsonl", "items": sum(manifest["rejected"].values())}


def test_frames_dropped_from_kept_tracks_are_named(tmp_path):
    root = make_vos(tmp_path / "vos", videos=1, frames=4)
    masks = root / "Annotations" / "vid0"
    one = np.zeros((48, 64), np.uint8)
    one[5, 5] = 1  # object 1 is a single pixel in frame 00005
    palette_png(masks / "00005.png", one + 2 * disk(48, 64, 44, 32, 8))
    speck = disk(48, 64, 10, 10, 2)  # object 1 is a speck (0.4 % of the frame) in frame 00010
    palette_png(masks / "00010.png", speck + 2 * disk(48, 64, 44, 32, 8))
    manifest = run(VOSReader(str(root)), tmp_path / "out")
    items = report(tmp_path / "out")
    assert first(items, reason="mask_too_small") == {"reason": "mask_too_small", "source": "vos", "video": "vid0", "object": 1,
                                                     "frame": "00005", "file": str(masks / "00005.png")}
    assert first(items, reason="area_too_small")["frame"] == "00010"
    assert manifest["samples"] == {"vos/video": 2}  # both tracks kept, object 1 with frames 00000 and 00015
    assert "too_few_frames" not in manifest["rejected"]


def test_meta_json_lists_the_videos(tmp_path):
    root = make_vos(tmp_path / "vos", videos=3, frames=3)
    meta = {"videos": {"vid0": {"objects": {"1": {}, "2": {}, "7": {}}},  # object 7 is in no frame
                       "vid1": {"objects": {"1": {}}},  # object 2 is packed only when listed
                       "gone": {"objects": {"1": {}}}}}  # listed, no frame folder; vid2 is not listed
    (root / "meta.json").write_text(json.dumps(meta))
    manifest = run(VOSReader(str(root)), tmp_path / "out")
    items = report(tmp_path / "out")
    assert first(items, reason="missing_video_dir") == {"reason": "missing_video_dir", "source": "vos", "video": "gone",
                                                        "file": str(root / "JPEGImages" / "gone")}
    assert first(items, reason="unlisted_video")["video"] == "vid2"
    assert first(items, reason="object_absent") == {"reason": "object_absent", "source": "vos", "video": "vid0", "object": 7}
    assert "too_few_frames" not in manifest["rejected"]
    assert manifest["samples"] == {"vos/video": 3}  # vid0: 1, 2; vid1: 1


def test_broken_meta_json_stops_with_its_name(tmp_path):
    root = make_vos(tmp_path / "vos", videos=1, frames=2)
    (root / "meta.json").write_text("[1, 2]")
    with pytest.raises(InputError, match=r"meta\.json: expected a YouTube-VOS meta\.json"):
        run(VOSReader(str(root)), tmp_path / "out")
    (root / "meta.json").write_text('{"videos": ')
    with pytest.raises(InputError, match=r"meta\.json: not a readable JSON file"):
        run(VOSReader(str(root)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_video_files(tmp_path):
    root = make_video(tmp_path / "v", stem="good", frames=8)
    make_video(root, stem="trunc", frames=8)
    data = (root / "trunc.mp4").read_bytes()
    (root / "trunc.mp4").write_bytes(data[: len(data) // 3])
    make_video(root, stem="junk", frames=8)
    (root / "junk.mp4").write_bytes(b"\x00" * 2000)
    make_video(root, stem="empty", frames=8)
    (root / "empty.mp4").write_bytes(b"")
    make_video(root, stem="nomask", frames=8)
    (root / "nomask_manual.json").unlink()
    make_video(root, stem="ghost", frames=8)  # a second masklet that is null in every frame
    ann = json.loads((root / "ghost_manual.json").read_text())
    ann["masklet_id"] = [7, 9]
    ann["masklet"] = [per_frame + [None] for per_frame in ann["masklet"]]
    (root / "ghost_manual.json").write_text(json.dumps(ann))
    manifest = run(VideoReader(str(root), frame_stride=2), tmp_path / "out")
    by_video = {i["video"]: i for i in report(tmp_path / "out")}
    assert {v: i["reason"] for v, i in by_video.items()} == {
        "empty": "empty_file", "junk": "corrupt_video", "trunc": "corrupt_video", "nomask": "missing_masks", "ghost": "object_absent"}
    assert by_video["ghost"]["object"] == 9 and by_video["empty"]["file"] == str(root / "empty.mp4")
    assert manifest["samples"] == {"video/video": 2}


def test_masklet_of_another_size_names_the_frame(tmp_path):
    root = make_video(tmp_path / "v", stem="clip", frames=4, stride=1)
    data = json.loads((root / "clip_manual.json").read_text())
    data["masklet"][1][0] = rle(disk(20, 20, 10, 10, 5))
    (root / "clip_manual.json").write_text(json.dumps(data))
    manifest = run(VideoReader(str(root), frame_stride=1), tmp_path / "out")
    [item] = report(tmp_path / "out")
    assert (item["reason"], item["video"], item["object"], item["frame"]) == ("mask_size_mismatch", "clip", 7, 1)
    assert manifest["total_samples"] == 0


def test_coco_annotations(tmp_path):
    ann, images = make_coco(tmp_path / "coco")
    data = json.loads(ann.read_text())
    h, w = 48, 64
    data["images"].append({"id": 3, "file_name": "missing.jpg", "height": h, "width": w})
    data["images"].append({"id": 4, "file_name": "empty.jpg", "height": h, "width": w})
    (images / "empty.jpg").write_bytes(b"")
    data["images"].append({"id": 5, "file_name": "0000.jpg", "height": h, "width": w})
    data["annotations"] += [
        {"id": 20, "image_id": 99, "segmentation": rle(disk(h, w, 30, 24, 10))},  # no image 99
        {"id": 21, "image_id": 5, "segmentation": rle(disk(h, w, 30, 24, 2))},  # tiny
        {"id": 22, "image_id": 5, "segmentation": rle(disk(h, w, 12, 12, 6) | disk(h, w, 50, 36, 6))},  # two parts
        {"id": 23, "image_id": 5, "segmentation": [[1, 2, 3]]},  # a polygon of one and a half points
    ] + [{"id": 30 + k, "image_id": 1, "segmentation": rle(disk(h, w, 32, 24, 7 + k))} for k in range(3)]  # 5 objects on image 1
    ann.write_text(json.dumps(data))
    manifest = run(CocoReader(str(ann), str(images)), tmp_path / "out")
    items = report(tmp_path / "out")
    assert first(items, reason="unknown_image_id") == {"reason": "unknown_image_id", "source": "coco", "image": 99, "annotation": 20,
                                                       "file": str(ann)}
    assert first(items, reason="area_too_small") == {"reason": "area_too_small", "source": "coco", "image": 5, "annotation": 21,
                                                     "file": str(images / "0000.jpg")}
    assert first(items, reason="fragmented")["annotation"] == 22
    assert first(items, reason="bad_annotation")["annotation"] == 23
    assert first(items, reason="crowd")["annotation"] == 13
    assert first(items, reason="missing_file") == {"reason": "missing_file", "source": "coco", "image": 3, "file": str(images / "missing.jpg")}
    assert first(items, reason="empty_file")["image"] == 4
    dropped = [i for i in items if i["reason"] == "over_max_objects"]
    assert [(i["image"], i["annotation"]) for i in dropped] == [(1, 30)]  # the smallest of 5 passing objects
    assert manifest["samples"] == {"coco/image": 5}  # image 1: 4 of 5; image 2: 1; image 5: none passes


@pytest.mark.parametrize("text, message", [
    ('{"images": [], "annotations": [', r"instances\.json: not valid JSON \(Expecting value: line 1"),
    ("[]", r"instances\.json: the top level is a list; a COCO file is an object"),
    ('{"images": {}, "annotations": []}', r'instances\.json: "images" is a dict, expected a list'),
    ('{"images": [{"id": 1, "file_name": "a.jpg", "width": 4}], "annotations": []}', r"images\[0\] \(id 1\) has no 'height'"),
    ('{"images": [], "annotations": [{"id": 17, "segmentation": []}]}', r"annotations\[0\] \(id 17\) has no 'image_id'"),
    ('{"images": [{"id": "a", "file_name": "a.jpg", "width": 4, "height": 4}]}', r"images\[0\] \(id 'a'\): 'id' must be an integer"),
])
def test_coco_json_of_the_wrong_shape_is_one_line(tmp_path, text, message):
    ann, images = make_coco(tmp_path / "coco")
    ann.write_text(text)
    with pytest.raises(InputError, match=message) as err:
        run(CocoReader(str(ann), str(images)), tmp_path / "out")
    assert "\n" not in str(err.value) and str(ann) in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing is created before the input is checked


def test_sa1b_files_and_modes(tmp_path):
    root = make_sa1b(tmp_path / "sa", n=6)
    rgb = np.asarray(Image.open(root / "sa_0.jpg"))
    Image.fromarray(rgb).convert("L").save(root / "sa_0.jpg")
    Image.fromarray(rgb).convert("CMYK").save(root / "sa_1.jpg")
    gray16 = (rgb[..., 1].astype(np.uint16) * 257)
    Image.fromarray(gray16).save(root / "sa_2.png")  # 16-bit: scaled to 8 bits, not clipped to white
    meta = json.loads((root / "sa_2.json").read_text())
    meta["image"]["file_name"] = "sa_2.png"
    (root / "sa_2.json").write_text(json.dumps(meta))
    (root / "sa_3.json").write_text("{ broken json")
    (root / "sa_4.json").write_text("")
    (root / "sa_5.jpg").unlink()
    manifest = run(SA1BReader(str(root)), tmp_path / "out")
    assert manifest["converted"] == {"16bit": 1, "cmyk": 1, "grayscale": 1}
    assert manifest["samples"] == {"sa1b/image": 3}
    files = {(i["image"], i["reason"]) for i in report(tmp_path / "out") if i["reason"] != "area_too_small"}
    assert files == {("sa_3", "bad_annotation"), ("sa_4", "empty_file"), ("sa_5", "missing_file")}
    import webdataset as wds

    from datamodules.components.shard_format import decode_frame

    [sample] = [s for s in wds.WebDataset(str(tmp_path / "out" / "sa1b-000002.tar"), shardshuffle=False)]
    frame = decode_frame(sample, 0)
    assert abs(float(frame.mean()) - float(rgb[..., 1].mean())) < 3  # the 16-bit image kept its values


def test_reader_crash_is_reported_not_fatal(tmp_path):
    class Flaky(SA1BReader):
        def read(self, item, stats):
            if item.endswith("sa_0.json"):
                raise ZeroDivisionError("bug in a reader")
            yield from super().read(item, stats)

    root = make_sa1b(tmp_path / "sa", n=2)
    manifest = run(Flaky(str(root)), tmp_path / "out")
    assert first(report(tmp_path / "out"), reason="reader_error") == {
        "reason": "reader_error", "source": "sa1b", "image": "sa_0", "detail": "ZeroDivisionError: bug in a reader"}
    assert manifest["samples"] == {"sa1b/image": 1}


def test_binary_0_255_masks_are_one_object(tmp_path):
    from datamodules.packing.media import read_label_mask

    m = (disk(48, 64, 30, 24, 10) * 255).astype(np.uint8)
    Image.fromarray(m).save(tmp_path / "bin.png")
    assert set(np.unique(read_label_mask(tmp_path / "bin.png"))) == {0, 1}
    palette_png(tmp_path / "void.png", disk(48, 64, 30, 24, 10) * 255)  # palette 255 stays void
    assert set(np.unique(read_label_mask(tmp_path / "void.png"))) == {0, 255}
