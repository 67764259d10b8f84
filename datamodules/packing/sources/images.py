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
from datamodules.packing.sources.common import image_objects, path_field, visible
from datamodules.packing.stats import BadInput, InputError, PackStats


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


def read_coco(path: Path) -> tuple[list[dict], list[dict]]:
    """``(images, annotations)`` of a COCO-format JSON, checked for the fields the reader needs; any
    problem with the file as a whole is one ``InputError`` line naming it and the offending entry."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a text JSON file ({e.reason})") from None
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: the top level is a {type(data).__name__}; a COCO file is an object with \"images\" and \"annotations\"")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key, []), list):
            raise InputError(f"{path}: \"{key}\" is a {type(data[key]).__name__}, expected a list")
    images, anns = data.get("images", []), data.get("annotations", [])
    for what, entries, needed in (("images", images, ("id", "height", "width")), ("annotations", anns, ("id", "image_id"))):
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise InputError(f"{path}: {what}[{i}] is a {type(entry).__name__}, expected an object")
            missing = [k for k in needed if k not in entry]
            if what == "images" and not (entry.get("file_name") or entry.get("coco_url")):
                missing.append("file_name")
            ident = f" (id {entry['id']!r})" if "id" in entry else ""
            if missing:
                raise InputError(f"{path}: {what}[{i}]{ident} has no {', '.join(repr(k) for k in missing)}")
            wrong = [k for k in needed if not isinstance(entry[k], int) or isinstance(entry[k], bool)]
            if wrong:
                raise InputError(f"{path}: {what}[{i}]{ident}: {', '.join(repr(k) for k in wrong)} must be an integer")
    return images, anns


@dataclass
class CocoReader:
    """``annotations``: a COCO/LVIS instances JSON; ``images``: the folder its file names are relative to."""

    annotations: str = path_field()
    images: str = path_field()
    name: str = "coco"
    max_objects: int = 4
    rules: MaskRules = field(default_factory=MaskRules)

    def describe(self) -> str:
        return f"images or annotations in {self.annotations}"

    def items(self) -> list[dict]:
        """One item per image (its annotations inside), then one per unknown ``image_id`` with its annotations."""
        images, anns = read_coco(Path(self.annotations))
        if not Path(self.images).is_dir():
            raise InputError(f"{self.images}: no such folder (--image-root, the folder of {Path(self.annotations).name}'s images)")
        by_image = defaultdict(list)
        for a in anns:
            by_image[a["image_id"]].append({k: a[k] for k in ("id", "segmentation", "iscrowd") if k in a})
        items = []
        for im in sorted(images, key=lambda i: i["id"]):
            file_name = im.get("file_name") or Path(im["coco_url"]).name  # LVIS has coco_url only
            items.append({"id": im["id"], "file": file_name, "h": im["height"], "w": im["width"], "anns": by_image.pop(im["id"], [])})
        for image_id in sorted(by_image):  # annotations of images the JSON does not have
            items.append({"id": image_id, "unknown": True, "anns": [{"id": a["id"]} for a in by_image[image_id]]})
        return items

    @property
    def root(self) -> str:
        return self.images

    def ids(self, item: dict) -> dict:
        return {"image": item["id"]}

    def inputs(self, item: dict) -> list[Path]:
        return [] if item.get("unknown") else [Path(self.images) / item["file"]]

    def read(self, item: dict, stats: PackStats) -> Iterator[ObjectSample]:
        if item.get("unknown"):
            for a in item["anns"]:
                stats.reject("unknown_image_id", image=item["id"], annotation=a["id"], file=self.annotations)
            return
        path = Path(self.images) / item["file"]
        try:
            image = read_image(path, stats=stats)
        except BadInput as e:
            stats.bad(e, image=item["id"])
            return
        masks = []
        for a in item["anns"]:
            if a.get("iscrowd"):
                stats.reject("crowd", image=item["id"], annotation=a["id"], file=path)
                continue
            try:
                mask = segmentation_to_mask(a.get("segmentation"), item["h"], item["w"], self.annotations)
                check_mask_size(mask, image.shape[:2], f"{path} vs {self.annotations}")
            except BadInput as e:
                stats.bad(e, image=item["id"], annotation=a["id"])
                continue
            masks.append((a["id"], mask))
        yield from image_objects(self.name, str(item["id"]), image, masks, self.rules, self.max_objects, stats, file=path,
                                 image_id=item["id"])


@dataclass
class SA1BReader:
    """SA-1B: ``<root>/**/sa_N.jpg`` next to ``sa_N.json`` = {"image": {...}, "annotations": [{"id", "segmentation": RLE}]}."""

    root: str = path_field()
    name: str = "sa1b"
    max_objects: int = 4
    rules: MaskRules = field(default_factory=MaskRules)

    def describe(self) -> str:
        return f"annotation JSON files under {self.root}"

    def items(self) -> list[str]:
        root = Path(self.root)
        if not root.is_dir():
            raise InputError(f"{root}: no such folder")
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.json") if visible(p))

    def ids(self, item: str) -> dict:
        return {"image": Path(item).with_suffix("").as_posix()}

    def inputs(self, item: str) -> list[Path]:
        ann = Path(self.root) / item
        return [ann, ann.with_suffix(".jpg")]  # the JSON may name another image file: its name is in the JSON

    def read(self, item: str, stats: PackStats) -> Iterator[ObjectSample]:
        ann_path = Path(self.root) / item
        image_id = Path(item).with_suffix("").as_posix()
        try:
            if ann_path.stat().st_size == 0:
                raise BadInput(ann_path, "empty_file")
            data = json.loads(ann_path.read_text())
            info, anns = data["image"], data["annotations"]
            path = ann_path.with_name(info.get("file_name") or ann_path.with_suffix(".jpg").name)
        except BadInput as e:
            stats.bad(e, image=image_id)
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            stats.reject("bad_annotation", image=image_id, file=ann_path, detail=f"{type(e).__name__}: {e}"[:120])
            return
        try:
            image = read_image(path, stats=stats)
        except BadInput as e:
            stats.bad(e, image=image_id)
            return
        h, w = image.shape[:2]
        masks = []
        for i, a in enumerate(anns):
            ann_id = a.get("id", i) if isinstance(a, dict) else i
            try:
                masks.append((ann_id, segmentation_to_mask(a["segmentation"], h, w, str(ann_path))))
            except BadInput as e:
                stats.bad(e, image=image_id, annotation=ann_id)
            except (KeyError, TypeError) as e:
                stats.reject("bad_annotation", image=image_id, annotation=ann_id, file=ann_path, detail=f"{type(e).__name__}: {e}"[:120])
        yield from image_objects(self.name, image_id, image, masks, self.rules, self.max_objects, stats, file=path)
