"""One job schema for `anydoor generate` and `anydoor eval`: which object goes where, read from a file.

A job names a reference object (an image plus its mask, or an RGBA image whose alpha is the mask)
and a place in a target image (a box or a target mask); `eval` may add the ground-truth result and
a label, `generate` an output path and a seed. The same keys are used in a JSON list, a CSV file and
a folder of job folders, so one file serves both commands (docs/evaluation.md, docs/inference.md):

=================  ===========================================================================
``reference``      the reference image (required); RGBA without ``reference_mask``: alpha = mask
``reference_mask`` the reference's object mask
``target``         the target image (required)
``box``            ``[x1, y1, x2, y2]`` (or ``"x1 y1 x2 y2"``), target pixels, exclusive ends
``target_mask``    where the object goes, as a mask (give exactly one of ``box`` / ``target_mask``)
``ground_truth``   the expected result, target-sized (eval only)
``out``            output image path (generate only; default ``<out-dir>/<name>.png``)
``seed``           this job's noise seed
``name``           unique label (default ``<index, 5 digits>_<target file stem>``; a job folder's name)
``kind``           a label eval breaks its scores down by (default ``job``)
=================  ===========================================================================

Paths are relative to the job file's folder. The old generate keys ``ref``, ``ref_mask`` and ``mask``
are refused with their new name rather than accepted as aliases, so a job file has one vocabulary.

Every user image is read by ``src.image_io.read_image`` (8/16-bit, every mode, EXIF orientation,
pixel limit); every user mask by ``read_mask``: one rule, ``binary_mask``. What the pipeline takes
in memory (arrays) is ``models.pipeline.Job``; ``JobSpec.read`` returns its keyword arguments.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from src.image_io import DEFAULT_MAX_PIXELS, read_image

PATH_KEYS = ("reference", "reference_mask", "target", "target_mask", "ground_truth", "out")
KEYS = ("name", "reference", "reference_mask", "target", "box", "target_mask", "ground_truth", "out", "seed", "kind")
RENAMED = {"ref": "reference", "ref_mask": "reference_mask", "mask": "target_mask"}
JOB_FOLDER_IMAGES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class JobImages(TypedDict):
    """One job's pixels: the keyword arguments of ``models.pipeline.Job`` (uint8 arrays, {0, 1} masks)."""

    reference: np.ndarray
    reference_mask: np.ndarray
    target: np.ndarray
    box: tuple[int, int, int, int] | None
    target_mask: np.ndarray | None
    name: str


def binary_mask(gray: np.ndarray) -> np.ndarray:
    """The one rule for user masks: a pixel is object when brighter than half the brightest pixel.

    That reads 0/255 masks, JPEG-noisy masks and soft (anti-aliased) edges at their middle, and a
    0/1 mask saved as 8-bit (whose brightest value is 1) as non-zero = object.
    """
    top = int(gray.max()) if gray.size else 0
    return (gray > (top / 2 if top > 1 else 0)).astype(np.uint8)


def read_mask(path: str | Path, hw: tuple[int, int], *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A user mask file as ``H x W`` uint8 {0, 1}; it must match its image's size and hold an object."""
    mask = binary_mask(read_image(path, "L", max_pixels=max_pixels))
    if mask.shape != tuple(hw):
        raise ValueError(f"{path}: mask is {mask.shape[1]} x {mask.shape[0]}, its image {hw[1]} x {hw[0]}")
    if not mask.any():
        raise ValueError(f"{path}: the mask is empty (no pixel above half its brightest value)")
    return mask


def parse_box(value: Any, where: str) -> tuple[int, int, int, int]:
    """Four whole numbers from a list or a ``"x1 y1 x2 y2"`` / ``"x1,y1,x2,y2"`` string."""
    parts = value.replace(",", " ").split() if isinstance(value, str) else value
    try:
        numbers = [float(v) for v in parts]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 4 or not all(n.is_integer() for n in numbers):
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}box must be four whole numbers x1 y1 x2 y2, got {value!r}")
    x1, y1, x2, y2 = (int(n) for n in numbers)
    return x1, y1, x2, y2


