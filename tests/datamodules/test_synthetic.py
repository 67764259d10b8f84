"""The synthetic generator: real mp4 that decord reads, masks aligned with the pixels, seeded."""

from __future__ import annotations

import json

import decord
import numpy as np
from pycocotools import mask as mask_utils

from datamodules.packing.synthetic import VIDEO_STRIDE, SyntheticConfig, render, write_image, write_video

CFG = SyntheticConfig(width=96, height=64, frames=6)


def test_video_is_real_mp4_with_aligned_masklets(tmp_path):
    mp4 = write_video(tmp_path, 0, seed=0, cfg=CFG)
    vr = decord.VideoReader(str(mp4))
    assert len(vr) == CFG.frames and vr[0].shape == (CFG.height, CFG.width, 3)
    ann = json.loads((tmp_path / "syn_000000_manual.json").read_text())
    assert len(ann["masklet"]) == len(range(0, CFG.frames, VIDEO_STRIDE))
    _, true_masks = render(np.random.default_rng(np.random.SeedSequence([0, 1, 0])), CFG, CFG.frames)
    for k, per_frame in enumerate(ann["masklet"]):
        for j, rle in enumerate(per_frame):
            decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
            assert np.array_equal(decoded, true_masks[k * VIDEO_STRIDE][j])


def test_objects_move_and_differ_from_background():
    frames, masks = render(np.random.default_rng(3), CFG, CFG.frames)
    first, last = masks[0][0], masks[-1][0]
    assert first.any() and last.any() and not np.array_equal(first, last)  # the object moved/scaled/rotated
    inside, outside = frames[0][first].mean(0), frames[0][~first].mean(0)
    assert np.abs(inside - outside).max() > 5 or frames[0][first].std() > 10


def test_seeds_are_reproducible_and_disjoint(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (a, b, c):
        d.mkdir()
    write_image(a, 0, seed=0, cfg=CFG)
    write_image(b, 0, seed=0, cfg=CFG)
    write_image(c, 0, seed=1000, cfg=CFG)
    assert (a / "syn_000000.jpg").read_bytes() == (b / "syn_000000.jpg").read_bytes()
    assert (a / "syn_000000.jpg").read_bytes() != (c / "syn_000000.jpg").read_bytes()
    meta = json.loads((a / "syn_000000.json").read_text())
    assert meta["image"]["file_name"] == "syn_000000.jpg" and meta["annotations"]


def test_rerun_with_other_settings_is_refused(tmp_path):
    import pytest

    from datamodules.packing.synthetic import generate

    generate(tmp_path, seed=0, videos=1, images=1, cfg=CFG, progress=False)
    generate(tmp_path, seed=0, videos=2, images=1, cfg=CFG, progress=False)  # more of the same: fine
    with pytest.raises(ValueError, match=r"seed 0 -> 1.*--overwrite"):
        generate(tmp_path, seed=1, videos=1, images=1, cfg=CFG, progress=False)
    generate(tmp_path, seed=1, videos=1, images=1, cfg=CFG, progress=False, overwrite=True)  # deletes the old files first
    assert json.loads((tmp_path / "settings.json").read_text())["seed"] == 1
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["syn_000000.mp4", "syn_000000_manual.json"]


def test_truncated_settings_file_is_named_with_the_fix(tmp_path):
    import pytest

    from datamodules.packing.synthetic import generate

    generate(tmp_path, seed=0, videos=0, images=1, cfg=CFG, progress=False)
    (tmp_path / "settings.json").write_text('{"seed": 0, "wid')
    with pytest.raises(ValueError, match=r"settings\.json: unreadable pack state \(.*\); start over with --overwrite"):
        generate(tmp_path, seed=0, videos=0, images=1, cfg=CFG, progress=False)
    generate(tmp_path, seed=0, videos=0, images=1, cfg=CFG, progress=False, overwrite=True)  # the fix works
    assert json.loads((tmp_path / "settings.json").read_text())["seed"] == 0


def test_temporaries_of_a_stopped_run_are_removed(tmp_path):
    from datamodules.packing.synthetic import generate

    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / ".syn_000000.tmp.mp4").write_bytes(b"half a video")
    (tmp_path / "videos" / ".syn_000000_manual.json.tmp-1a2b3c4d").write_text("{")
    generate(tmp_path, seed=0, videos=1, images=0, cfg=CFG, progress=False)
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["syn_000000.mp4", "syn_000000_manual.json"]
