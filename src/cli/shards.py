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
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"expected a positive WIDTHxHEIGHT, got {text!r}")
    return w, h


def _whole(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {minimum} or more, got {value}")
        return value

    parse.__name__ = "whole number"  # argparse names the type in its messages
    return parse


_positive, _count = _whole(1), _whole(0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=SOURCES, help="which reader")
    parser.add_argument("path", nargs="?", help="the data set root (vos, video, sa1b) or the annotation JSON (coco)")
    parser.add_argument("--out", required=True, help="output folder, or a URL/pipe: template with {name}")
    parser.add_argument("--state-dir", help="local folder recording finished shards (default OUT/.parts; required for remote OUT)")
    parser.add_argument("--name", help="source name stored in each sample and used for mixing weights (default: the source type)")
    parser.add_argument("--workers", type=_positive, default=min(4, os.cpu_count() or 1), help="parallel packing processes")
    parser.add_argument("--items-per-shard", type=_positive, help="videos or images per shard (default 16 for video sources, 256 for images)")
    parser.add_argument("--max-side", type=_positive, help="downscale frames whose longer side exceeds this (default: keep)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start this source over: delete its shards and records in OUT first (needed when the input or settings changed)")
    parser.add_argument("--allow-empty", action="store_true", help="an empty source or a pack with 0 samples is not an error")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = parser.add_argument_group("object filters (the reference's rules)")
    g.add_argument("--min-area", type=float, default=0.01, help="minimum mask area as a share of the frame")
    g.add_argument("--max-area", type=float, default=0.64, help="maximum mask area as a share of the frame")
    g.add_argument("--min-connectivity", type=float, default=0.9, help="minimum share of the mask in its largest part")
    g.add_argument("--min-box-side", type=float, default=0.1, help="minimum object box width and height as a share of the frame's")
    g.add_argument("--frames-per-track", type=_positive, default=8, help="frames kept per video object (spread over the track)")
    g.add_argument("--min-frames", type=_positive, default=2, help="tracks with fewer passing frames are rejected")
    g.add_argument("--max-objects", type=_positive, default=4, help="objects kept per still image (largest first)")
    g = parser.add_argument_group("vos / video")
    g.add_argument("--kind", choices=("video", "multiview"), default="video", help="pair kind of frame folders / videos")
    g.add_argument("--images-dir", default="JPEGImages", help="vos: frame folder under ROOT (DAVIS: JPEGImages/480p)")
    g.add_argument("--masks-dir", help="vos: mask folder under ROOT (default Annotations; DAVIS: Annotations/480p); "
                                       "video: a folder holding the masks at the videos' relative paths (default: beside each video)")
    g.add_argument("--masks", choices=("sav", "png"), default="sav", help="video: SA-V JSON masklets or a PNG folder per video")
    g.add_argument("--masklets", default="manual", help="video/sav: which masklet files, comma-separated (manual,auto)")
    g.add_argument("--frame-stride", type=_positive, default=4, help="video/sav: video frames per annotated frame (SA-V: 4)")
    g = parser.add_argument_group("coco")
    g.add_argument("--image-root", help="coco: folder the JSON's file names are relative to")
    g = parser.add_argument_group("synthetic")
    g.add_argument("--seed", type=int, default=0, help="synthetic: seed (a different seed gives a disjoint set)")
    g.add_argument("--videos", type=_count, default=240, help="synthetic: number of clips")
    g.add_argument("--images", type=_count, default=240, help="synthetic: number of still images")
    g.add_argument("--frame-size", type=_size, default=(384, 216), help="synthetic: WIDTHxHEIGHT of clips and stills")
    g.add_argument("--frames", type=_positive, default=24, help="synthetic: frames per clip")


def _readers(args: argparse.Namespace) -> list[tuple[object, int]]:
    """(reader, items per shard) for the chosen source; synthetic writes its raw files first."""
    from pathlib import Path

    from datamodules.packing.filters import MaskRules
    from datamodules.packing.sources.images import CocoReader, SA1BReader
    from datamodules.packing.sources.video import VideoReader
    from datamodules.packing.sources.vos import VOSReader
    from datamodules.packing.stats import InputError

    try:
        rules = MaskRules(args.min_area, args.max_area, args.min_connectivity, args.min_box_side)
    except ValueError as e:
        raise InputError(str(e)) from None
    track = dict(frames_per_track=args.frames_per_track, min_frames=args.min_frames, rules=rules)
    per = args.items_per_shard
    if args.source != "synthetic" and not args.path:
        raise InputError(f"give the data set path: anydoor shards {args.source} PATH --out OUT")
    if args.source == "coco" and not args.image_root:
        raise InputError("coco needs --image-root, the folder of the JSON's images")
    if args.image_root and args.source != "coco" or args.masks_dir and args.source not in ("vos", "video"):
        raise InputError(f"{'--image-root' if args.image_root else '--masks-dir'} does not apply to {args.source}")
    if args.source == "vos":
        reader = VOSReader(args.path, name=args.name or "vos", kind=args.kind, images_dir=args.images_dir,
                           masks_dir=args.masks_dir or "Annotations", **track)
        return [(reader, per or 16)]
    if args.source == "video":
        reader = VideoReader(args.path, name=args.name or "video", kind=args.kind, masks=args.masks, masks_dir=args.masks_dir,
                             masklets=tuple(args.masklets.split(",")), frame_stride=args.frame_stride, **track)
        return [(reader, per or 16)]
    if args.source == "coco":
        return [(CocoReader(args.path, args.image_root, name=args.name or "coco", max_objects=args.max_objects, rules=rules), per or 256)]
    if args.source == "sa1b":
        return [(SA1BReader(args.path, name=args.name or "sa1b", max_objects=args.max_objects, rules=rules), per or 256)]

    from datamodules.packing.synthetic import VIDEO_STRIDE, SyntheticConfig, generate

    if args.out.startswith("pipe:") or "://" in args.out:
        raise InputError("synthetic: --out must be a local folder (the raw clips are written under OUT/raw)")
    if args.videos + args.images == 0:
        raise InputError("synthetic: --videos and --images are both 0")
    w, h = args.frame_size
    cfg = SyntheticConfig(width=w, height=h, frames=args.frames)
    vdir, idir = generate(Path(args.out) / "raw", seed=args.seed, videos=args.videos, images=args.images, cfg=cfg,
                          workers=args.workers, progress=not args.no_progress, overwrite=args.overwrite)
    name = args.name or "synthetic"
    readers = [(VideoReader(str(vdir), name=f"{name}_video", masks="sav", frame_stride=VIDEO_STRIDE, **track), per or 16),
               (SA1BReader(str(idir), name=f"{name}_image", max_objects=args.max_objects, rules=rules), per or 64)]
    return [r for r, n in zip(readers, (args.videos, args.images)) if n > 0]


def _pack(args: argparse.Namespace) -> tuple[dict, list[str]]:
    """Pack every reader of the command; returns the manifest and the sources that gave no sample."""
    from datamodules.packing.packer import pack

    manifest, empty = {}, []
    for reader, per in _readers(args):
        manifest = pack(reader, args.out, items_per_shard=per, workers=args.workers, max_side=args.max_side,
                        state_dir=args.state_dir, progress=not args.no_progress, overwrite=args.overwrite,
                        allow_empty=args.allow_empty)
        if manifest["sources"].get(reader.name, {}).get("samples", 0) == 0:
            empty.append(reader.name)
    return manifest, empty


def run(args: argparse.Namespace) -> int:
    import logging
    import sys
    import time
    from concurrent.futures.process import BrokenProcessPool
    from pathlib import Path

    from datamodules.packing.packer import PackInterrupted
    from datamodules.packing.state import MANIFEST, REPORT, Destination, summary
    from datamodules.packing.stats import InputError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    try:
        manifest, empty = _pack(args)
        dest = Destination.parse(args.out, args.state_dir)
        where = dest.folder if dest.folder is not None else dest.state
        if dest.template is not None:  # remote: upload the manifest and the report next to the shards
            import webdataset as wds

            for name in (MANIFEST, REPORT):
                with wds.gopen(dest.url(name), "wb") as f:
                    f.write((where / name).read_bytes())
    except InputError as e:
        raise SystemExit(f"anydoor shards: {e}") from None
    except PackInterrupted as e:
        print(f"anydoor shards: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # outside the packing loop (reading the source, generating synthetic files, the manifest)
        print("anydoor shards: interrupted; what was finished is kept: run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a folder without write permission: finished shards are kept
        raise SystemExit(f"anydoor shards: {e}; finished shards are kept: fix it and run the same command again") from None
    except BrokenProcessPool:
        raise SystemExit("anydoor shards: a packing worker died (killed, or out of memory?); finished shards are kept: run the "
                         "same command again, with fewer --workers if memory is short") from None
    print(f"{manifest['total_samples']} samples in {len(manifest['shards'])} shards -> {args.out} ({time.perf_counter() - start:.1f} s)")
    for source, s in manifest["sources"].items():
        print(f"  {source}: {s['samples']} samples, {len(s['shards'])} shards")
    for line in summary(manifest, Path(where) / REPORT):
        print(line)
    if empty and not args.allow_empty:
        raise SystemExit(f"anydoor shards: {', '.join(empty)}: 0 samples packed, every item was rejected (see {Path(where) / REPORT}); "
                         "--allow-empty accepts that")
    return 0
