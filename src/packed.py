"""The training batch in bytes, as the loader ships it, and its float form, made on the device.

The loader's workers would otherwise write, copy through shared memory and collate 8.6 MB of
float32 per 512 px sample; in bytes it is 2.2 MB, and the conversion to float is one cheap
elementwise op on the accelerator (``AnyDoorModule.on_after_batch_transfer``). Packed keys
(docs/design.md has the float contract):

==============  =================  ==============================================
key             packed             float form (``unpack_batch``)
==============  =================  ==============================================
``reference``   uint8 3 x R x R    / 255 -> [0, 1]
``target``      uint8 3 x S x S    / 127.5 - 1 -> [-1, 1]
``collage``     uint8 4 x S x S    RGB / 127.5 - 1; channel 3 minus 1 -> {-1, 0, 1}
``object_mask`` uint8 1 x S x S    -> float {0, 1}
==============  =================  ==============================================

``box`` and ``kind`` are the same in both. ``unpack_batch`` leaves a batch whose ``target`` is
already floating point as it is, so float batches (tests, benchmarks, inference) pass through.
"""

from __future__ import annotations

from typing import Any

import torch

PACKED_KEYS = ("reference", "target", "collage", "object_mask")


def is_packed(batch: dict[str, Any]) -> bool:
    target = batch.get("target")
    return isinstance(target, torch.Tensor) and target.dtype == torch.uint8


def unpack_batch(batch: dict[str, Any], dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The float form of a packed batch (a new dict; other keys are passed through); float batches unchanged.

    Same values as ``src.conditioning``'s float path (x cast to float32, times float32(1/127.5),
    minus 1; reference divided by 255), so a packed and a float loader train on equal numbers.
    """
    if not is_packed(batch):
        return batch
    out = dict(batch)
    scale = torch.tensor(1 / 127.5, dtype=dtype, device=batch["target"].device)
    out["target"] = batch["target"].to(dtype).mul_(scale).sub_(1)
    collage = batch["collage"].to(dtype)
    collage[:, :3].mul_(scale).sub_(1)
    collage[:, 3:].sub_(1)
    out["collage"] = collage
    out["reference"] = batch["reference"].to(dtype).div_(255)
    out["object_mask"] = batch["object_mask"].to(dtype)
    return out
