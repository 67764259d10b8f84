import math

import pytest
import torch

from src import metrics


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 32, 40, generator=g), torch.rand(2, 3, 32, 40, generator=g)


def test_box_mask_uses_exclusive_ends_and_clips():
    m = metrics.box_mask([(1, 2, 4, 3), (38, 30, 50, 60)], 32, 40)
    assert m.shape == (2, 1, 32, 40)
    assert m[0].sum() == 3 and m[0, 0, 2, 1:4].tolist() == [1, 1, 1]
    assert m[1].sum() == 2 * 2  # clipped to the image


def test_identical_images_score_perfect(images):
    a, _ = images
    mask = metrics.box_mask([(3, 3, 20, 20)] * 2, 32, 40)
    assert torch.isinf(metrics.masked_psnr(a, a.clone(), mask)).all()
    assert torch.allclose(metrics.masked_ssim(a, a.clone(), mask), torch.ones(2))
    assert torch.allclose(metrics.masked_ssim(a, a.clone(), 1 - mask), torch.ones(2))
    assert torch.allclose(metrics.cosine_scores(a.flatten(1), a.flatten(1)), torch.ones(2))


def test_constant_error_gives_hand_computed_psnr(images):
    a, _ = images
    a = a.clamp(0.1, 0.9)
    box = [(5, 6, 15, 16)] * 2
    b = a.clone()
    b[:, :, 6:16, 5:15] += 0.1  # only inside the box: MSE there is 0.01 -> 20 dB
    assert torch.allclose(metrics.psnr_in_box(b, a, box), torch.full((2,), 20.0), atol=1e-4)
    assert torch.isinf(metrics.masked_psnr(b, a, 1 - metrics.box_mask(box, 32, 40))).all()
    # with data_range 255 the same relative error scores the same
    assert torch.allclose(metrics.psnr_in_box(b * 255, a * 255, box, data_range=255.0), torch.full((2,), 20.0), atol=1e-3)


def test_masked_out_pixels_do_not_count(images):
    a, noise = images
    mask = torch.zeros(2, 1, 32, 40)
    mask[:, :, 10:20, 10:20] = 1
    b = a.clone()
    b[:, :, 10:20, 10:20] += 0.05  # inside the mask: MSE 0.0025 -> 26.02 dB
    expected = 10 * math.log10(1 / 0.0025)
    base = metrics.masked_psnr(b, a, mask)
    assert torch.allclose(base, torch.full((2,), expected), atol=1e-3)
    c = b.clone()
    c[:, :, :5] = noise[:, :, :5]  # change only masked-out pixels
    assert torch.equal(metrics.masked_psnr(c, a, mask), base)
    # a mask given once broadcasts over the batch
    assert torch.allclose(metrics.masked_psnr(c, a, mask[0]), base)


def test_background_ssim_ignores_the_box_except_its_seam(images):
    a, noise = images
    box = [(10, 10, 30, 22)] * 2
    b = a.clone()
    b[:, :, 10:22, 10:30] = noise[:, :, 10:22, 10:30]
    outside = metrics.masked_ssim(b, a, 1 - metrics.box_mask(box, 32, 40))
    assert (outside < 1).all()  # the 11x11 window straddles the box edge
    far = torch.ones(2, 1, 32, 40)
    far[:, :, 4:28, 4:36] = 0  # pixels at least 6 px away from the box
    assert torch.allclose(metrics.masked_ssim(b, a, far), torch.ones(2), atol=1e-5)
    assert (metrics.masked_ssim(b, a, 1 - far) < outside).all()


def test_empty_mask_is_nan_and_bad_shapes_raise(images):
    a, b = images
    assert torch.isnan(metrics.masked_psnr(a, b, torch.zeros(32, 40))).all()
    with pytest.raises(ValueError, match="does not fit"):
        metrics.masked_psnr(a, b, torch.ones(1, 1, 16, 16))
    with pytest.raises(ValueError, match="one shape"):
        metrics.masked_psnr(a, b[:, :, :16], torch.ones(32, 40))


def test_cosine_scores_opposite_and_orthogonal():
    x = torch.tensor([[1.0, 0.0], [1.0, 2.0]])
    y = torch.tensor([[0.0, 3.0], [-2.0, -4.0]])
    assert torch.allclose(metrics.cosine_scores(x, y), torch.tensor([0.0, -1.0]))


def test_finite_mean_counts_perfect_and_empty():
    s = metrics.finite_mean([10.0, 20.0, float("inf"), float("nan")])
    assert s == {"mean": 15.0, "n": 2, "n_inf": 1, "n_nan": 1}
