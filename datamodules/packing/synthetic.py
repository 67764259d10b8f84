"""Procedural training data: textured objects that move, scale, rotate and change lighting over
textured, panning backgrounds. Videos are written as real mp4 (OpenCV ``mp4v``) with SA-V style
masklet JSON, stills as JPEG with SA-1B style JSON, so packing exercises the decord and RLE paths.

Every object has one identity (shape family + texture + colours) kept across its frames, so a model
can learn to copy it from reference to target; each clip/image draws from ``SeedSequence([seed, i])``
so a different ``seed`` gives a disjoint held-out set.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from datamodules.packing.state import START_OVER, read_state
from datamodules.packing.stats import InputError
from datamodules.packing.workers import worker_pool
from src.files import atomic_write

SHAPES = ("ellipse", "rectangle", "triangle", "star", "ring", "cross")
TEXTURES = ("stripes", "checker", "dots", "gradient", "noise")
SPRITE = 160  # side of the canonical sprite an object is drawn in before warping
VIDEO_STRIDE = 2  # masks are written for every 2nd frame, like SA-V's every 4th


@dataclass(frozen=True)
class SyntheticConfig:
    width: int = 384
    height: int = 216
    frames: int = 24
    fps: int = 12
    max_objects: int = 2


def _noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.random((cells, max(2, cells * w // max(h, 1))), dtype=np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` saturated, well-separated RGB colours (random hues on the HSV wheel)."""
    hues = (rng.random() * 180 + np.arange(n) * 180 / n + rng.normal(0, 8, n)) % 180
    hsv = np.stack([hues, rng.uniform(150, 255, n), rng.uniform(140, 255, n)], 1).astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0].astype(np.float32)


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A muted textured scene: blended noise octaves plus a faint tile or stripe pattern."""
    base = 0.6 * _noise(rng, h, w, 3) + 0.3 * _noise(rng, h, w, 12) + 0.1 * _noise(rng, h, w, 48)
    c0, c1 = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    img = c0 + base[..., None] * (c1 - c0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(16, 48)
    if rng.random() < 0.5:
        pattern = ((xx // period + yy // period) % 2) * 2 - 1
    else:
        angle = rng.uniform(0, np.pi)
        pattern = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    img += pattern[..., None] * rng.uniform(5, 15)
    return np.clip(img, 0, 255).astype(np.float32)


def _shape_mask(rng: np.random.Generator, shape: str) -> np.ndarray:
    m = np.zeros((SPRITE, SPRITE), np.uint8)
    c, r = SPRITE // 2, SPRITE // 2 - 6
    aspect = rng.uniform(0.55, 1.0)
    if shape == "ellipse":
        cv2.ellipse(m, (c, c), (r, int(r * aspect)), 0, 0, 360, 255, -1)
    elif shape == "rectangle":
        cv2.rectangle(m, (c - r, c - int(r * aspect)), (c + r, c + int(r * aspect)), 255, -1)
    elif shape == "triangle":
        pts = np.array([[c, c - r], [c - r, c + int(r * aspect)], [c + r, c + int(r * aspect)]])
        cv2.fillPoly(m, [pts.astype(np.int32)], 255)
    elif shape == "star":
        k = int(rng.integers(5, 8))
        ang = np.arange(2 * k) * np.pi / k
        rad = np.where(np.arange(2 * k) % 2 == 0, r, r * rng.uniform(0.45, 0.6))
        pts = np.stack([c + rad * np.sin(ang), c - rad * np.cos(ang)], 1)
        cv2.fillPoly(m, [pts.astype(np.int32)], 255)
    elif shape == "ring":
        cv2.circle(m, (c, c), r, 255, -1)
        cv2.circle(m, (c, c), int(r * rng.uniform(0.35, 0.55)), 0, -1)
    else:  # cross
        t = int(r * rng.uniform(0.3, 0.45))
        cv2.rectangle(m, (c - r, c - t), (c + r, c + t), 255, -1)
        cv2.rectangle(m, (c - t, c - r), (c + t, c + r), 255, -1)
    return m


def _texture(rng: np.random.Generator, kind: str) -> np.ndarray:
    cols = _palette(rng, 3)
    yy, xx = np.mgrid[0:SPRITE, 0:SPRITE].astype(np.float32)
    if kind == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(10, 28)
        t = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0).astype(np.float32)
    elif kind == "checker":
        period = rng.uniform(14, 32)
        t = ((xx // period + yy // period) % 2).astype(np.float32)
    elif kind == "dots":
        period = rng.uniform(16, 30)
        t = (((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2 < (period / 3.2) ** 2).astype(np.float32)
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        t = (xx * np.cos(angle) + yy * np.sin(angle)) / SPRITE
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
    else:
        t = _noise(rng, SPRITE, SPRITE, 6)
    img = cols[0] + t[..., None] * (cols[1] - cols[0])
    # a rim in the third colour makes the silhouette and identity easier to see
    return img.astype(np.float32), cols[2]


@dataclass
class _Object:
    sprite: np.ndarray  # float32 SPRITE x SPRITE x 3
    mask: np.ndarray  # uint8 SPRITE x SPRITE
    start: np.ndarray
    velocity: np.ndarray
    scale: tuple[float, float]
    angle: tuple[float, float]

    @classmethod
    def random(cls, rng: np.random.Generator, h: int, w: int) -> "_Object":
        shape, tex = SHAPES[rng.integers(len(SHAPES))], TEXTURES[rng.integers(len(TEXTURES))]
        mask = _shape_mask(rng, shape)
        sprite, rim = _texture(rng, tex)
        edge = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((5, 5), np.uint8)) > 0
        sprite[edge] = rim
        side = rng.uniform(0.32, 0.6) * min(h, w)  # object side in frame pixels
        s0 = side / SPRITE
        return cls(
            sprite=sprite,
            mask=mask,
            start=np.array([rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h]),
            velocity=rng.normal(0, 0.012, 2) * np.array([w, h]),
            scale=(s0, s0 * rng.uniform(0.7, 1.35)),
            angle=(rng.uniform(0, 360), rng.uniform(-120, 120)),
        )

    def place(self, t: float, n: int, h: int, w: int) -> np.ndarray:
        """2x3 affine from sprite to frame at time ``t`` of ``n`` frames (bounces off the borders)."""
        pos = self.start + self.velocity * t
        for d, size in enumerate((w, h)):  # reflect the centre into [0.15, 0.85] of the frame
            lo, hi = 0.15 * size, 0.85 * size
            span = hi - lo
            p = (pos[d] - lo) % (2 * span)
            pos[d] = lo + (p if p < span else 2 * span - p)
        f = t / max(n - 1, 1)
        scale = self.scale[0] + (self.scale[1] - self.scale[0]) * f
        angle = self.angle[0] + self.angle[1] * f
        m = cv2.getRotationMatrix2D((SPRITE / 2, SPRITE / 2), angle, scale)
        m[:, 2] += pos - SPRITE / 2
        return m


def render(rng: np.random.Generator, cfg: SyntheticConfig, n_frames: int) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """``n_frames`` RGB frames and, per frame, the visible mask of each object (drawn in order)."""
    h, w = cfg.height, cfg.width
    pad = int(0.1 * max(h, w))
    bg = background(rng, h + 2 * pad, w + 2 * pad)
    pan = rng.normal(0, 0.6, 2)
    objects = [_Object.random(rng, h, w) for _ in range(int(rng.integers(1, cfg.max_objects + 1)))]
    light_amp, light_freq, light_phase = rng.uniform(0.1, 0.3), rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi)
    light_dir = rng.normal(0, 1, 2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xx / w - 0.5) * light_dir[0] + (yy / h - 0.5) * light_dir[1])[..., None]
    frames, masks = [], []
    for t in range(n_frames):
        ox = int(np.clip(pad + pan[0] * t, 0, 2 * pad))
        oy = int(np.clip(pad + pan[1] * t, 0, 2 * pad))
        img = bg[oy : oy + h, ox : ox + w].copy()
        visible = []
        for obj in objects:
            m = obj.place(t, n_frames, h, w)
            warped = cv2.warpAffine(obj.sprite, m, (w, h), flags=cv2.INTER_LINEAR)
            mask = cv2.warpAffine(obj.mask, m, (w, h), flags=cv2.INTER_NEAREST) > 127
            img[mask] = warped[mask]
            for prev in visible:
                prev &= ~mask  # occlusion: later objects cover earlier ones
            visible.append(mask)
        gain = 1 + light_amp * np.sin(light_freq * t / 4 + light_phase)
        img = img * (gain + 0.25 * light_amp * ramp * np.sin(t / 5 + light_phase))
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        masks.append(visible)
    return frames, masks


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}


def write_video(folder: Path, index: int, seed: int, cfg: SyntheticConfig) -> Path:
    """``syn_<index>.mp4`` + ``syn_<index>_manual.json`` (SA-V masklets, every ``VIDEO_STRIDE``-th frame)."""
    stem = f"syn_{index:06d}"
    mp4, ann = folder / f"{stem}.mp4", folder / f"{stem}_manual.json"
    if mp4.is_file() and ann.is_file():
        return mp4
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, index]))
    frames, masks = render(rng, cfg, cfg.frames)
    tmp = folder / f".{stem}.tmp.mp4"  # hidden from the reader; OpenCV picks the container from the extension
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), cfg.fps, (cfg.width, cfg.height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write mp4 ({tmp}); is the mp4v codec available?")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    n_obj = len(masks[0])
    annotated = list(range(0, cfg.frames, VIDEO_STRIDE))
    data = {
        "video_id": stem,
        "video_frame_count": cfg.frames,
        "video_height": cfg.height,
        "video_width": cfg.width,
        "masklet_id": list(range(n_obj)),
        "masklet": [[_rle(masks[t][j]) for j in range(n_obj)] for t in annotated],
        "masklet_num": n_obj,
    }
    atomic_write(ann, json.dumps(data).encode())
    os.replace(tmp, mp4)
    return mp4


def write_image(folder: Path, index: int, seed: int, cfg: SyntheticConfig) -> Path:
    """``syn_<index>.jpg`` + ``syn_<index>.json`` (SA-1B layout: RLE per object)."""
    stem = f"syn_{index:06d}"
    jpg, ann = folder / f"{stem}.jpg", folder / f"{stem}.json"
    if jpg.is_file() and ann.is_file():
        return jpg
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2, index]))
    frames, masks = render(rng, cfg, 1)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode {jpg}")
    atomic_write(jpg, data.tobytes())
    anns = [{"id": j, "segmentation": _rle(m), "area": int(m.sum())} for j, m in enumerate(masks[0])]
    info = {"image_id": index, "file_name": jpg.name, "height": cfg.height, "width": cfg.width}
    atomic_write(ann, json.dumps({"image": info, "annotations": anns}).encode())
    return jpg


def _write_one(job: tuple[str, Path, int, int, SyntheticConfig]) -> Path:
    kind, folder, index, seed, cfg = job
    return (write_video if kind == "video" else write_image)(folder, index, seed, cfg)


def generate(raw: Path, *, seed: int, videos: int, images: int, cfg: SyntheticConfig, workers: int = 1,
             progress: bool = True, overwrite: bool = False) -> tuple[Path, Path]:
    """Write the raw clips and stills (skipping files already there); returns their two folders.

    Files already there are reused on a re-run, so they must come from the same settings: other
    settings stop with a message unless ``overwrite``, which deletes them first.
    """
    from tqdm import tqdm

    settings = {"seed": seed, **cfg.__dict__}
    record = raw / "settings.json"
    if record.is_file() and overwrite:
        try:
            same = read_state(record) == settings
        except InputError:  # unreadable: what the files were made with is unknown
            same = False
        if not same:
            shutil.rmtree(raw)
    elif record.is_file():
        old = read_state(record)  # unreadable: stops, naming the file and --overwrite
        if old != settings:
            changed = ", ".join(f"{k} {old.get(k)} -> {v}" for k, v in settings.items() if old.get(k) != v)
            raise InputError(f"{raw} was generated with other settings ({changed}); {START_OVER}")
    vdir, idir = raw / "videos", raw / "images"
    for folder in (vdir, idir):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*tmp*"):  # temporaries of a stopped run (finished files are whole: atomic)
            stale.unlink()
    atomic_write(record, json.dumps(settings))
    jobs = [("video", vdir, i, seed, cfg) for i in range(videos)] + [("image", idir, i, seed, cfg) for i in range(images)]
    bar = tqdm(total=len(jobs), desc="synthesize", unit="file", disable=not progress)
    try:
        if workers <= 1:
            for job in jobs:
                _write_one(job)
                bar.update()
        else:
            with worker_pool(workers) as pool:
                for _ in pool.map(_write_one, jobs, chunksize=4):
                    bar.update()
    finally:
        bar.close()
    return vdir, idir
