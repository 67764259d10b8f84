"""Each source format packs from a small crafted fixture and reads back as the documented samples."""

from __future__ import annotations

import json

import numpy as np
import webdataset as wds

from datamodules.packing.packer import pack
from datamodules.components.shard_format import decode_frame, decode_mask_crop, full_mask
from datamodules.packing.sources.images import CocoReader, SA1BReader
from datamodules.packing.sources.video import VideoReader
from datamodules.packing.sources.vos import VOSReader
from tests.datamodules.conftest import make_coco, make_sa1b, make_video, make_vos


def read_back(out) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    urls = [str(out / s["url"]) for s in manifest["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False)), manifest


def check_sample(s: dict) -> dict:
    meta = json.loads(s["json"])
    assert len(meta["boxes"]) == len(meta["frames"]) >= 1
    for i, box in enumerate(meta["boxes"]):
        frame = decode_frame(s, i)
        assert frame.shape == (*meta["size"], 3) and frame.dtype == np.uint8
        mask = full_mask(decode_mask_crop(s, i), box, tuple(meta["size"]))
        ys, xs = np.nonzero(mask)
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box  # box = tight mask box, exclusive ends
    return meta


def test_vos_frame_folders(tmp_path):
    root = make_vos(tmp_path / "vos")
    samples, manifest = read_back_pack(VOSReader(str(root), name="davis", frames_per_track=3), tmp_path / "out")
    assert manifest["samples"] == {"davis/video": 4}  # 2 videos x 2 objects
    metas = [check_sample(s) for s in samples]
    assert {m["object"] for m in metas} == {1, 2}
    assert all(m["frames"] == [0, 10, 20] for m in metas)  # frame numbers from the file names, spread over the track


def read_back_pack(reader, out, **kw):
    pack(reader, str(out), items_per_shard=1, workers=1, progress=False, **kw)
    return read_back(out)


def test_video_sav_masklets_decoded_with_decord(tmp_path):
    root = make_video(tmp_path / "sav", frames=8, masks="sav", stride=2)
    samples, manifest = read_back_pack(VideoReader(str(root), name="sav", frame_stride=2, frames_per_track=4), tmp_path / "out")
    assert manifest["samples"] == {"sav/video": 1}
    meta = check_sample(samples[0])
    assert meta["object"] == 7 and meta["frames"] == [0, 2, 4, 6]
    # the object (a red disk moving right) is where its mask says, in the frame decord decoded
    frame = decode_frame(samples[0], 3)
    mask = full_mask(decode_mask_crop(samples[0], 3), meta["boxes"][3], tuple(meta["size"]))
    assert frame[mask][:, 0].mean() > 200 and frame[mask][:, 1].mean() < 90


def test_video_png_masks(tmp_path):
    root = make_video(tmp_path / "pngv", frames=6, masks="png", stride=1)
    samples, manifest = read_back_pack(VideoReader(str(root), masks="png", frames_per_track=8), tmp_path / "out")
    assert manifest["samples"] == {"video/video": 1}
    assert check_sample(samples[0])["frames"] == [0, 1, 2, 3, 4, 5]


def test_video_masklets_in_their_own_folder(tmp_path):
    root = make_video(tmp_path / "videos" / "day1", frames=8, masks="sav", stride=2).parent
    (tmp_path / "ann" / "day1").mkdir(parents=True)
    (root / "day1" / "clip_manual.json").rename(tmp_path / "ann" / "day1" / "clip_manual.json")
    reader = VideoReader(str(root), name="sav", frame_stride=2, masks_dir=str(tmp_path / "ann"))
    assert reader.inputs("day1/clip.mp4") == [root / "day1" / "clip.mp4", tmp_path / "ann" / "day1" / "clip_manual.json"]
    samples, manifest = read_back_pack(reader, tmp_path / "out")
    assert manifest["samples"] == {"sav/video": 1} and check_sample(samples[0])["id"] == "day1/clip"


def test_coco_polygons_and_rle(tmp_path):
    ann, images = make_coco(tmp_path / "coco")
    samples, manifest = read_back_pack(CocoReader(str(ann), str(images)), tmp_path / "out")
    assert manifest["samples"] == {"coco/image": 3}  # polygon + RLE on image 1, uncompressed RLE on image 2
    assert manifest["rejected"] == {"crowd": 1}
    for s in samples:
        assert check_sample(s)["kind"] == "image"


def test_sa1b(tmp_path):
    root = make_sa1b(tmp_path / "sa1b")
    samples, manifest = read_back_pack(SA1BReader(str(root)), tmp_path / "out")
    assert manifest["samples"] == {"sa1b/image": 2}
    assert manifest["rejected"] == {"area_too_small": 2}  # the 3x3 speck in each image
    for s in samples:
        check_sample(s)


def test_synthetic_pack_reads_back(synthetic_shards):
    samples, manifest = read_back(synthetic_shards)
    assert set(manifest["samples"]) == {"synthetic_video/video", "synthetic_image/image"}
    assert manifest["total_samples"] == len(samples) == sum(manifest["samples"].values())
    kinds = {check_sample(s)["kind"] for s in samples}
    assert kinds == {"video", "image"}
    assert len({s["__key__"] for s in samples}) == len(samples)
