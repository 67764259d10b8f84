"""Video files decoded with decord, plus per-frame instance masks.

Two mask layouts next to ``<root>/**/<stem>.mp4``:

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

from datamodules.packing.filters import MaskRules
from datamodules.packing.media import check_mask_size, read_label_mask
from datamodules.components.shard_format import ObjectSample
from datamodules.packing.sources.common import spread, valid_frames
from datamodules.packing.stats import BadInput, PackStats

VIDEO_EXT = (".mp4", ".mov", ".avi", ".mkv", ".webm")


def _decode_rle(rle: dict, name: str) -> np.ndarray:
    try:
        if isinstance(rle.get("counts"), list):
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        return mask_utils.decode(rle).astype(bool)
    except (KeyError, TypeError, ValueError) as e:
        raise BadInput(name, "bad_annotation", f"RLE: {e}") from None


@dataclass
class VideoReader:
    root: str
    name: str = "video"
    kind: str = "video"
    masks: str = "sav"  # "sav" | "png"
    masklets: tuple[str, ...] = ("manual",)
    frame_stride: int = 4
    frames_per_track: int = 8
    min_frames: int = 2
    rules: MaskRules = field(default_factory=MaskRules)

    def items(self) -> list[str]:
        root = Path(self.root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder")
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXT)

    # -- masks per object: {object id: {frame index: mask getter}} --
    def _sav_masks(self, video: Path, stats: PackStats) -> dict[int, dict[int, object]]:
        tracks: dict[int, dict[int, object]] = {}
        found = False
        for which in self.masklets:
            path = video.with_name(f"{video.stem}_{which}.json")
            if not path.is_file():
                continue
            found = True
            try:
                data = json.loads(path.read_text())
                masklet, ids = data["masklet"], data.get("masklet_id") or list(range(len(data["masklet"][0]) if data["masklet"] else 0))
            except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
                stats.bad(BadInput(path, "bad_annotation", str(e)[:120]))
                continue
            offset = 1000 * self.masklets.index(which)  # manual and auto ids never collide
            for k, per_frame in enumerate(masklet):
                for j, rle in enumerate(per_frame):
                    if rle is None:
                        continue
                    tracks.setdefault(offset + int(ids[j]), {})[k * self.frame_stride] = (rle, str(path))
        if not found:
            stats.bad(BadInput(video, "missing_masks", f"no {video.stem}_{{{','.join(self.masklets)}}}.json"))
        return tracks

    def _png_masks(self, video: Path, stats: PackStats) -> dict[int, dict[int, object]]:
        folder = video.with_suffix("")
        if not folder.is_dir():
            stats.bad(BadInput(video, "missing_masks", f"no mask folder {folder}"))
            return {}
        tracks: dict[int, dict[int, object]] = {}
        for png in sorted(folder.glob("*.png")):
            if not png.stem.isdigit():
                stats.bad(BadInput(png, "bad_annotation", "mask file name is not a frame index"))
                continue
            try:
                label = read_label_mask(png)
            except BadInput as e:
                stats.bad(e)
                continue
            for obj in np.unique(label):
                if obj not in (0, 255):
                    tracks.setdefault(int(obj), {})[int(png.stem)] = (label, int(obj), str(png))
        return tracks

    def _mask(self, entry: object, hw: tuple[int, int] | None) -> np.ndarray:
        if len(entry) == 2:  # (rle, json path)
            mask = _decode_rle(*entry)
            name = entry[1]
        else:  # (label, id, png path)
            mask, name = entry[0] == entry[1], entry[2]
        if hw is not None:
            check_mask_size(mask, hw, name)
        return mask

    def read(self, item: str, stats: PackStats) -> Iterator[ObjectSample]:
        import decord

        path = Path(self.root) / item
        try:
            vr = decord.VideoReader(str(path), num_threads=1)
            n_frames = len(vr)
            hw = tuple(vr[0].shape[:2])
        except (decord.DECORDError, RuntimeError, IndexError) as e:
            stats.bad(BadInput(path, "corrupt_video", str(e).splitlines()[0][:120] if str(e) else type(e).__name__))
            return
        tracks = self._sav_masks(path, stats) if self.masks == "sav" else self._png_masks(path, stats)
        sample_id = str(Path(item).with_suffix(""))
        for obj, per_frame in sorted(tracks.items()):
            beyond = [f for f in per_frame if f >= n_frames]
            for f in beyond:
                stats.bad(BadInput(path, "mask_without_frame", f"frame {f} of {n_frames}"))
                del per_frame[f]
            cache: dict[int, np.ndarray] = {}

            def get(f: int) -> np.ndarray | None:
                if f not in cache:
                    cache[f] = self._mask(per_frame[f], hw)
                return cache[f]

            try:
                keep = valid_frames(sorted(per_frame), get, self.rules, stats)
            except BadInput as e:
                stats.bad(e)
                continue
            chosen = spread(keep, self.frames_per_track)
            if len(chosen) < self.min_frames:
                stats.reject("too_few_frames")
                continue
            try:
                frames = vr.get_batch(chosen).asnumpy()
            except (decord.DECORDError, RuntimeError) as e:
                stats.bad(BadInput(path, "corrupt_video", str(e).splitlines()[0][:120] if str(e) else type(e).__name__))
                return
            yield ObjectSample(self.name, self.kind, sample_id, obj, list(frames), [get(f) for f in chosen], chosen)
