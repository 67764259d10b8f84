import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from src.files import atomic_dir, atomic_path, atomic_write
from src.image_io import ImageError, check_output_path, read_image, write_image


def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_16bit_gray_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "g16.png"
    path.write_bytes(_png_bytes(ramp))
    rgb = read_image(path)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], np.rint(ramp / 257.0).astype(np.uint8))
    assert 100 < rgb.mean() < 155  # a clipping reader gives ~255 almost everywhere
    assert read_image(path, "L").shape == (64, 64)


def test_16bit_rgb_keeps_the_high_byte(tmp_path):
    rgb16 = (np.random.default_rng(0).random((8, 8, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])
    got = read_image(tmp_path / "c16.png")
    assert np.abs(got.astype(int) - (rgb16 >> 8)).max() <= 1


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "LA", "RGBA", "1"])
def test_modes_convert_to_rgb(tmp_path, mode):
    im = Image.new("RGB", (10, 6), (200, 30, 40)).convert(mode)
    path = tmp_path / f"x.{'jpg' if mode == 'CMYK' else 'png'}"
    im.save(path) if mode != "CMYK" else im.save(path, format="JPEG")
    out = read_image(path)
    assert out.shape == (6, 10, 3) and out.dtype == np.uint8
    keep = read_image(path, None)
    assert keep.shape[2] == (4 if mode in ("LA", "RGBA") else 3)


def test_alpha_cutout_as_mask():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[2:5, 2:6, 3] = 255
    mask = read_image(_png_bytes(rgba, "RGBA"), "L", name="cut.png")
    assert mask.sum() == 255 * 12


@pytest.mark.parametrize("content,reason", [(b"", "empty_file"), (b"not an image at all", "not_an_image")])
def test_bad_bytes_name_the_file(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError) as err:
        read_image(path)
    assert err.value.reason == reason and str(path) in str(err.value)


def test_truncated_and_missing(tmp_path):
    data = _png_bytes((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8))
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as err:
        read_image(tmp_path / "t.png")
    assert err.value.reason in ("truncated_image", "corrupt_image")
    with pytest.raises(ImageError) as err:
        read_image(tmp_path / "nope.png")
    assert err.value.reason == "missing_file"


def test_pixel_limit_refuses_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    with pytest.raises(ImageError) as err:
        read_image(path, max_pixels=50_000)
    assert err.value.reason == "too_large" and "300 x 200" in str(err.value)
    assert read_image(path, max_pixels=None).shape == (200, 300, 3)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(tmp_path / "o.jpg", exif=exif)
    assert read_image(tmp_path / "o.jpg").shape == (40, 20, 3)
    assert read_image(tmp_path / "o.jpg", exif=False).shape == (20, 40, 3)


def test_output_path_checked_and_written_atomically(tmp_path):
    with pytest.raises(ValueError, match="unknown image extension"):
        check_output_path(tmp_path / "out.xyz")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_output_path(tmp_path / "file" / "out.png")
    out = write_image(tmp_path / "a" / "out.png", np.zeros((4, 5, 3), np.uint8))
    assert read_image(out).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="exists"):
        write_image(out, np.zeros((4, 5, 3), np.uint8), overwrite=False)
    assert sorted(os.listdir(out.parent)) == ["out.png"]  # no temporaries left


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    target = atomic_write(tmp_path / "state.json", '{"ok": 1}')
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"half')
            raise RuntimeError("killed mid-write")
    assert target.read_text() == '{"ok": 1}'
    assert os.listdir(tmp_path) == ["state.json"]


def test_atomic_dir_replaces_whole_folder(tmp_path):
    dest = tmp_path / "model"
    with atomic_dir(dest) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("interrupted")
    assert sorted(os.listdir(dest)) == ["a.txt"]
    with atomic_dir(dest) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(os.listdir(dest)) == ["c.txt"] and sorted(os.listdir(tmp_path)) == ["model"]
