"""Image instance data sets: COCO-format JSON (COCO, LVIS; polygons and RLE) and SA-1B."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from datamodules.packing.filters import MaskRules
from datamodules.packing.media import check_mask_size, read_image
from datamodules.components.shard_format import ObjectSample
from datamodules.packing.sources.common import image_objects
from datamodules.packing.stats import BadInput, PackStats


def segmentation_to_mask(seg: object, h: int, w: int, name: str) -> np.ndarray:
    """COCO polygons, uncompressed RLE or compressed RLE -> bool HxW (via pycocotools)."""
    try:
        if isinstance(seg, list):  # polygons
            polys = [p for p in seg if len(p) >= 6]
            if not polys:
                raise ValueError("no polygon with 3 or more points")
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, *seg["size"])
        elif isinstance(seg, dict):
            rle = dict(seg)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode()
        else:
            raise ValueError(f"unknown segmentation type {type(seg).__name__}")
        mask = mask_utils.decode(rle).astype(bool)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise BadInput(name, "bad_annotation", str(e)[:120]) from None
    check_mask_size(mask, (h, w), name)
    return mask


@dataclass
class CocoReader:
    """``annotations``: a COCO/LVIS instances JSON; ``images``: the folder its file names are relative to."""

    annotations: str
    images: str
    name: str = "coco"
    max_objects: int = 4
    rules: MaskRules = field(default_factory=MaskRules)

    def items(self) -> list[dict]:
        data = json.loads(Path(self.annotations).read_text())
        anns = defaultdict(list)
        for a in data.get("annotations", []):
            anns[a["image_id"]].append({k: a[k] for k in ("id", "segmentation", "iscrowd") if k in a})
        items = []
        for im in sorted(data.get("images", []), key=lambda i: i["id"]):
            file_name = im.get("file_name") or Path(im.get("coco_url", "")).name  # LVIS has coco_url only
            items.append({"id": im["id"], "file": file_name, "h": im["height"], "w": im["width"], "anns": anns.get(im["id"], [])})
        return items

    def read(self, item: dict, stats: PackStats) -> Iterator[ObjectSample]:
        path = Path(self.images) / item["file"]
        try:
            image = read_image(path, stats=stats)
        except BadInput as e:
            stats.bad(e)
            return
        masks = []
        for a in item["anns"]:
            if a.get("iscrowd"):
                stats.reject("crowd")
                continue
            try:
                mask = segmentation_to_mask(a.get("segmentation"), item["h"], item["w"], f"{self.annotations}#ann{a['id']}")
                check_mask_size(mask, image.shape[:2], f"{path} vs {self.annotations}#ann{a['id']}")
            except BadInput as e:
                stats.bad(e)
                continue
            masks.append((int(a["id"]), mask))
        yield from image_objects(self.name, str(item["id"]), image, masks, self.rules, self.max_objects, stats)


@dataclass
class SA1BReader:
    """SA-1B: ``<root>/**/sa_N.jpg`` next to ``sa_N.json`` = {"image": {...}, "annotations": [{"id", "segmentation": RLE}]}."""

    root: str
    name: str = "sa1b"
    max_objects: int = 4
    rules: MaskRules = field(default_factory=MaskRules)

    def items(self) -> list[str]:
        root = Path(self.root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder")
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.json"))

    def read(self, item: str, stats: PackStats) -> Iterator[ObjectSample]:
        ann_path = Path(self.root) / item
        try:
            data = json.loads(ann_path.read_text())
            info, anns = data["image"], data["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            stats.bad(BadInput(ann_path, "bad_annotation", str(e)[:120]))
            return
        path = ann_path.with_name(info.get("file_name") or ann_path.with_suffix(".jpg").name)
        try:
            image = read_image(path, stats=stats)
        except BadInput as e:
            stats.bad(e)
            return
        h, w = image.shape[:2]
        masks = []
        for a in anns:
            try:
                masks.append((int(a["id"]), segmentation_to_mask(a["segmentation"], h, w, f"{ann_path}#ann{a.get('id')}")))
            except BadInput as e:
                stats.bad(e)
            except (KeyError, TypeError) as e:
                stats.bad(BadInput(ann_path, "bad_annotation", str(e)[:120]))
        yield from image_objects(self.name, Path(item).with_suffix("").as_posix(), image, masks, self.rules, self.max_objects, stats)
