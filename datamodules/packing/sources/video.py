"""Video files decoded with decord, plus per-frame instance masks.

Two mask layouts for ``<root>/<rel>/<stem>.mp4``, found beside the video or, with ``masks_dir``, at
the same relative place under that folder (``<masks_dir>/<rel>/...``):

* ``sav`` (SA-V, the SAM 2 video data): ``<stem>_manual.json`` (and/or ``_auto.json``) holding
  ``masklet[k][j]`` = COCO RLE of object ``masklet_id[j]`` in annotated frame ``k``; annotated frames
  are every ``frame_stride``-th video frame (SA-V: 24 fps video annotated at 6 fps, stride 4).
* ``png``: a folder ``<stem>/`` of 8-bit id masks named by frame index (``00012.png`` = frame 12).

Only the frames a track keeps are decoded (``VideoReader.get_batch``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from datamodules.components.shard_format import ObjectSample
from datamodules.packing.filters import MaskRules
from datamodules.packing.media import check_mask_size, read_label_mask
from datamodules.packing.sources.common import path_field, spread, track_frames, track_rejected, visible
from datamodules.packing.stats import BadInput, InputError, PackStats

VIDEO_EXT = (".mp4", ".mov", ".avi", ".mkv", ".webm")


def _decode_rle(rle: dict, name: str) -> np.ndarray:
    try:
        if isinstance(rle.get("counts"), list):
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        return mask_utils.decode(rle).astype(bool)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise BadInput(name, "bad_annotation", f"RLE: {e}") from None


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0][:120] if str(error) else type(error).__name__


@dataclass
class VideoReader:
    root: str = path_field()
    name: str = "video"
    kind: str = "video"
    masks: str = "sav"  # "sav" | "png"
    masks_dir: str | None = path_field(None)
    masklets: tuple[str, ...] = ("manual",)
    frame_stride: int = 4
    frames_per_track: int = 8
    min_frames: int = 2
    rules: MaskRules = field(default_factory=MaskRules)

    def describe(self) -> str:
        return f"video files ({', '.join(VIDEO_EXT)}) under {self.root}"

    def items(self) -> list[str]:
        root = Path(self.root)
        if not root.is_dir():
            raise InputError(f"{root}: no such folder")
        if self.masks_dir is not None and not (root / self.masks_dir).is_dir():
            raise InputError(f"{root / self.masks_dir}: no such folder (--masks-dir)")
        return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                      if p.suffix.lower() in VIDEO_EXT and all(visible(q) for q in p.relative_to(root).parents) and visible(p))

    def ids(self, item: str) -> dict:
        return {"video": str(Path(item).with_suffix(""))}

    def _mask_base(self, item: str) -> Path:
        """Where ``item``'s masks are named from: the video path itself, or its mirror under masks_dir."""
        return Path(self.root) / (Path(self.masks_dir) / item if self.masks_dir is not None else item)

    def _masklet_files(self, item: str) -> list[Path]:
        base = self._mask_base(item)
        return [base.with_name(f"{base.stem}_{which}.json") for which in self.masklets]

    def inputs(self, item: str) -> list[Path]:
        if self.masks == "sav":
            masks = self._masklet_files(item)
        else:
            folder = self._mask_base(item).with_suffix("")
            masks = sorted(folder.iterdir()) if folder.is_dir() else []
        return [Path(self.root) / item, *masks]

    # -- masks per object: {object id: {frame index: mask entry}} --
    def _sav_masks(self, item: str, video: str, stats: PackStats) -> dict[int, dict[int, tuple]]:
        tracks: dict[int, dict[int, tuple]] = {}
        files = [p for p in self._masklet_files(item) if p.is_file()]
        if not files:
            names = ", ".join(str(p) for p in self._masklet_files(item))
            stats.reject("missing_masks", video=video, file=Path(self.root) / item, detail=f"no {names}")
        for path in files:
            offset = 1000 * self._masklet_files(item).index(path)  # manual and auto ids never collide
            try:
                if path.stat().st_size == 0:
                    raise BadInput(path, "empty_file")
                data = json.loads(path.read_text())
                masklet = data["masklet"]
                ids = [offset + int(i) for i in data.get("masklet_id") or range(len(masklet[0]) if masklet else 0)]
                found = {obj: {} for obj in ids}  # every listed object: one absent everywhere is reported
                for k, per_frame in enumerate(masklet):
                    for j, rle in enumerate(per_frame):
                        if rle is not None:
                            found[ids[j]][k * self.frame_stride] = (rle, str(path))
            except BadInput as e:
                stats.bad(e, video=video)
                continue
            except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
                stats.reject("bad_annotation", video=video, file=path, detail=f"{type(e).__name__}: {e}"[:120])
                continue
            for obj, frames in found.items():
                tracks.setdefault(obj, {}).update(frames)
        return tracks

    def _png_masks(self, item: str, video: str, stats: PackStats) -> dict[int, dict[int, tuple]]:
        folder = self._mask_base(item).with_suffix("")
        if not folder.is_dir():
            stats.reject("missing_masks", video=video, file=Path(self.root) / item, detail=f"no mask folder {folder}")
            return {}
        tracks: dict[int, dict[int, tuple]] = {}
        for png in sorted(p for p in folder.glob("*.png") if visible(p)):
            if not png.stem.isdigit():
                stats.reject("bad_annotation", video=video, file=png, detail="mask file name is not a frame index")
                continue
            try:
                label = read_label_mask(png)
            except BadInput as e:
                stats.bad(e, video=video, frame=int(png.stem))
                continue
            for obj in np.unique(label):
                if obj not in (0, 255):
                    tracks.setdefault(int(obj), {})[int(png.stem)] = (label, int(obj), str(png))
        return tracks

    @staticmethod
    def _mask(entry: tuple, hw: tuple[int, int]) -> np.ndarray:
        if len(entry) == 2:  # (rle, json path)
            mask, name = _decode_rle(*entry), entry[1]
        else:  # (label, id, png path)
            mask, name = entry[0] == entry[1], entry[2]
        check_mask_size(mask, hw, name)
        return mask

    def read(self, item: str, stats: PackStats) -> Iterator[ObjectSample]:
        import decord

        path = Path(self.root) / item
        video = str(Path(item).with_suffix(""))
        if path.stat().st_size == 0:
            stats.reject("empty_file", video=video, file=path)
            return
        try:
            vr = decord.VideoReader(str(path), num_threads=1)
            n_frames = len(vr)
            if n_frames == 0:
                stats.reject("empty_video", video=video, file=path)
                return
            hw = tuple(vr[0].shape[:2])
        except (decord.DECORDError, RuntimeError, IndexError) as e:
            stats.reject("corrupt_video", video=video, file=path, detail=_first_line(e))
            return
        tracks = self._sav_masks(item, video, stats) if self.masks == "sav" else self._png_masks(item, video, stats)
        for obj, per_frame in sorted(tracks.items()):
            for f in sorted(f for f in per_frame if f >= n_frames):
                stats.reject("mask_without_frame", video=video, object=obj, frame=f, file=per_frame[f][-1],
                             detail=f"the video has {n_frames} frames")
                del per_frame[f]
            masks: dict[int, np.ndarray] = {}
            try:
                for f in sorted(per_frame):
                    masks[f] = self._mask(per_frame[f], hw)
            except BadInput as e:  # a mask of another size: the annotation is not this video's; drop the track
                stats.bad(e, video=video, object=obj, frame=f)
                continue

            def where(f: int, obj: int = obj) -> dict:
                return {"video": video, "object": obj, "frame": f, "file": per_frame[f][-1]}

            keep, present = track_frames(sorted(masks), masks.get, self.rules, stats, where)
            chosen = spread(keep, self.frames_per_track)
            if track_rejected(stats, present, len(chosen), self.min_frames, video=video, object=obj):
                continue
            try:
                frames = vr.get_batch(chosen).asnumpy()
            except (decord.DECORDError, RuntimeError) as e:
                stats.reject("corrupt_video", video=video, file=path, detail=_first_line(e))
                return
            yield ObjectSample(self.name, self.kind, video, obj, list(frames), [masks[f] for f in chosen], chosen)
