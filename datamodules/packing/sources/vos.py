"""Frame folders in the VOS layout (YouTube-VOS, DAVIS, MOSE; MVImgNet-style folders as ``multiview``).

    <root>/JPEGImages/<video>/<frame>.jpg
    <root>/Annotations/<video>/<frame>.png   palette PNG, pixel value = object id (0 background, 255 void)
    <root>/meta.json                          optional YouTube-VOS meta: {"videos": {v: {"objects": {id: ...}}}}

With a ``meta.json`` the video list is its list: a listed video without a frame folder is reported
(``missing_video_dir``), and so is a frame folder it does not list (``unlisted_video``: in YouTube-VOS
that is usually a video of another split, which must not be trained on silently).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datamodules.components.shard_format import ObjectSample
from datamodules.packing.filters import MaskRules
from datamodules.packing.media import check_mask_size, image_size, read_image, read_label_mask
from datamodules.packing.sources.common import path_field, spread, track_frames, track_rejected, visible
from datamodules.packing.stats import BadInput, InputError, PackStats

IMAGE_EXT = (".jpg", ".jpeg", ".png")
VOID_ID = 255


def read_meta(path: Path) -> dict[str, list[int] | None]:
    """``{video: sorted object ids, or None when meta.json names none}`` from a YouTube-VOS meta.json."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: not a readable JSON file ({e})") from None
    videos = data.get("videos") if isinstance(data, dict) else None
    if not isinstance(videos, dict):
        raise InputError(f"{path}: expected a YouTube-VOS meta.json, an object with a \"videos\" mapping")
    meta = {}
    for video, info in videos.items():
        objects = info.get("objects") if isinstance(info, dict) else None
        try:
            meta[video] = sorted(int(k) for k in objects) if objects else None
        except (TypeError, ValueError):
            raise InputError(f"{path}: video {video!r}: object ids must be integers, got {list(objects)[:5]}") from None
    return meta


@dataclass
class VOSReader:
    root: str = path_field()
    name: str = "vos"
    kind: str = "video"
    images_dir: str = path_field("JPEGImages")
    masks_dir: str = path_field("Annotations")
    frames_per_track: int = 8
    min_frames: int = 2
    rules: MaskRules = field(default_factory=MaskRules)

    def describe(self) -> str:
        return f"video folders in {Path(self.root) / self.images_dir}"

    def items(self) -> list[dict]:
        """One item per video: ``{"video"}``, plus ``"listed"`` and meta's ``"objects"`` with a meta.json."""
        images = Path(self.root) / self.images_dir
        if not images.is_dir():
            raise InputError(f"{images}: no such folder (expected the VOS layout {self.images_dir}/<video>/<frame>.jpg)")
        folders = {p.name for p in images.iterdir() if p.is_dir() and visible(p)}
        meta_path = Path(self.root) / "meta.json"
        if not meta_path.is_file():
            return [{"video": v} for v in sorted(folders)]
        meta = read_meta(meta_path)
        return [{"video": v, "listed": v in meta, "objects": meta.get(v)} for v in sorted(folders | set(meta))]

    def ids(self, item: dict) -> dict:
        return {"video": item["video"]}

    def _dirs(self, video: str) -> tuple[Path, Path]:
        return Path(self.root) / self.images_dir / video, Path(self.root) / self.masks_dir / video

    def inputs(self, item: dict) -> list[Path]:
        return [p for d in self._dirs(item["video"]) if d.is_dir() for p in sorted(d.iterdir())]

    def read(self, item: dict, stats: PackStats) -> Iterator[ObjectSample]:
        video = item["video"]
        frame_dir, mask_dir = self._dirs(video)
        if item.get("listed") is False:
            stats.reject("unlisted_video", video=video, file=frame_dir)
            return
        if not frame_dir.is_dir():
            stats.reject("missing_video_dir", video=video, file=frame_dir)
            return
        frames = {p.stem: p for p in sorted(frame_dir.iterdir()) if p.suffix.lower() in IMAGE_EXT and visible(p)}
        if not frames:
            stats.reject("empty_video", video=video, file=frame_dir, detail="no .jpg/.png frames")
            return
        if not mask_dir.is_dir():
            stats.reject("missing_masks", video=video, file=mask_dir)
            return
        mask_files = {p.stem: p for p in sorted(mask_dir.glob("*.png")) if visible(p)}
        for stem in sorted(set(frames) - set(mask_files)):
            stats.reject("frame_without_mask", video=video, frame=stem, file=frames[stem])
        for stem in sorted(set(mask_files) - set(frames)):
            stats.reject("mask_without_frame", video=video, frame=stem, file=mask_files[stem])
        stems = sorted(set(frames) & set(mask_files))

        labels: dict[int, np.ndarray] = {}  # frame position -> id mask
        for pos, stem in enumerate(stems):
            try:
                w, h = image_size(frames[stem])
                label = read_label_mask(mask_files[stem])
                check_mask_size(label, (h, w), str(mask_files[stem]))
            except BadInput as e:
                stats.bad(e, video=video, frame=stem)
                continue
            labels[pos] = label
        ids = item.get("objects")
        if ids is None:
            present = np.unique(np.concatenate([np.unique(m) for m in labels.values()])) if labels else []
            ids = [int(i) for i in present if i not in (0, VOID_ID)]

        decoded: dict[int, np.ndarray | None] = {}
        for obj in ids:
            def get(pos: int, obj: int = obj) -> np.ndarray:
                return labels[pos] == obj

            def where(pos: int, obj: int = obj) -> dict:
                return {"video": video, "object": obj, "frame": stems[pos], "file": mask_files[stems[pos]]}

            keep, present = track_frames(sorted(labels), get, self.rules, stats, where)
            if track_rejected(stats, present, len(keep), self.min_frames, video=video, object=obj):
                continue
            chosen, images = [], []
            for pos in spread(keep, self.frames_per_track):
                if pos not in decoded:  # each frame decoded (and a bad one reported) once per video
                    try:
                        decoded[pos] = read_image(frames[stems[pos]], stats=stats)
                    except BadInput as e:
                        stats.bad(e, video=video, frame=stems[pos])
                        decoded[pos] = None
                if decoded[pos] is not None:
                    images.append(decoded[pos])
                    chosen.append(pos)
            if track_rejected(stats, present, len(chosen), self.min_frames, video=video, object=obj):
                continue
            indices = [int(stems[p]) if stems[p].isdigit() else p for p in chosen]
            yield ObjectSample(self.name, self.kind, video, obj, images, [get(p) for p in chosen], indices)
