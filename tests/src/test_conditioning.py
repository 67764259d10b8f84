import cv2
import numpy as np
import pytest

from src.conditioning import (
    AUTHORS_PREPROCESSING,
    BOX_GROW_RANGE,
    CROP_GROW_RANGE,
    DEFAULT_BOX_GROW,
    DEFAULT_CROP_GROW,
    DEFAULT_PREPROCESSING,
    DEFAULT_REFERENCE_GROW,
    REFERENCE_GROW_RANGE,
    PreparedReference,
    Preprocessing,
    prepare_reference,
    prepare_target,
)
from src.geometry import expand_box, mask_to_box, square_box
from src.image_ops import CropTransform


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    h, w = 240, 320
    img = cv2.resize(rng.integers(0, 256, (h // 8, w // 8, 3)).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (150, 120), (40, 60), 15, 0, 360, 1, -1)
    return img, mask


def test_reference_dtypes_shapes_ranges(scene):
    img, mask = scene
    ref = prepare_reference(img, mask, rng=np.random.default_rng(1))
    assert isinstance(ref, PreparedReference)
    assert ref.image.shape == (3, 224, 224) and ref.image.dtype == np.float32 and ref.image.flags.c_contiguous
    assert 0.0 <= ref.image.min() and ref.image.max() <= 1.0
    assert ref.hint.shape == (224, 224, 3) and ref.hint.dtype == np.uint8
    assert ref.mask.shape == (224, 224) and set(np.unique(ref.mask)) == {0, 1}
    # object on white: the background (outside a dilated object mask) is pure white
    bg = cv2.dilate(ref.mask, np.ones((5, 5), np.uint8)) == 0
    assert np.allclose(ref.image[:, bg], 1.0)
    assert ref.hint[ref.mask == 0].max() == 0


def test_reference_deterministic_without_rng_and_canvas_margin(scene):
    img, mask = scene
    a = prepare_reference(img, mask)
    b = prepare_reference(img, mask)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.hint, b.hint)
    # object box 1/1.3 (the default margin) of the grown canvas along its long side, centred
    x1, y1, x2, y2 = mask_to_box(a.mask)
    assert abs((y2 - y1) - 224 / DEFAULT_REFERENCE_GROW) <= 3
    wide = mask_to_box(prepare_reference(img, mask, margin=1.1).mask)
    assert abs((wide[3] - wide[1]) - 224 / 1.1) <= 3
    assert abs((y1 + y2) / 2 - 112) <= 2


def test_reference_random_reproducible_and_augment_called(scene):
    img, mask = scene
    calls = []

    def flip(image, m):
        calls.append((image.shape, m.shape))
        return image[:, ::-1], m[:, ::-1]

    a = prepare_reference(img, mask, rng=np.random.default_rng(3), augment=flip)
    b = prepare_reference(img, mask, rng=np.random.default_rng(3))
    assert calls == [((224, 224, 3), (224, 224))]
    assert np.array_equal(a.image, b.image[:, :, ::-1]) and np.array_equal(a.mask, b.mask[:, ::-1])
    c = prepare_reference(img, mask, rng=np.random.default_rng(3))
    assert np.array_equal(b.image, c.image)
    with pytest.raises(ValueError, match="augment"):
        prepare_reference(img, mask, augment=lambda i, m: (i[:100], m[:100]))


def test_reference_bad_inputs(scene):
    img, mask = scene
    with pytest.raises(ValueError, match="empty"):
        prepare_reference(img, np.zeros_like(mask))
    with pytest.raises(ValueError, match="does not match"):
        prepare_reference(img, mask[:10])


def _check_sample(s, size):
    assert s["target"].shape == (3, size, size) and s["target"].dtype == np.float32
    assert -1.0 <= s["target"].min() and s["target"].max() <= 1.0
    assert s["collage"].shape == (4, size, size) and s["collage"].dtype == np.float32
    assert -1.0 <= s["collage"].min() and s["collage"].max() <= 1.0
    assert set(np.unique(s["collage"][3])) <= {-1.0, 0.0, 1.0}
    assert s["box"].shape == (4,) and s["box"].dtype == np.int64
    assert s["object_mask"].shape == (1, size, size) and s["object_mask"].dtype == np.float32
    assert set(np.unique(s["object_mask"])) <= {0.0, 1.0}


def test_target_inference_box_channel_agrees_with_box(scene):
    img, mask = scene
    ref = prepare_reference(img, mask)
    s, t, _ = prepare_target(img, mask, ref, size=128)
    _check_sample(s, 128)
    x1, y1, x2, y2 = s["box"].tolist()
    ch = s["collage"][3]
    assert (ch[y1:y2, x1:x2] == 1).all() and (ch == 1).sum() == (x2 - x1) * (y2 - y1)
    # the geometry is the documented fixed one
    box = expand_box(mask_to_box(mask), DEFAULT_BOX_GROW, img.shape[:2])
    assert t == CropTransform(square_box(expand_box(box, DEFAULT_CROP_GROW, img.shape[:2]), img.shape[:2]), 128)
    # the target crop is the image crop; the object mask lies inside the box
    assert np.array_equal(s["target"], prepare_target(img, mask, ref, size=128).sample["target"])
    om = s["object_mask"][0]
    assert om.sum() > 0 and om[y1:y2, x1:x2].sum() == om.sum()
    # the hint is in the box: the collage differs from the target only there
    diff = np.abs(s["collage"][:3] - s["target"]).max(axis=0) > 0
    assert diff[y1:y2, x1:x2].any() and not diff[:y1].any() and not diff[y2:].any()


def test_target_padding_is_minus_one(scene):
    img, _ = scene
    ref = prepare_reference(*scene)
    # a wide object in a 240 x 320 image: the crop's side (320) exceeds the height, so it is padded
    s, t, _ = prepare_target(img, (40, 60, 280, 180), ref, size=64)
    assert t.box == (0, 0, 320, 240) and t.side == 320
    vx1, vy1, vx2, vy2 = t.valid_box()
    ch = s["collage"][3]
    pad = np.ones((64, 64), bool)
    pad[vy1:vy2, vx1:vx2] = False
    assert pad.any() and (ch[pad] == -1).all() and (ch[~pad] >= 0).all()
    assert (s["target"][:, pad] == -1).all()


def test_target_user_mask_channel(scene):
    img, mask = scene
    ref = prepare_reference(img, mask)
    s, _, _ = prepare_target(img, mask, ref, size=128, mask_channel="mask")
    assert np.array_equal(s["collage"][3] == 1, s["object_mask"][0] == 1)
    with pytest.raises(ValueError, match="needs a target mask"):
        prepare_target(img, (10, 10, 50, 50), ref, mask_channel="mask")


def test_target_training_random_reproducible_and_mask_channel_mix(scene):
    img, mask = scene
    ref = prepare_reference(img, mask, rng=np.random.default_rng(0))
    a = prepare_target(img, mask, ref, rng=np.random.default_rng(9), size=96)
    b = prepare_target(img, mask, ref, rng=np.random.default_rng(9), size=96)
    for k in a.sample:
        assert np.array_equal(a.sample[k], b.sample[k])
    assert a.transform == b.transform
    rng = np.random.default_rng(1)
    kinds = []
    for _ in range(20):
        s, _, _ = prepare_target(img, mask, ref, rng=rng, size=96)
        _check_sample(s, 96)
        x1, y1, x2, y2 = s["box"].tolist()
        ch = s["collage"][3] == 1
        kinds.append(ch.sum() == (x2 - x1) * (y2 - y1) and ch[y1:y2, x1:x2].all())
    assert 0 < sum(kinds) < 20  # both box and perturbed-mask channels occur


def test_paste_back_from_prepared_target(scene):
    img, mask = scene
    ref = prepare_reference(img, mask)
    s, t, _ = prepare_target(img, mask, ref, size=128)
    generated = ((s["target"].transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8)
    out = t.paste_back(img, generated, margin=5, feather=3)
    x1, y1, x2, y2 = t.pasted_region(img.shape[:2], 5)
    keep = np.ones(img.shape[:2], bool)
    keep[y1:y2, x1:x2] = False
    assert np.array_equal(out[keep], img[keep])
    assert np.abs(out.astype(int) - img.astype(int)).mean() < 10  # round trip of a 128 px crop


def test_target_bad_inputs(scene):
    img, mask = scene
    ref = prepare_reference(img, mask)
    with pytest.raises(ValueError, match="no hint"):
        prepare_target(img, mask, prepare_reference(img, mask, compute_hint=False))
    with pytest.raises(ValueError, match="no area"):
        prepare_target(img, (400, 10, 500, 50), ref)
    with pytest.raises(ValueError, match="empty"):
        prepare_target(img, np.zeros_like(mask), ref)
    with pytest.raises(ValueError, match="rng"):
        prepare_target(img, mask, ref, mask_channel="random")
    with pytest.raises(ValueError, match="max_box_fraction"):
        prepare_target(img, (20, 20, 300, 200), ref, max_box_fraction=0.8)
    prepare_target(img, mask, ref, max_box_fraction=0.8)  # 85 x 119 px object in 320 x 240: fine


def test_fixed_geometry_is_the_centre_of_the_training_ranges():
    assert REFERENCE_GROW_RANGE == (1.1, 1.5) and BOX_GROW_RANGE == (1.1, 1.2) and CROP_GROW_RANGE == (1.3, 3.0)
    assert DEFAULT_PREPROCESSING == Preprocessing(1.3, 1.15, 2.15, -1.0)
    assert (DEFAULT_REFERENCE_GROW, DEFAULT_BOX_GROW, DEFAULT_CROP_GROW) == (1.3, 1.15, 2.15)
    # the authors' run_inference.py: randint(12, 13) / 10 = 1.2, randint(11, 12) / 10 = 1.1, crop 1.5-2.9
    assert AUTHORS_PREPROCESSING == Preprocessing(1.2, 1.1, 2.2, 1.0)
    assert Preprocessing.centre_of((1.0, 2.0), (1.0, 1.0), (2.0, 4.0)) == (1.5, 1.0, 3.0, -1.0)
    with pytest.raises(ValueError, match="unknown keys"):
        Preprocessing.from_config({"box_ratio": 1.1, "crop_ratio": 2.0, "reference_margin": 1.2, "pad": 0})


def test_mask_pad_value_marks_the_padding(scene):
    img, mask = scene
    ref = prepare_reference(img, mask)
    wide = np.zeros((40, 320), np.uint8)  # a flat strip: the square crop is padded
    wide[10:30, 100:140] = 1
    strip = np.zeros((40, 320, 3), np.uint8)
    default = prepare_target(strip, wide, ref, size=64).sample["collage"][3]
    authors = prepare_target(strip, wide, ref, size=64, mask_pad_value=1.0).sample["collage"][3]
    assert (default == -1).any() and not (authors == -1).any()
    assert np.array_equal(authors == 1, (default == 1) | (default == -1))
