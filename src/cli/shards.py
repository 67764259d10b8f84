"""`anydoor shards SOURCE ...`: pack a data set into WebDataset shards (see docs/data.md).

Sources: ``vos ROOT`` (JPEGImages/ + Annotations/), ``video ROOT`` (mp4 + SA-V JSON or PNG masks),
``coco ANNOTATIONS.json --image-root DIR`` (COCO/LVIS), ``sa1b ROOT``, ``synthetic`` (generated).
"""

from __future__ import annotations

import argparse
import os

SOURCES = ("vos", "video", "coco", "sa1b", "synthetic")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=SOURCES, help="which reader")
    parser.add_argument("path", nargs="?", help="the data set root (vos, video, sa1b) or the annotation JSON (coco)")
    parser.add_argument("--out", required=True, help="output folder, or a URL/pipe: template with {name}")
    parser.add_argument("--state-dir", help="local folder recording finished shards (default OUT/.parts; required for remote OUT)")
    parser.add_argument("--name", help="source name stored in each sample and used for mixing weights (default: the source type)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="parallel packing processes")
    parser.add_argument("--items-per-shard", type=int, help="videos or images per shard (default 16 for video sources, 256 for images)")
    parser.add_argument("--max-side", type=int, help="downscale frames whose longer side exceeds this (default: keep)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = parser.add_argument_group("object filters (the reference's rules)")
    g.add_argument("--min-area", type=float, default=0.01, help="minimum mask area as a share of the frame")
    g.add_argument("--max-area", type=float, default=0.64, help="maximum mask area as a share of the frame")
    g.add_argument("--min-connectivity", type=float, default=0.9, help="minimum share of the mask in its largest part")
    g.add_argument("--min-box-side", type=float, default=0.1, help="minimum object box width and height as a share of the frame's")
    g.add_argument("--frames-per-track", type=int, default=8, help="frames kept per video object (spread over the track)")
    g.add_argument("--min-frames", type=int, default=2, help="tracks with fewer passing frames are rejected")
    g.add_argument("--max-objects", type=int, default=4, help="objects kept per still image (largest first)")
    g = parser.add_argument_group("vos / video")
    g.add_argument("--kind", choices=("video", "multiview"), default="video", help="pair kind of frame folders / videos")
    g.add_argument("--images-dir", default="JPEGImages", help="vos: frame folder under ROOT (DAVIS: JPEGImages/480p)")
    g.add_argument("--masks-dir", default="Annotations", help="vos: mask folder under ROOT (DAVIS: Annotations/480p)")
    g.add_argument("--masks", choices=("sav", "png"), default="sav", help="video: SA-V JSON masklets or a PNG folder per video")
    g.add_argument("--masklets", default="manual", help="video/sav: which masklet files, comma-separated (manual,auto)")
    g.add_argument("--frame-stride", type=int, default=4, help="video/sav: video frames per annotated frame (SA-V: 4)")
    g = parser.add_argument_group("coco")
    g.add_argument("--image-root", help="coco: folder the JSON's file names are relative to")
    g = parser.add_argument_group("synthetic")
    g.add_argument("--seed", type=int, default=0, help="synthetic: seed (a different seed gives a disjoint set)")
    g.add_argument("--videos", type=int, default=240, help="synthetic: number of clips")
    g.add_argument("--images", type=int, default=240, help="synthetic: number of still images")
    g.add_argument("--frame-size", type=_size, default=(384, 216), help="synthetic: WIDTHxHEIGHT of clips and stills")
    g.add_argument("--frames", type=int, default=24, help="synthetic: frames per clip")


def _readers(args: argparse.Namespace) -> list[tuple[object, int]]:
    """(reader, items per shard) for the chosen source; synthetic writes its raw files first."""
    from pathlib import Path

    from datamodules.packing.filters import MaskRules
    from datamodules.packing.sources.images import CocoReader, SA1BReader
    from datamodules.packing.sources.video import VideoReader
    from datamodules.packing.sources.vos import VOSReader

    rules = MaskRules(args.min_area, args.max_area, args.min_connectivity, args.min_box_side)
    track = dict(frames_per_track=args.frames_per_track, min_frames=args.min_frames, rules=rules)
    per = args.items_per_shard
    if args.source != "synthetic" and not args.path:
        raise SystemExit(f"anydoor shards {args.source}: give the data set path")
    if args.source == "vos":
        reader = VOSReader(args.path, name=args.name or "vos", kind=args.kind, images_dir=args.images_dir, masks_dir=args.masks_dir, **track)
        return [(reader, per or 16)]
    if args.source == "video":
        reader = VideoReader(args.path, name=args.name or "video", kind=args.kind, masks=args.masks,
                             masklets=tuple(args.masklets.split(",")), frame_stride=args.frame_stride, **track)
        return [(reader, per or 16)]
    if args.source == "coco":
        if not args.image_root:
            raise SystemExit("anydoor shards coco: give --image-root, the folder of the JSON's images")
        return [(CocoReader(args.path, args.image_root, name=args.name or "coco", max_objects=args.max_objects, rules=rules), per or 256)]
    if args.source == "sa1b":
        return [(SA1BReader(args.path, name=args.name or "sa1b", max_objects=args.max_objects, rules=rules), per or 256)]

    from datamodules.packing.synthetic import VIDEO_STRIDE, SyntheticConfig, generate

    if args.out.startswith("pipe:") or "://" in args.out:
        raise SystemExit("anydoor shards synthetic: --out must be a local folder (the raw clips are written under OUT/raw)")
    w, h = args.frame_size
    cfg = SyntheticConfig(width=w, height=h, frames=args.frames)
    vdir, idir = generate(Path(args.out) / "raw", seed=args.seed, videos=args.videos, images=args.images, cfg=cfg,
                          workers=args.workers, progress=not args.no_progress)
    name = args.name or "synthetic"
    return [
        (VideoReader(str(vdir), name=f"{name}_video", masks="sav", frame_stride=VIDEO_STRIDE, **track), per or 16),
        (SA1BReader(str(idir), name=f"{name}_image", max_objects=args.max_objects, rules=rules), per or 64),
    ]


def run(args: argparse.Namespace) -> int:
    import json
    import logging
    import time

    from datamodules.packing.packer import MANIFEST, Destination, pack

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    try:
        readers = _readers(args)
        manifest = {}
        for reader, per in readers:
            manifest = pack(reader, args.out, items_per_shard=per, workers=args.workers, max_side=args.max_side,
                            state_dir=args.state_dir, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"anydoor shards: {e}") from None
    dest = Destination.parse(args.out, args.state_dir)
    if dest.template is not None:  # remote: upload the manifest next to the shards
        import webdataset as wds

        with wds.gopen(dest.url(MANIFEST), "wb") as f:
            f.write(json.dumps(manifest, indent=1).encode())
    print(f"{manifest['total_samples']} samples in {len(manifest['shards'])} shards -> {args.out} ({time.perf_counter() - start:.1f} s)")
    for source, s in manifest["sources"].items():
        print(f"  {source}: {s['samples']} samples, {len(s['shards'])} shards")
    if manifest["rejected"]:
        print("  rejected: " + ", ".join(f"{k} {v}" for k, v in manifest["rejected"].items()))
    if manifest["converted"]:
        print("  converted: " + ", ".join(f"{k} {v}" for k, v in manifest["converted"].items()))
    for file, reason in manifest["bad_files"][:10]:
        print(f"  bad file: {file}: {reason}")
    if len(manifest["bad_files"]) > 10:
        print(f"  ... {len(manifest['bad_files']) - 10} more bad files listed in the manifest")
    return 0
