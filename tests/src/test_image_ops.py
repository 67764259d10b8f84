import cv2
import numpy as np
import pytest

from src.image_ops import CropTransform, Offset, grow_canvas, pad_to_square


def test_pad_to_square_centred_wide_and_tall():
    wide = np.ones((2, 5, 3), np.uint8)
    out, off = pad_to_square(wide, 255)
    assert out.shape == (5, 5, 3) and off == Offset(0, 1)
    assert (out[0] == 255).all() and (out[1:3] == 1).all() and (out[3:] == 255).all()
    tall = np.ones((6, 3), np.uint8)
    out, off = pad_to_square(tall, 0)
    assert out.shape == (6, 6) and off == Offset(1, 0)
    assert (out[:, 0] == 0).all() and (out[:, 1:4] == 1).all() and (out[:, 4:] == 0).all()


def test_pad_to_square_already_square_and_per_channel_value():
    sq = np.zeros((4, 4, 3), np.uint8)
    out, off = pad_to_square(sq, 9)
    assert np.array_equal(out, sq) and off == Offset(0, 0)
    out, _ = pad_to_square(np.zeros((1, 3, 3), np.uint8), (1, 2, 3))
    assert out[0, 0].tolist() == [1, 2, 3]


def test_pad_to_square_random_offset_reproducible_and_covers_range():
    img = np.ones((2, 8), np.uint8)
    offs = {pad_to_square(img, 0, True, np.random.default_rng(s))[1].y for s in range(60)}
    assert offs == set(range(7))  # 0..6 inclusive
    a = pad_to_square(img, 0, True, np.random.default_rng(5))
    b = pad_to_square(img, 0, True, np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    with pytest.raises(ValueError, match="rng"):
        pad_to_square(img, 0, True)


def test_grow_canvas_hand_computed():
    img = np.zeros((10, 20, 3), np.uint8)
    mask = np.ones((10, 20), np.uint8)
    gi, gm = grow_canvas(img, mask, 1.5)  # 15 x 30: 5 extra rows (2 top, 3 bottom), 10 cols (5, 5)
    assert gi.shape == (15, 30, 3) and gm.shape == (15, 30)
    assert (gi[:2] == 255).all() and (gi[12:] == 255).all() and (gi[:, :5] == 255).all()
    assert (gi[2:12, 5:25] == 0).all()
    assert gm.sum() == 200 and gm[2:12, 5:25].all()
    with pytest.raises(ValueError):
        grow_canvas(img, mask, 0.9)


def test_crop_transform_geometry():
    t = CropTransform((10, 20, 50, 40), 64)  # 40 wide, 20 high -> side 40, pad 10 rows on top
    assert t.side == 40 and t.offset == Offset(0, 10) and t.scale == pytest.approx(1.6)
    assert t.valid_box() == (0, 16, 64, 48)
    assert t.box_to_crop((10, 20, 50, 40)) == (0, 16, 64, 48)
    assert t.box_to_crop((20, 25, 30, 35)) == (16, 24, 32, 40)


def test_crop_transform_apply_values():
    img = np.arange(100 * 80 * 3, dtype=np.uint32).reshape(100, 80, 3).astype(np.uint8)
    t = CropTransform((10, 20, 50, 40), 40)  # scale 1: crop and pad only
    out = t.apply(img, pad_value=0)
    assert out.shape == (40, 40, 3)
    assert np.array_equal(out[10:30], img[20:40, 10:50])
    assert (out[:10] == 0).all() and (out[30:] == 0).all()
    mask = np.zeros((100, 80), np.uint8)
    mask[25:30, 15:20] = 1
    m = CropTransform((10, 20, 50, 40), 80).apply(mask, 0, cv2.INTER_NEAREST)
    assert m.shape == (80, 80) and set(np.unique(m)) == {0, 1}
    assert m.sum() == 25 * 4  # nearest, exact 2x upscale
    with pytest.raises(ValueError, match="exceeds"):
        CropTransform((50, 50, 120, 90), 32).apply(img)


@pytest.mark.parametrize("box", [(10, 20, 50, 40), (0, 0, 37, 61), (30, 5, 80, 100), (5, 5, 45, 45)])
@pytest.mark.parametrize("feather", [0, 4])
def test_paste_back_leaves_outside_region_bit_exact(box, feather):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (100, 80, 3)).astype(np.uint8)
    t = CropTransform(box, 64)
    gen = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    out = t.paste_back(img, gen, margin=5, feather=feather)
    x1, y1, x2, y2 = t.pasted_region(img.shape[:2], 5)
    outside = np.ones(img.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert out.dtype == img.dtype and out.shape == img.shape
    assert np.array_equal(out[outside], img[outside])
    assert not np.array_equal(out[~outside], img[~outside])


def test_paste_back_inverts_apply():
    # A smooth image survives crop -> pad -> resize -> resize back -> unpad up to interpolation error.
    yy, xx = np.mgrid[0:120, 0:90]
    img = np.stack([xx * 2, yy * 2, (xx + yy)], -1).astype(np.uint8)
    t = CropTransform((20, 30, 70, 100), 128)
    back = t.paste_back(np.zeros_like(img), t.apply(img, 0), margin=0)
    x1, y1, x2, y2 = t.box
    err = np.abs(back[y1:y2, x1:x2].astype(int) - img[y1:y2, x1:x2].astype(int))
    assert err[1:-1, 1:-1].max() <= 1
    assert (back[:y1] == 0).all() and (back[:, :x1] == 0).all()


def test_paste_back_margin_not_applied_on_image_border():
    t = CropTransform((0, 10, 40, 50), 32)
    assert t.pasted_region((50, 60), 5) == (0, 15, 35, 50)


def test_feather_blends_towards_original_at_region_edge():
    img = np.zeros((60, 60), np.float32)
    t = CropTransform((10, 10, 50, 50), 40)
    gen = np.full((40, 40), 100.0, np.float32)
    out = t.paste_back(img, gen, margin=2, feather=5)
    assert out[30, 30] == pytest.approx(100.0)
    assert 0 < out[30, 12] < out[30, 14] < out[30, 30]  # first pasted column is the softest
    hard = t.paste_back(img, gen, margin=2, feather=0)
    assert hard[30, 12] == pytest.approx(100.0)


def test_crop_transform_rejects_bad_inputs():
    with pytest.raises(ValueError):
        CropTransform((5, 5, 5, 10), 32)
    t = CropTransform((0, 0, 10, 10), 16)
    with pytest.raises(ValueError):
        t.paste_back(np.zeros((20, 20, 3), np.uint8), np.zeros((15, 16, 3), np.uint8))


@pytest.mark.parametrize("mode", ["box", "mask"])
@pytest.mark.parametrize("feather", [0, 4])
def test_composite_keeps_every_byte_outside_the_region(mode, feather):
    from src.image_ops import composite_region

    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    gen = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    t = CropTransform((10, 5, 80, 65), 32)
    mask = np.zeros((70, 90), np.uint8)
    mask[25:45, 30:50] = 1
    region = composite_region(mode, img.shape[:2], (27, 22, 53, 48), mask=mask, dilate=3)
    out = t.paste_back(img, gen, feather=feather, region=region)
    assert np.array_equal(out[region == 0], img[region == 0])
    assert (out[region > 0] != img[region > 0]).any()
    if feather:  # the soft seam stays inside: the region's edge pixels are blends, not the generation
        hard = t.paste_back(img, gen, feather=0, region=region)
        edge = region.astype(bool) & ~cv2.erode(region, np.ones((3, 3), np.uint8)).astype(bool)
        assert (np.abs(out[edge].astype(int) - img[edge]) <= np.abs(hard[edge].astype(int) - img[edge])).all()


def test_composite_region_modes():
    from src.image_ops import composite_region

    assert composite_region("crop", (10, 10), (1, 1, 5, 5)) is None
    box = composite_region("box", (10, 12), (2, 3, 7, 9))
    assert box.sum() == 5 * 6 and box[3:9, 2:7].all()
    no_mask = composite_region("mask", (10, 12), (2, 3, 7, 9))  # a box-only job: the box
    assert np.array_equal(no_mask, box)
    mask = np.zeros((10, 12), np.uint8)
    mask[5, 5] = 1
    assert composite_region("mask", (10, 12), (0, 0, 1, 1), mask=mask, dilate=1).sum() == 5  # a plus shape
    with pytest.raises(ValueError, match="composite mode"):
        composite_region("blend", (10, 10), (0, 0, 1, 1))


def test_feathered_alpha_ignores_image_border():
    from src.image_ops import feathered_alpha

    region = np.zeros((10, 10), np.uint8)
    region[:, :5] = 1  # touches the left, top and bottom borders
    a = feathered_alpha(region, 2)
    assert a[5, 0] == 1.0 and a[0, 0] == 1.0  # no fade at the image border
    np.testing.assert_allclose(a[5, :5], [1, 1, 1, 2 / 3, 1 / 3])
    assert not a[:, 5:].any()


def test_on_white_equals_where_for_bool_and_uint8_masks_and_views():
    from src.image_ops import on_white

    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (40, 50)).astype(np.uint8)
    want = np.where(mask[..., None] > 0, image, np.uint8(255))
    np.testing.assert_array_equal(on_white(image, mask), want)
    np.testing.assert_array_equal(on_white(image, mask > 0), want)
    np.testing.assert_array_equal(on_white(image[5:30, 7:41], mask[5:30, 7:41]), want[5:30, 7:41])
    with pytest.raises(ValueError):
        on_white(image.astype(np.float32), mask)
