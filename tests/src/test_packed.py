"""Packed (uint8) samples unpack to the float samples of the float path, value for value."""

import numpy as np
import pytest
import torch

from src.collage import build_collage
from src.conditioning import prepare_reference, prepare_target
from src.packed import is_packed, unpack_batch


def _scene(seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (180, 260, 3), dtype=np.uint8)
    mask = np.zeros((180, 260), np.uint8)
    mask[40:120, 90:200] = 1
    return image, mask


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_packed_pair_unpacks_to_the_float_pair(seed):
    image, mask = _scene(seed)
    batches = {}
    for packed in (False, True):
        rng = np.random.default_rng(seed)  # same draws for both
        ref = prepare_reference(image, mask, rng=rng, size=32, packed=packed)
        sample = prepare_target(image, mask, ref, rng=rng, size=48, packed=packed).sample
        batches[packed] = {"reference": torch.from_numpy(ref.image)[None], "box": torch.from_numpy(sample["box"])[None],
                           **{k: torch.from_numpy(sample[k])[None] for k in ("target", "collage", "object_mask")}}
    assert is_packed(batches[True]) and not is_packed(batches[False])
    assert all(batches[True][k].dtype == torch.uint8 for k in ("reference", "target", "collage", "object_mask"))
    unpacked = unpack_batch(batches[True])
    for key, want in batches[False].items():
        assert unpacked[key].dtype == want.dtype and unpacked[key].shape == want.shape, key
        torch.testing.assert_close(unpacked[key], want, rtol=0, atol=1e-6, msg=key)
    assert unpack_batch(batches[False]) is batches[False]  # float batches pass through


def test_packed_collage_needs_a_byte_sized_padding_value():
    crop = np.zeros((16, 16, 3), np.uint8)
    hint = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="pad_value"):
        build_collage(crop, (2, 2, 10, 10), hint, valid=(0, 4, 16, 12), pad_value=0.5, packed=True)
    out = build_collage(crop, (2, 2, 10, 10), hint, valid=(0, 4, 16, 12), pad_value=-1.0, packed=True)
    assert out.dtype == np.uint8 and set(np.unique(out[3]).tolist()) == {0, 1, 2}
