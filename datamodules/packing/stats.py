"""What a pack kept and rejected, item by item, and the closed set of reasons it may give.

Every rejection is one *report item*: ``{"reason", "source", <identifiers>, "file", "detail"}`` with
the identifiers that locate it (``video``, ``image``, ``object``, ``annotation``, ``frame``), so a
user can find each dropped video, track, frame, image or annotation in their data. ``REASONS`` is
the only list of reasons: ``reject`` refuses any other, and docs/data.md's table is tested against
it, so the documentation cannot drift from what the tool emits.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from src.image_io import REASONS as IMAGE_REASONS

# reason -> (what is rejected, meaning). The image file reasons come from src/image_io.py, the one reader.
REASONS: dict[str, tuple[str, str]] = {
    **{reason: ("file", meaning) for reason, meaning in IMAGE_REASONS.items()},
    "mask_16bit": ("file", "an id mask of more than 8 bits per pixel (id masks are 8-bit palette or grayscale PNG)"),
    "mask_rgb": ("file", "an RGB(A) id mask (id masks are 8-bit palette or grayscale PNG)"),
    "bad_annotation": ("file or annotation", "broken annotation JSON, RLE or polygon"),
    "corrupt_video": ("video", "the video cannot be opened or its frames do not decode"),
    "empty_video": ("video", "a video file or frame folder without a single frame"),
    "missing_video_dir": ("video", "listed in meta.json but has no frame folder"),
    "unlisted_video": ("video", "has a frame folder but is not in meta.json (add it there, or remove meta.json)"),
    "missing_masks": ("video", "no masklet JSON or mask folder for the video"),
    "frame_without_mask": ("frame", "a frame that has no mask file"),
    "mask_without_frame": ("frame", "a mask for a frame that does not exist (VOS; SA-V masks past the video's end)"),
    "mask_size_mismatch": ("frame or annotation", "a mask of another size than its frame or image"),
    "unknown_image_id": ("annotation", "a COCO annotation whose image_id is not among the JSON's images"),
    "crowd": ("annotation", "a COCO crowd annotation (iscrowd 1: a group, not one object)"),
    "mask_empty": ("frame or annotation", "the object's mask has no pixel"),
    "mask_too_small": ("frame or annotation", "the object's mask has fewer pixels than the minimum (2)"),
    "area_too_small": ("frame or annotation", "mask area under --min-area of the frame"),
    "area_too_large": ("frame or annotation", "mask area over --max-area of the frame"),
    "box_too_small": ("frame or annotation", "object box narrower or lower than --min-box-side of the frame"),
    "fragmented": ("frame or annotation", "largest connected part under --min-connectivity of the mask"),
    "object_absent": ("track", "an object listed in meta.json or a masklet that is in none of its frames"),
    "too_few_frames": ("track", "fewer than --min-frames usable frames (after the filters and decoding)"),
    "over_max_objects": ("annotation", "a passing object beyond --max-objects of its image (the smallest are dropped)"),
    "reader_error": ("item", "any other error while reading one item (the exception is the detail; the pack goes on)"),
}

ID_KEYS = ("video", "image", "object", "annotation", "frame")  # report item identifiers, in print order


class BadInput(ValueError):
    """One source file or annotation that cannot be used: the file, a reason of ``REASONS``, a detail."""

    def __init__(self, file: str, reason: str, detail: str = "") -> None:
        self.file, self.reason, self.detail = str(file), reason, detail
        super().__init__(f"{file}: {reason}" + (f" ({detail})" if detail else ""))


class InputError(ValueError):
    """A problem that stops the whole pack (a missing root, an unreadable COCO JSON, a state mismatch).

    Its message is the one line the user sees: it names the file and, where there is one, the fix.
    """


@dataclass
class PackStats:
    """Samples written per ``source/kind``, conversions per kind, rejections per reason and as items."""

    source: str = ""
    samples: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    converted: Counter = field(default_factory=Counter)
    report: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, reason: str, *, file: object = None, detail: str = "", **ids: object) -> None:
        """Count and list one rejected item; ``ids`` are among ``ID_KEYS`` (None values are left out)."""
        if reason not in REASONS:
            raise KeyError(f"unknown rejection reason {reason!r}: add it to REASONS and docs/data.md")
        unknown = set(ids) - set(ID_KEYS)
        if unknown:
            raise KeyError(f"unknown report identifiers {sorted(unknown)}")
        self.rejected[reason] += 1
        item: dict[str, Any] = {"reason": reason, "source": self.source}
        item.update((k, ids[k]) for k in ID_KEYS if ids.get(k) is not None)
        if file is not None:
            item["file"] = str(file)
        if detail:
            item["detail"] = detail
        self.report.append(item)

    def bad(self, error: BadInput, **ids: object) -> None:
        self.reject(error.reason, file=error.file, detail=error.detail, **ids)

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            "samples": dict(sorted(self.samples.items())),
            "rejected": dict(sorted(self.rejected.items())),
            "converted": dict(sorted(self.converted.items())),
        }

    def merge_counts(self, counts: dict[str, dict[str, int]]) -> "PackStats":
        self.samples.update(counts.get("samples", {}))
        self.rejected.update(counts.get("rejected", {}))
        self.converted.update(counts.get("converted", {}))
        return self
