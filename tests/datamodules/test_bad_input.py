"""Crafted bad files: every one is skipped with a counted reason naming the file; the pack goes on."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from datamodules.packing.packer import pack
from datamodules.packing.sources.images import SA1BReader
from datamodules.packing.sources.video import VideoReader
from datamodules.packing.sources.vos import VOSReader
from tests.datamodules.conftest import disk, make_sa1b, make_video, make_vos, palette_png, rle


def run(reader, out):
    return pack(reader, str(out), items_per_shard=1, workers=1, progress=False)


def bad_files(manifest) -> dict[str, str]:
    return {f.rsplit("/", 1)[-1]: reason.split(":")[0] for f, reason in manifest["bad_files"]}


def test_vos_bad_frames_and_masks(tmp_path):
    root = make_vos(tmp_path / "vos", videos=1, frames=6)
    frames, masks = root / "JPEGImages" / "vid0", root / "Annotations" / "vid0"
    data = (frames / "00000.jpg").read_bytes()
    (frames / "00000.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (frames / "00005.jpg").write_bytes(b"not a jpeg at all")  # corrupt JPEG
    (masks / "00010.png").unlink()  # frame without mask
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / "00015.png")  # mask of another size
    Image.fromarray(np.ones((48, 64), np.uint16) * 300).save(masks / "00020.png")  # 16-bit mask
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(masks / "00025.png")  # RGB mask
    palette_png(masks / "00099.png", np.zeros((48, 64)))  # mask without frame
    manifest = run(VOSReader(str(root)), tmp_path / "out")
    assert bad_files(manifest) == {
        "00000.jpg": "corrupt_image", "00005.jpg": "corrupt_image", "00010.jpg": "frame_without_mask",
        "00015.png": "mask_size_mismatch", "00020.png": "mask_16bit", "00025.png": "mask_rgb",
        "00099.png": "mask_without_frame",
    }
    # only frame 00000 keeps a usable mask, and it does not decode: both objects' tracks are too short
    assert manifest["rejected"]["too_few_frames"] == 2
    assert manifest["rejected"]["corrupt_image"] == 2  # each bad frame reported once, not once per object
    assert manifest["total_samples"] == 0


def test_vos_empty_and_one_pixel_masks(tmp_path):
    root = make_vos(tmp_path / "vos", videos=1, frames=3)
    masks = root / "Annotations" / "vid0"
    one = np.zeros((48, 64), np.uint8)
    one[5, 5] = 1  # object 1 is a single pixel here
    palette_png(masks / "00000.png", one + 2 * disk(48, 64, 44, 32, 8))
    manifest = run(VOSReader(str(root), min_frames=3), tmp_path / "out")
    assert manifest["rejected"]["mask_empty"] == 1
    assert manifest["rejected"]["too_few_frames"] == 1  # object 1 keeps 2 of 3 frames
    assert manifest["samples"] == {"vos/video": 1}  # object 2 is intact


def test_corrupt_and_truncated_mp4(tmp_path):
    root = make_video(tmp_path / "v", stem="good", frames=8)
    make_video(root, stem="trunc", frames=8)
    data = (root / "trunc.mp4").read_bytes()
    (root / "trunc.mp4").write_bytes(data[: len(data) // 3])
    make_video(root, stem="junk", frames=8)
    (root / "junk.mp4").write_bytes(b"\x00" * 2000)
    make_video(root, stem="nomask", frames=8)
    (root / "nomask_manual.json").unlink()
    manifest = run(VideoReader(str(root), frame_stride=2), tmp_path / "out")
    bad = bad_files(manifest)
    assert bad["junk.mp4"] == "corrupt_video" and bad["trunc.mp4"] == "corrupt_video"
    assert bad["nomask.mp4"] == "missing_masks"
    assert manifest["samples"] == {"video/video": 1}


def test_masklet_of_another_size(tmp_path):
    root = make_video(tmp_path / "v", stem="clip", frames=4, stride=1)
    data = json.loads((root / "clip_manual.json").read_text())
    data["masklet"][1][0] = rle(disk(20, 20, 10, 10, 5))
    (root / "clip_manual.json").write_text(json.dumps(data))
    manifest = run(VideoReader(str(root), frame_stride=1), tmp_path / "out")
    assert list(bad_files(manifest).values()) == ["mask_size_mismatch"]
    assert manifest["total_samples"] == 0


def test_image_modes_converted_and_counted(tmp_path):
    root = make_sa1b(tmp_path / "sa", n=4)
    rgb = np.asarray(Image.open(root / "sa_0.jpg"))
    Image.fromarray(rgb).convert("L").save(root / "sa_0.jpg")
    Image.fromarray(rgb).convert("CMYK").save(root / "sa_1.jpg")
    Image.fromarray(rgb).convert("RGBA").save(root / "sa_2.png")
    meta = json.loads((root / "sa_2.json").read_text())
    meta["image"]["file_name"] = "sa_2.png"
    (root / "sa_2.json").write_text(json.dumps(meta))
    (root / "sa_3.json").write_text("{ broken json")
    manifest = run(SA1BReader(str(root)), tmp_path / "out")
    assert manifest["converted"] == {"cmyk": 1, "grayscale": 1, "rgba": 1}
    assert manifest["samples"] == {"sa1b/image": 3}
    assert bad_files(manifest) == {"sa_3.json": "bad_annotation"}


def test_reader_crash_is_counted_not_fatal(tmp_path):
    class Flaky(SA1BReader):
        def read(self, item, stats):
            if item.endswith("sa_0.json"):
                raise ZeroDivisionError("bug in a reader")
            yield from super().read(item, stats)

    root = make_sa1b(tmp_path / "sa", n=2)
    manifest = run(Flaky(str(root)), tmp_path / "out")
    assert manifest["rejected"]["reader_error"] == 1
    assert manifest["samples"] == {"sa1b/image": 1}
    shutil.rmtree(tmp_path / "out")


def test_binary_0_255_masks_are_one_object(tmp_path):
    from datamodules.packing.media import read_label_mask

    m = (disk(48, 64, 30, 24, 10) * 255).astype(np.uint8)
    Image.fromarray(m).save(tmp_path / "bin.png")
    assert set(np.unique(read_label_mask(tmp_path / "bin.png"))) == {0, 1}
    palette_png(tmp_path / "void.png", disk(48, 64, 30, 24, 10) * 255)  # palette 255 stays void
    assert set(np.unique(read_label_mask(tmp_path / "void.png"))) == {0, 255}