@dataclass(frozen=True)
class JobSpec:
    """One job as written in a file: paths (resolved), box, labels. ``source`` names it in errors."""

    reference: Path
    target: Path
    reference_mask: Path | None = None
    box: tuple[int, int, int, int] | None = None
    target_mask: Path | None = None
    ground_truth: Path | None = None
    out: Path | None = None
    seed: int | None = None
    name: str = ""
    kind: str = "job"
    source: str = ""

    @classmethod
    def from_record(cls, record: Mapping[str, Any], base: Path | None, source: str, index: int = 0) -> JobSpec:
        """Validate one record (a JSON object, CSV row or job folder); paths relative to ``base``."""

        def error(message: str) -> ValueError:
            return ValueError(f"{source}: {message}" if source else message)

        if not isinstance(record, Mapping):
            raise error(f"a job must be an object with keys, got {type(record).__name__}")
        for old, new in RENAMED.items():
            if old in record:
                raise error(f"key {old!r} is now {new!r} (one job schema for generate and eval)")
        unknown = sorted(set(record) - set(KEYS))
        if unknown:
            raise error(f"unknown keys {unknown} (known: {', '.join(KEYS)})")
        record = {k: v for k, v in record.items() if v not in (None, "")}
        for key in ("reference", "target"):
            if key not in record:
                raise error(f"{key!r} is required")
        if ("box" in record) == ("target_mask" in record):
            raise error("give exactly one of 'box' and 'target_mask'")
        values: dict[str, Any] = {"source": source}
        for key in PATH_KEYS:
            if key in record:
                if not isinstance(record[key], str):
                    raise error(f"{key} must be a path string, got {record[key]!r}")
                path = Path(record[key]).expanduser()
                values[key] = path if path.is_absolute() or base is None else base / path
        if "box" in record:
            values["box"] = parse_box(record["box"], source)
        if "seed" in record:
            try:
                values["seed"] = int(str(record["seed"]))
            except ValueError:
                raise error(f"seed must be a whole number, got {record['seed']!r}") from None
        values["name"] = str(record.get("name", f"{index:05d}_{values['target'].stem}"))
        values["kind"] = str(record.get("kind", "job"))
        return cls(**values)

    def paths(self) -> dict[str, Path]:
        """The input files this job reads (not ``out``)."""
        return {k: getattr(self, k) for k in PATH_KEYS if k != "out" and getattr(self, k) is not None}

    def read(self, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> JobImages:
        """Read and check the images; ``ValueError``/``ImageError`` messages name the file and reason."""
        reference = read_image(self.reference, None, max_pixels=max_pixels)  # RGB, or RGBA when it has alpha
        if self.reference_mask is not None:
            reference_mask = read_mask(self.reference_mask, reference.shape[:2], max_pixels=max_pixels)
        elif reference.shape[2] == 4:
            reference_mask = binary_mask(reference[..., 3])
            if not reference_mask.any():
                raise ValueError(f"{self.reference}: the alpha channel (the object mask) is empty")
        else:
            raise ValueError(f"{self.reference}: no reference_mask and no alpha channel: give a reference mask "
                             "or an RGBA reference whose alpha is the object")
        target = read_image(self.target, "RGB", max_pixels=max_pixels)
        target_mask = None
        if self.target_mask is not None:
            target_mask = read_mask(self.target_mask, target.shape[:2], max_pixels=max_pixels)
        return JobImages(reference=np.ascontiguousarray(reference[..., :3]), reference_mask=reference_mask,
                         target=target, box=self.box, target_mask=target_mask, name=self.source or self.name)

    def read_ground_truth(self, hw: tuple[int, int], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
        if self.ground_truth is None:
            return None
        image = read_image(self.ground_truth, "RGB", max_pixels=max_pixels)
        if image.shape[:2] != tuple(hw):
            raise ValueError(f"{self.ground_truth}: ground truth is {image.shape[1]} x {image.shape[0]}, "
                             f"its target {hw[1]} x {hw[0]}")
        return image


def _records_from_json(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    entries = data.get("jobs") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of jobs or {{\"jobs\": [...]}}")
    return entries


def _records_from_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets start with a BOM
            reader = csv.DictReader(f)
            rows = list(reader)
    except (csv.Error, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable CSV file ({err})") from None
    for i, row in enumerate(rows):
        if None in row:  # more cells than header columns
            raise ValueError(f"{path} job {i}: more cells than the header has columns (quote a box with commas)")
    return rows


def _job_folder_record(folder: Path) -> dict[str, Any]:
    """``reference.*``, ``reference_mask.*``, ``target.*``, ``target_mask.*``, ``ground_truth.*``, ``box.json``."""
    record: dict[str, Any] = {"name": folder.name}
    for key in PATH_KEYS:
        hits = sorted(p for p in folder.glob(f"{key}.*") if p.suffix.lower() in JOB_FOLDER_IMAGES)
        if len(hits) > 1:
            raise ValueError(f"{folder}: several {key} files ({', '.join(p.name for p in hits)})")
        if hits:
            record[key] = hits[0].name
    box = folder / "box.json"
    if box.is_file():
        try:
            record["box"] = json.loads(box.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{box}: not valid JSON ({err})") from None
    return record


def read_jobs(path: str | Path) -> list[JobSpec]:
    """Jobs from a ``.json`` (a list, or ``{"jobs": [...]}``) or ``.csv`` file, a folder holding
    ``jobs.json``/``jobs.csv``, or a folder of job folders. Errors name the file and the job index."""
    path = Path(path)
    if path.is_dir():
        inside = [path / n for n in ("jobs.json", "jobs.csv") if (path / n).is_file()]
        if len(inside) > 1:
            raise ValueError(f"{path}: holds both jobs.json and jobs.csv; pass one of them")
        if inside:
            path = inside[0]
    if path.is_dir():
        folders = sorted(p for p in path.iterdir() if p.is_dir())
        if not folders:
            raise ValueError(f"{path}: no jobs.json, no jobs.csv and no job folders")
        specs = [JobSpec.from_record(_job_folder_record(f), f, str(f), i) for i, f in enumerate(folders)]
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix not in (".json", ".csv"):
            raise ValueError(f"{path}: a job file must end in .json or .csv")
        records = _records_from_json(path) if suffix == ".json" else _records_from_csv(path)
        specs = [JobSpec.from_record(r, path.parent, f"{path} job {i}", i) for i, r in enumerate(records)]
    else:
        raise ValueError(f"{path}: no such job file or folder")
    if not specs:
        raise ValueError(f"{path}: holds no jobs")
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"{spec.source}: name {spec.name!r} is already used by {seen[spec.name]} (names must be unique)")
        seen[spec.name] = spec.source
    return specs

