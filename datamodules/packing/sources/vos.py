"""Frame folders in the VOS layout (YouTube-VOS, DAVIS, MOSE; MVImgNet-style folders as ``multiview``).

    <root>/JPEGImages/<video>/<frame>.jpg
    <root>/Annotations/<video>/<frame>.png   palette PNG, pixel value = object id (0 background, 255 void)
    <root>/meta.json                          optional YouTube-VOS meta: {"videos": {v: {"objects": {id: ...}}}}
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.packing.filters import MaskRules
from datamodules.packing.media import check_mask_size, read_image, read_label_mask
from datamodules.components.shard_format import ObjectSample
from datamodules.packing.sources.common import spread, valid_frames
from datamodules.packing.stats import BadInput, PackStats

IMAGE_EXT = (".jpg", ".jpeg", ".png")
VOID_ID = 255


@dataclass
class VOSReader:
    root: str
    name: str = "vos"
    kind: str = "video"
    images_dir: str = "JPEGImages"
    masks_dir: str = "Annotations"
    frames_per_track: int = 8
    min_frames: int = 2
    rules: MaskRules = field(default_factory=MaskRules)

    def items(self) -> list[str]:
        images = Path(self.root) / self.images_dir
        if not images.is_dir():
            raise FileNotFoundError(f"{images}: no such folder (expected the VOS layout {self.images_dir}/<video>/<frame>.jpg)")
        return sorted(p.name for p in images.iterdir() if p.is_dir())

    def _meta_objects(self, video: str) -> list[int] | None:
        meta = Path(self.root) / "meta.json"
        if not meta.is_file():
            return None
        if not hasattr(self, "_meta"):
            self._meta = json.loads(meta.read_text()).get("videos", {})
        objects = self._meta.get(video, {}).get("objects")
        return sorted(int(k) for k in objects) if objects else None

    def read(self, video: str, stats: PackStats) -> Iterator[ObjectSample]:
        frame_dir = Path(self.root) / self.images_dir / video
        mask_dir = Path(self.root) / self.masks_dir / video
        frames = {p.stem: p for p in sorted(frame_dir.iterdir()) if p.suffix.lower() in IMAGE_EXT}
        mask_files = {p.stem: p for p in sorted(mask_dir.glob("*.png"))} if mask_dir.is_dir() else {}
        for stem in sorted(set(frames) - set(mask_files)):
            stats.bad(BadInput(frames[stem], "frame_without_mask"))
        for stem in sorted(set(mask_files) - set(frames)):
            stats.bad(BadInput(mask_files[stem], "mask_without_frame"))
        stems = sorted(set(frames) & set(mask_files))

        labels: dict[int, np.ndarray] = {}  # frame position -> id mask
        for pos, stem in enumerate(stems):
            try:
                with Image.open(frames[stem]) as im:
                    size = im.size
            except OSError as e:
                stats.bad(BadInput(frames[stem], "corrupt_image", str(e)[:120]))
                continue
            try:
                label = read_label_mask(mask_files[stem])
                check_mask_size(label, (size[1], size[0]), str(mask_files[stem]))
            except BadInput as e:
                stats.bad(e)
                continue
            labels[pos] = label
        ids = self._meta_objects(video)
        if ids is None:
            present = np.unique(np.concatenate([np.unique(m) for m in labels.values()])) if labels else []
            ids = [int(i) for i in present if i not in (0, VOID_ID)]

        decoded: dict[int, np.ndarray | None] = {}
        for obj in ids:
            def get(pos: int, obj: int = obj) -> np.ndarray:
                return labels[pos] == obj

            keep = valid_frames(sorted(labels), get, self.rules, stats)
            chosen, images = [], []
            for pos in spread(keep, self.frames_per_track):
                if pos not in decoded:  # each frame decoded (and a bad one reported) once per video
                    try:
                        decoded[pos] = read_image(frames[stems[pos]], stats=stats)
                    except BadInput as e:
                        stats.bad(e)
                        decoded[pos] = None
                if decoded[pos] is not None:
                    images.append(decoded[pos])
                    chosen.append(pos)
            if len(chosen) < self.min_frames:
                stats.reject("too_few_frames")
                continue
            indices = [int(stems[p]) if stems[p].isdigit() else p for p in chosen]
            yield ObjectSample(self.name, self.kind, video, obj, images, [get(p) for p in chosen], indices)
