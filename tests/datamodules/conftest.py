"""Tiny crafted data sets, built once per session (a few KB each)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils


def disk(h: int, w: int, cx: int, cy: int, r: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cv2.circle(m, (cx, cy), r, 1, -1)
    return m


def textured(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


def palette_png(path: Path, label: np.ndarray) -> None:
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [128] * (256 * 3 - 12))
    im.save(path)


def rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(r["size"]), "counts": r["counts"].decode()}


def make_vos(root: Path, videos: int = 2, frames: int = 5, h: int = 48, w: int = 64) -> Path:
    """VOS layout: two objects per video (ids 1 and 2) moving right."""
    for v in range(videos):
        (root / "JPEGImages" / f"vid{v}").mkdir(parents=True)
        (root / "Annotations" / f"vid{v}").mkdir(parents=True)
        for f in range(frames):
            img = textured(h, w, 10 * v + f)
            label = disk(h, w, 14 + 2 * f, 16, 9) + 2 * disk(h, w, 44, 32 - f, 8)
            Image.fromarray(img).save(root / "JPEGImages" / f"vid{v}" / f"{5 * f:05d}.jpg")
            palette_png(root / "Annotations" / f"vid{v}" / f"{5 * f:05d}.png", label)
    return root


def make_coco(root: Path, h: int = 48, w: int = 64) -> tuple[Path, Path]:
    """Two images; a polygon, a compressed RLE, an uncompressed RLE and a crowd annotation."""
    (root / "images").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(textured(h, w, 100 + i)).save(root / "images" / f"{i:04d}.jpg")
    m = disk(h, w, 40, 24, 10)
    # uncompressed RLE: counts as a list of run lengths (column-major)
    flat = disk(h, w, 20, 20, 8).flatten(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    data = {
        "images": [{"id": 1, "file_name": "0000.jpg", "height": h, "width": w},
                   {"id": 2, "coco_url": "http://x/0001.jpg", "height": h, "width": w}],  # LVIS style
        "annotations": [
            {"id": 10, "image_id": 1, "iscrowd": 0, "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]},
            {"id": 11, "image_id": 1, "iscrowd": 0, "segmentation": rle(m)},
            {"id": 12, "image_id": 2, "iscrowd": 0, "segmentation": {"size": [h, w], "counts": runs}},
            {"id": 13, "image_id": 2, "iscrowd": 1, "segmentation": rle(m)},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    ann = root / "instances.json"
    ann.write_text(json.dumps(data))
    return ann, root / "images"


def make_sa1b(root: Path, n: int = 2, h: int = 48, w: int = 64) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(textured(h, w, 200 + i)).save(root / f"sa_{i}.jpg")
        anns = [{"id": 0, "segmentation": rle(disk(h, w, 30, 24, 12))}, {"id": 1, "segmentation": rle(disk(h, w, 5, 5, 1))}]
        info = {"image_id": i, "file_name": f"sa_{i}.jpg", "height": h, "width": w}
        (root / f"sa_{i}.json").write_text(json.dumps({"image": info, "annotations": anns}))
    return root


def make_video(root: Path, stem: str = "clip", frames: int = 8, h: int = 48, w: int = 64, masks: str = "sav", stride: int = 2) -> Path:
    """An mp4 (OpenCV mp4v) with one moving disk, its masks as SA-V JSON or a PNG folder."""
    root.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(root / f"{stem}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 8, (w, h))
    labels = []
    for f in range(frames):
        img = textured(h, w, 300 + f)
        m = disk(h, w, 16 + 3 * f, 24, 10)
        img[m > 0] = (255, 40, 40)
        writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        labels.append(m)
    writer.release()
    if masks == "sav":
        data = {"masklet_id": [7], "masklet": [[rle(labels[f])] for f in range(0, frames, stride)]}
        (root / f"{stem}_manual.json").write_text(json.dumps(data))
    else:
        (root / stem).mkdir()
        for f in range(0, frames, stride):
            palette_png(root / stem / f"{f:05d}.png", labels[f] * 3)
    return root


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> Path:
    """A tiny synthetic set packed by the real CLI (4 clips + 6 stills at 128x72)."""
    from src.cli.main import main

    out = tmp_path_factory.mktemp("syn") / "train"
    rc = main(["shards", "synthetic", "--out", str(out), "--seed", "0", "--videos", "4", "--images", "6",
               "--frame-size", "128x72", "--frames", "8", "--workers", "1", "--no-progress", "--items-per-shard", "2"])
    assert rc == 0
    return out


def make_messy_vos(root: Path) -> Path:
    """A VOS folder with one of most things that go wrong in real ones (the docs' report sample)."""
    make_vos(root, videos=4, frames=5)
    frames, masks = root / "JPEGImages", root / "Annotations"
    data = (frames / "vid0" / "00000.jpg").read_bytes()
    (frames / "vid0" / "00000.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (frames / "vid0" / "00005.jpg").write_bytes(b"")  # empty
    (masks / "vid1" / "00010.png").unlink()  # a frame without its mask
    one = np.zeros((48, 64), np.uint8)
    one[5, 5] = 1
    palette_png(masks / "vid1" / "00015.png", one + 2 * disk(48, 64, 44, 32, 8))  # object 1 is one pixel here
    Image.fromarray(np.ones((48, 64), np.uint16) * 300).save(masks / "vid2" / "00000.png")  # 16-bit
    palette_png(masks / "vid2" / "00005.png", disk(48, 64, 14, 16, 2) + 2 * disk(48, 64, 44, 32, 8))  # object 1 a speck
    (frames / "vid4").mkdir()  # frames without any mask folder
    Image.fromarray(textured(48, 64, 9)).save(frames / "vid4" / "00000.jpg")
    meta = {"videos": {v: {"objects": {"1": {}, "2": {}}} for v in ("vid0", "vid1", "vid2", "vid4")}}
    meta["videos"]["vid1"]["objects"]["5"] = {}  # listed, in no frame
    meta["videos"]["lost"] = {"objects": {"1": {}}}  # listed, no frame folder; vid3 is not listed
    (root / "meta.json").write_text(json.dumps(meta))
    return root
