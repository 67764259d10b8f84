"""The pure functions between the page and the model: boxes, clicks, painted masks, previews."""

import numpy as np
import pytest

from demo.inputs import (box_from_corners, check_box, click_to_pixel, format_box, outline,
                         painted_mask, parse_box, preview_scale, reference_mask, to_preview)
from src.collage import collage_picture


@pytest.mark.parametrize("text", ["10 20 30 40", "10,20,30,40", "[10, 20, 30, 40]", " (10 20, 30 40) "])
def test_parse_box_accepts_what_people_type(text):
    assert parse_box(text) == (10, 20, 30, 40)
    assert parse_box(format_box((10, 20, 30, 40))) == (10, 20, 30, 40)


@pytest.mark.parametrize("text", ["10 20 30", "a b c d", "1.5 2 3 4", "1 2 3 4 5"])
def test_parse_box_rejects_other_text_with_a_message(text):
    with pytest.raises(ValueError, match="four whole numbers x1 y1 x2 y2"):
        parse_box(text)


def test_parse_box_of_nothing_is_no_box():
    assert parse_box("") is None and parse_box(None) is None and parse_box("   ") is None


def test_check_box_names_the_image_size():
    assert check_box((0, 0, 200, 150), (150, 200)) == (0, 0, 200, 150)
    for box in [(10, 10, 500, 20), (10, 10, 10, 20), (-1, 0, 5, 5), (0, 0, 5, 151)]:
        with pytest.raises(ValueError, match="outside the 200 x 150 target"):
            check_box(box, (150, 200))


def test_box_from_corners_any_order_inclusive_clicks_clipped():
    assert box_from_corners((60, 40), (119, 109), (150, 200)) == (60, 40, 120, 110)
    assert box_from_corners((119, 40), (60, 109), (150, 200)) == (60, 40, 120, 110)
    assert box_from_corners((-5, 3), (400, 3), (150, 200)) == (0, 3, 200, 4)


def test_clicks_on_a_preview_map_back_to_full_image_pixels():
    hw = (3000, 4000)  # shown at 1600 x 1200
    assert preview_scale(hw) == pytest.approx(0.4)
    assert to_preview(np.zeros((3000, 4000, 3), np.uint8)).shape == (1200, 1600, 3)
    assert click_to_pixel((800, 600), hw) == (2000, 1500)
    assert click_to_pixel((1600, 1200), hw) == (3999, 2999)  # the far edge stays inside
    small = np.zeros((150, 200, 3), np.uint8)
    assert to_preview(small) is small and click_to_pixel((10.7, 20.2), (150, 200)) == (10, 20)


def test_outline_draws_only_the_border_of_the_box():
    image = np.full((100, 120, 3), 7, np.uint8)
    drawn = outline(image, (20, 30, 80, 90))
    changed = (drawn != image).any(axis=2)
    assert changed[30, 20] and changed[89, 79] and changed[30, 79]
    assert not changed[60, 50]  # inside
    assert not changed[:28].any() and not changed[92:].any() and not changed[:, :18].any() and not changed[:, 82:].any()
    assert np.array_equal(outline(image, None), image) and (image == 7).all()


def _editor(*alphas):
    layers = []
    for alpha in alphas:
        layer = np.zeros(alpha.shape + (4,), np.uint8)
        layer[..., 3] = alpha
        layers.append(layer)
    return {"background": None, "layers": layers, "composite": None}


def test_painted_mask_is_the_union_of_the_strokes():
    a, b = np.zeros((40, 60), np.uint8), np.zeros((40, 60), np.uint8)
    a[5:10, 5:10] = 153
    b[20:30, 40:50] = 255
    mask = painted_mask(_editor(a, b), (40, 60), "target")
    assert mask.dtype == np.uint8 and mask.sum() == 25 + 100 and mask[7, 7] == 1 and mask[25, 45] == 1
    assert painted_mask(_editor(np.zeros((40, 60), np.uint8)), (40, 60), "target") is None
    assert painted_mask(None, (40, 60), "target") is None and painted_mask({"layers": []}, (40, 60), "t") is None


def test_painted_mask_on_a_preview_is_scaled_to_the_full_image():
    alpha = np.zeros((1200, 1600), np.uint8)
    alpha[400:800, 400:1200] = 255
    mask = painted_mask(_editor(alpha), (3000, 4000), "target")
    assert mask.shape == (3000, 4000) and mask[1500, 2000] == 1 and mask[500, 500] == 0
    with pytest.raises(ValueError, match="paint again"):
        painted_mask(_editor(alpha), (3000, 3000), "target")


def test_reference_mask_prefers_painting_then_file_then_transparency():
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[5:15, 5:25, 3] = 255
    painted = np.zeros((20, 30), np.uint8)
    painted[0:2, 0:2] = 1
    mask_file = np.zeros((20, 30), np.uint8)
    mask_file[10:20, 0:10] = 255
    assert reference_mask(rgba, painted, mask_file)[1] == "painted"
    mask, source = reference_mask(rgba, None, mask_file)
    assert source == "mask file" and mask.sum() == 100
    mask, source = reference_mask(rgba, None, None)
    assert source == "transparency" and mask.sum() == 200


@pytest.mark.parametrize("reference, mask_file, message", [
    (np.zeros((20, 30, 3), np.uint8), None, "reference has no mask: paint over the object"),
    (np.full((20, 30, 4), 255, np.uint8), None, "reference has no mask"),  # opaque alpha is no mask
    (np.zeros((20, 30, 4), np.uint8), None, "fully transparent"),
    (np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30), np.uint8), "mask file is empty"),
    (np.zeros((20, 30, 3), np.uint8), np.full((10, 30), 255, np.uint8), "30 x 10, the reference 30 x 20"),
])
def test_reference_mask_errors_say_what_to_do(reference, mask_file, message):
    with pytest.raises(ValueError, match=message):
        reference_mask(reference, None, mask_file)


def test_collage_picture_shows_rgb_and_location_channel_upscaled():
    collage = np.zeros((4, 32, 32), np.float32)
    collage[:3] = -1.0  # black
    collage[3] = 0.0
    collage[3, 8:16, 8:16] = 1.0
    collage[3, :, 30:] = -1.0
    picture = collage_picture(collage, min_side=256)
    assert picture.shape == (256, (32 + 2 + 32) * 8, 3) and picture.dtype == np.uint8
    location = picture[:, (32 + 2) * 8:]
    assert location[10 * 8, 10 * 8, 0] == 255 and location[0, 0, 0] == 128 and location[0, 31 * 8, 0] == 0
    assert (picture[:, : 32 * 8] == 0).all()

