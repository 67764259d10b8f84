"""The demo's API (`/generate`, what `gradio_client` calls) against a running server: results, errors,
one generation at a time, and no uploaded file left behind."""

from __future__ import annotations

import time

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from demo.uploads import DELETE_AFTER_S
from src.image_io import read_image


@pytest.fixture(scope="module")
def client(demo_server, tmp_path_factory):
    return Client(demo_server.url, verbose=False, analytics_enabled=False,
                  download_files=str(tmp_path_factory.mktemp("client-downloads")))


def call(client, scene_files, *, ref="reference", ref_mask=None, target="target", box="", target_mask=None,
         shape=False, scheduler="ddim", steps=2, guidance=1.0, seed=0, random_seed=False, composite="box",
         feather=0, submit=False):
    f = scene_files
    args = (handle_file(str(f[ref])), handle_file(str(f[ref_mask])) if ref_mask else None,
            handle_file(str(f[target])), box, handle_file(str(target_mask)) if target_mask else None,
            shape, scheduler, steps, guidance, seed, random_seed, composite, feather)
    if submit:
        return client.submit(*args, api_name="/generate")
    return client.predict(*args, api_name="/generate")


def outside_region_is_the_target(result: np.ndarray, target: np.ndarray, region) -> bool:
    x1, y1, x2, y2 = region
    outside = np.ones(target.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    return bool(np.array_equal(result[outside], target[outside]))


def test_generate_returns_the_target_with_only_the_region_changed(client, scene_files):
    image_path, collage_path, numbers = call(client, scene_files, box="150 90 300 250", seed=3)
    target = read_image(scene_files["target"])
    result = read_image(image_path)
    assert result.shape == target.shape
    x1, y1, x2, y2 = numbers["region"]
    assert (result != target).any(axis=2).sum() > 0
    assert outside_region_is_the_target(result, target, numbers["region"])
    # box mode: the change stays inside the box grown by the pipeline's ratio (1.15x -> ~11 px per side)
    assert 130 <= x1 and 70 <= y1 and x2 <= 320 and y2 <= 270
    assert numbers["size"] == [480, 320] and numbers["seed"] == 3 and numbers["steps"] == 2
    assert numbers["finished"] >= numbers["started"] and numbers["seconds"] >= 0
    assert read_image(collage_path).shape[0] >= 256  # the collage picture, upscaled to be seen
    again = read_image(call(client, scene_files, box="150 90 300 250", seed=3)[0])
    assert np.array_equal(again, result)  # a seed gives the same image


def test_mask_file_target_mask_shape_control_and_mask_compositing(client, scene_files, tmp_path):
    target = read_image(scene_files["target"])
    mask = np.zeros(target.shape[:2], np.uint8)
    mask[100:220, 180:260] = 255
    Image.fromarray(mask).save(tmp_path / "where.png")
    image_path, _, numbers = call(client, scene_files, ref="reference_rgb", ref_mask="reference_mask",
                                  target_mask=tmp_path / "where.png", shape=True, composite="mask")
    result = read_image(image_path)
    changed = (result != target).any(axis=2)
    grown = np.zeros_like(changed)
    grown[100 - 4:220 + 4, 180 - 4:260 + 4] = True  # the mask dilated by the pipeline's 4 px
    assert changed.any() and not (changed & ~grown).any()
    assert numbers["shape_control"] is True and numbers["composite"] == "mask"
    assert outside_region_is_the_target(result, target, numbers["region"])


def test_random_seed_is_reported(client, scene_files):
    a = call(client, scene_files, box="10 10 100 100", random_seed=True)[2]
    b = call(client, scene_files, box="10 10 100 100", random_seed=True)[2]
    assert a["seed"] != b["seed"]  # 1 in 2**31 to collide


@pytest.mark.parametrize("kw, message", [
    ({}, "target has no box"),
    ({"box": "10 10 500 20"}, "target box 10 10 500 20 is empty or outside the 480 x 320 target"),
    ({"box": "10 10 50"}, "four whole numbers"),
    ({"target": "junk", "box": "1 1 5 5"}, "target: notes.png: not an image file"),
    ({"ref": "junk", "box": "1 1 5 5"}, "reference: notes.png: not an image file"),
    ({"target": "huge", "box": "1 1 5 5"}, r"huge.png: more pixels than the limit \(1200 x 1000 = 1.2 MP, limit 1.0 MP\)"),
    ({"ref": "reference_rgb", "box": "1 1 50 50"}, "reference has no mask"),
    ({"scheduler": "euler", "box": "1 1 50 50"}, "sampler must be one of"),
    ({"steps": 5000, "box": "1 1 50 50"}, "steps must be at most 1000"),
    ({"seed": -3, "box": "1 1 50 50"}, "seed must be a whole number from 0"),
])
def test_bad_input_is_a_one_line_message(client, scene_files, kw, message):
    with pytest.raises(AppError, match=message) as err:
        call(client, scene_files, **kw)
    assert "Traceback" not in str(err.value) and "\n" not in str(err.value)


def test_only_generate_is_callable_from_clients(client):
    assert list(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ["/generate"]
    with pytest.raises(ValueError):
        client.predict(None, api_name="/target_uploaded")


def test_one_generation_at_a_time(client, scene_files):
    # ~1 s each on this CPU (20 guided steps); run concurrently they would overlap almost fully
    jobs = [call(client, scene_files, box="10 10 200 200", scheduler="dpm", steps=20, guidance=5.0, submit=True)
            for _ in range(2)]
    runs = sorted((job.result()[2]["started"], job.result()[2]["finished"]) for job in jobs)
    assert runs[0][1] > runs[0][0] and runs[1][0] >= runs[0][1]


def test_uploaded_files_are_deleted_once_read(demo_server, client, scene_files):
    call(client, scene_files, box="150 90 300 250")
    with pytest.raises(AppError):
        call(client, scene_files, ref="junk", box="1 1 5 5")  # a bad reference: the target goes too
    uploaded = {p.name for p in scene_files.values()}

    def left() -> set[str]:
        return {p.name for p in demo_server.temp_dir.rglob("*") if p.is_file()} & uploaded

    deadline = time.monotonic() + DELETE_AFTER_S + 10
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left()
    assert list(demo_server.temp_dir.rglob("anydoor_seed*.png"))  # results stay a while, for the download

