import numpy as np
import pytest

from src.collage import build_collage, to_signed_chw


def test_to_signed_chw():
    img = np.array([[[0, 255, 127]]], np.uint8)
    out = to_signed_chw(img)
    assert out.shape == (3, 1, 1) and out.dtype == np.float32
    assert out[:, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 127 / 127.5 - 1], abs=1e-6)


def test_collage_box_channel_and_hint_placement():
    crop = np.full((32, 32, 3), 255, np.uint8)
    hint = np.zeros((8, 8, 3), np.uint8)
    col = build_collage(crop, (4, 8, 12, 24), hint, valid=(0, 4, 32, 28))
    assert col.shape == (4, 32, 32) and col.dtype == np.float32
    assert (col[:3, 8:24, 4:12] == -1).all()  # black hint stretched to the 8 x 16 box
    assert (col[:3, 4:8] == 1).all() and (col[:3, :, 12:] == 1).all()
    ch = col[3]
    assert (ch[8:24, 4:12] == 1).all()
    assert ch.sum() == 8 * 16 - 2 * 4 * 32  # 1 in box, -1 on the 4-row padding bands, 0 elsewhere
    assert (ch[:4] == -1).all() and (ch[28:] == -1).all() and (ch[4:8] == 0).all()
    assert set(np.unique(ch)) == {-1.0, 0.0, 1.0}
    # the authors' inference marks padding 1 (their -1 wraps to 255 in a uint8 cast): a model folder may ask for it
    marked = build_collage(crop, (4, 8, 12, 24), hint, valid=(0, 4, 32, 28), pad_value=1.0)[3]
    assert (marked[:4] == 1).all() and (marked[28:] == 1).all() and np.array_equal(marked[4:28], ch[4:28])


def test_collage_mask_channel_can_reach_outside_box():
    crop = np.zeros((16, 16, 3), np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[2:14, 2:6] = 1
    col = build_collage(crop, (4, 4, 8, 8), np.full((3, 3, 3), 200, np.uint8), mask=mask)
    assert (col[3] == mask).all()
    assert np.allclose(col[:3, 4:8, 4:8], 200 / 127.5 - 1)


def test_collage_rejects_bad_inputs():
    crop = np.zeros((16, 16, 3), np.uint8)
    hint = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="no area"):
        build_collage(crop, (20, 20, 30, 30), hint)
    with pytest.raises(ValueError, match="mask shape"):
        build_collage(crop, (0, 0, 4, 4), hint, mask=np.zeros((8, 8)))
    with pytest.raises(ValueError):
        build_collage(crop.astype(np.float32), (0, 0, 4, 4), hint)
