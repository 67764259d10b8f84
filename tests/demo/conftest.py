"""A running demo server on a free local port, with a tiny random-init model folder and test pictures."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import cv2
import gradio  # noqa: F401  imported before any server sets GRADIO_TEMP_DIR: see below
import numpy as np
import pytest
from PIL import Image

# Gradio fixes one folder (for features the demo does not use) at import time from GRADIO_TEMP_DIR.
# `anydoor demo` imports it inside its private folder, which it removes on exit; these tests start
# several servers in one process, and a later one would re-create an earlier one's removed folder.

TEST_MAX_PIXELS = 1_000_000  # small, so that "too large" is cheap to test
# What a `make train` export recommends (configs/tiny.yaml's recipe): the page starts with it.
TRAIN_EXPORT_SAMPLING = {"scheduler": "ddim", "steps": 1, "guidance": 1.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    """``ANYDOOR_DEMO_MODEL`` when set (e.g. a `make train` export, for a README screenshot of a trained
    model), else a tiny random-init model folder of the real layout."""
    if os.environ.get("ANYDOOR_DEMO_MODEL"):
        return Path(os.environ["ANYDOOR_DEMO_MODEL"])
    from models.pipeline import AnyDoorPipeline
    from tests.fakes import tiny_pipeline  # the one place these tests build a model

    folder = tmp_path_factory.mktemp("demo-model") / "tiny"
    # the recommendation is saved in model_index.json and read back as the page's defaults
    AnyDoorPipeline(**tiny_pipeline().components, sampling=dict(TRAIN_EXPORT_SAMPLING)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def demo_server(demo_model):
    from demo.generation import load_pipeline
    from demo.server import serving

    pipe, device_label = load_pipeline(demo_model, "cpu")
    label = str(demo_model) if os.environ.get("ANYDOOR_DEMO_MODEL") else "a tiny random-init model (tests)"
    with serving(pipe, model_label=label, device_label=device_label, port=free_port(),
                 max_pixels=TEST_MAX_PIXELS) as served:
        yield served


def scene_images(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(reference RGBA cut-out of a textured synthetic object, target RGB scene 480 x 320)."""
    from datamodules.packing.synthetic import SyntheticConfig, background, render

    rng = np.random.default_rng(seed)
    frames, masks = render(rng, SyntheticConfig(width=256, height=256, max_objects=1), 1)
    mask = masks[0][0].astype(np.uint8)
    ys, xs = np.nonzero(mask)
    y1, y2, x1, x2 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    reference = np.dstack([frames[0], mask * 255])[y1:y2, x1:x2]
    target = np.clip(background(rng, 320, 480), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(reference), target


@pytest.fixture(scope="session")
def scene_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("demo-scene")
    reference, target = scene_images()
    files = {"reference": folder / "cup.png", "target": folder / "kitchen.png", "junk": folder / "notes.png",
             "huge": folder / "huge.png", "reference_rgb": folder / "photo.png", "reference_mask": folder / "photo_mask.png"}
    Image.fromarray(reference).save(files["reference"])
    Image.fromarray(target).save(files["target"])
    Image.fromarray(reference[..., :3]).save(files["reference_rgb"])
    Image.fromarray(cv2.threshold(reference[..., 3], 127, 255, cv2.THRESH_BINARY)[1]).save(files["reference_mask"])
    files["junk"].write_bytes(b"these are notes, not pixels\n" * 20)
    Image.new("RGB", (1200, 1000), (90, 140, 200)).save(files["huge"])
    return files
