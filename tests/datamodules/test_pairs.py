"""Pair building details: reduced JPEG decoding changes nothing but cost; frame choice per kind."""

from __future__ import annotations

import json

import cv2
import numpy as np

from datamodules.components.pairs import PairBuilder, load_view
from datamodules.components.shard_format import ObjectSample, encode_sample
from tests.datamodules.conftest import textured


def big_sample(kind: str = "video") -> dict:
    frames, masks = [], []
    for f in range(3):
        img = textured(96, 128, f)  # smooth at full size: a 64 px crop of fine texture would alias either way
        img = cv2.resize(img, (640, 480), interpolation=cv2.INTER_CUBIC)
        m = np.zeros((480, 640), np.uint8)
        cv2.ellipse(m, (250 + 40 * f, 240), (170, 120), 15 * f, 0, 360, 1, -1)
        img[m > 0] = (img[m > 0] // 2 + np.array([120, 20, 20], np.uint8))
        frames.append(img)
        masks.append(m)
    n = 3 if kind == "video" else 1
    return encode_sample(ObjectSample("t", kind, "x", 1, frames[:n], masks[:n], list(range(n))), quality=95)


def test_reduced_view_is_aligned_with_full_view():
    s = big_sample()
    meta = json.loads(s["json"])
    full_img, full_mask = load_view(s, meta, 1, 1)
    for r in (2, 4):
        img, mask = load_view(s, meta, 1, r)
        assert img.shape == (480 // r, 640 // r, 3)
        down = cv2.resize(full_mask * 255, (640 // r, 480 // r), interpolation=cv2.INTER_AREA) > 127
        iou = (down & (mask > 0)).sum() / (down | (mask > 0)).sum()
        assert iou > 0.97
        assert np.abs(cv2.resize(full_img, (640 // r, 480 // r), interpolation=cv2.INTER_AREA).astype(int) - img).mean() < 4


def test_reduced_decoding_gives_the_same_pair():
    s = big_sample()
    fast = PairBuilder(image_size=64, reference_size=56, augment=False)
    slow = PairBuilder(image_size=64, reference_size=56, augment=False, reduced_decode=False)
    for seed in range(5):
        a, b = fast(s, np.random.default_rng(seed)), slow(s, np.random.default_rng(seed))
        d = np.abs(a["reference"] - b["reference"]).max(0)
        assert np.median(d) < 0.01 and d.mean() < 0.04  # differences sit on the outline (a sub-pixel shift)
        # crop boxes are placed on the reduced grid, so they may differ by up to ~2 reduced pixels
        assert np.abs(a["target"] - b["target"]).mean() < 0.08
        assert np.abs(a["box"] - b["box"]).max() <= 2
        assert a["kind"] == b["kind"] == 0


def test_video_pairs_use_two_frames_and_images_one():
    builder = PairBuilder(image_size=32, reference_size=32)
    rng = np.random.default_rng(0)
    video = json.loads(big_sample("video")["json"])
    picks = {builder.pick_frames(video, rng) for _ in range(50)}
    assert all(i != j for i, j in picks) and len(picks) == 6  # every ordered pair of 3 frames
    image = json.loads(big_sample("image")["json"])
    assert builder.pick_frames(image, rng) == (0, 0)
    out = builder(big_sample("image"), rng)
    assert out["kind"] == 1 and out["reference"].shape == (3, 32, 32)
