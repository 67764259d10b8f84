"""The one job schema (src/jobs.py): the same jobs from JSON, CSV and job folders; errors name the
file and the job; images through the shared reader, masks by one rule."""

import json

import numpy as np
import pytest
from PIL import Image

from src.image_io import ImageError
from src.jobs import JobSpec, binary_mask, parse_box, read_jobs, read_mask
from tests.src.job_files import write_job_images


@pytest.fixture()
def images(tmp_path):
    write_job_images(tmp_path, (30, 40), (50, 60))  # object: reference rows 5:25, columns 6:30
    mask = np.zeros((50, 60), np.uint8)
    mask[10:30, 20:40] = 1  # a 0/1 mask saved as 8-bit
    Image.fromarray(mask).save(tmp_path / "mask01.png")
    return tmp_path


def test_json_csv_and_folder_give_the_same_jobs(images):
    (images / "sub").mkdir()
    records = [
        {"reference": "ref.png", "target": "scene.png", "box": [20, 10, 40, 30], "out": "o/a.png", "seed": 3},
        {"reference": "ref_rgb.png", "reference_mask": "ref_mask.png", "target": "scene.png",
         "target_mask": "mask01.png", "name": "second", "kind": "image", "ground_truth": "scene.png"},
    ]
    (images / "jobs.json").write_text(json.dumps(records))
    (images / "sub" / "jobs.csv").write_text(  # as a spreadsheet saves it: with a byte-order mark
        "\ufeffreference,reference_mask,target,box,target_mask,ground_truth,out,seed,name,kind\n"
        "../ref.png,,../scene.png,20 10 40 30,,,../o/a.png,3,,\n"
        "../ref_rgb.png,../ref_mask.png,../scene.png,,../mask01.png,../scene.png,,,second,image\n")
    from_json, from_csv = read_jobs(images / "jobs.json"), read_jobs(images / "sub")
    assert from_json[0].reference == images / "ref.png"  # relative to the file's folder
    assert from_json[0].box == (20, 10, 40, 30) and from_json[0].seed == 3
    assert from_json[0].name == "00000_scene" and from_json[1].name == "second"
    for a, b in zip(from_json, from_csv):
        assert (a.reference.resolve(), a.box, a.seed, a.name, a.kind) == (b.reference.resolve(), b.box, b.seed, b.name, b.kind)
        assert {k: p.resolve() for k, p in a.paths().items()} == {k: p.resolve() for k, p in b.paths().items()}
    # a folder of job folders: files named after the keys, box.json
    folder = images / "folders"
    for name, files in (("cup", {"reference": "ref.png", "target": "scene.png"}), ("mug", {"reference": "ref_rgb.png",
                        "reference_mask": "ref_mask.png", "target": "scene.png", "target_mask": "mask01.png"})):
        (folder / name).mkdir(parents=True)
        for key, src in files.items():
            (folder / name / f"{key}.png").write_bytes((images / src).read_bytes())
    (folder / "cup" / "box.json").write_text("[20, 10, 40, 30]")
    specs = read_jobs(folder)
    assert [s.name for s in specs] == ["cup", "mug"] and specs[0].box == (20, 10, 40, 30)
    assert specs[1].target_mask == folder / "mug" / "target_mask.png"


@pytest.mark.parametrize(("record", "message"), [
    ({"ref": "a.png", "target": "b.png", "box": [0, 0, 1, 1]}, "key 'ref' is now 'reference'"),
    ({"reference": "a.png", "target": "b.png", "mask": "m.png"}, "key 'mask' is now 'target_mask'"),
    ({"reference": "a.png", "target": "b.png", "box": [0, 0, 1, 1], "boxx": 1}, r"unknown keys \['boxx'\]"),
    ({"reference": "a.png", "box": [0, 0, 1, 1]}, "'target' is required"),
    ({"reference": "a.png", "target": "b.png"}, "give exactly one of 'box' and 'target_mask'"),
    ({"reference": "a.png", "target": "b.png", "box": [0, 0, 1]}, "box must be four whole numbers"),
    ({"reference": "a.png", "target": "b.png", "box": "0 0 1.5 2"}, "box must be four whole numbers"),
    ({"reference": "a.png", "target": "b.png", "box": [0, 0, 1, 1], "seed": "x"}, "seed must be a whole number"),
    ({"reference": 3, "target": "b.png", "box": [0, 0, 1, 1]}, "reference must be a path string"),
])
def test_schema_errors_name_the_file_and_the_job(tmp_path, record, message):
    good = {"reference": "a.png", "target": "b.png", "box": [0, 0, 1, 1]}
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([good, record]))
    with pytest.raises(ValueError, match=rf"jobs.json job 1: {message}"):
        read_jobs(path)


def test_file_level_errors(tmp_path):
    cases = {"bad.json": "{not json", "empty.json": "[]", "obj.json": '{"no_jobs": 1}', "x.txt": "",
             "wide.csv": "reference,target,box\na.png,b.png,1,2,3,4\n"}
    expected = {"bad.json": "not valid JSON", "empty.json": "holds no jobs", "obj.json": "expected a list of jobs",
                "x.txt": "must end in .json or .csv", "wide.csv": "job 0: more cells than the header"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=f"{name}.*{expected[name]}"):
            read_jobs(tmp_path / name)
    with pytest.raises(ValueError, match="no such job file"):
        read_jobs(tmp_path / "missing.json")
    (tmp_path / "dup.json").write_text(json.dumps([{"reference": "a.png", "target": "b.png", "box": [0, 0, 1, 1], "name": "x"}] * 2))
    with pytest.raises(ValueError, match="dup.json job 1: name 'x' is already used by .*dup.json job 0"):
        read_jobs(tmp_path / "dup.json")


def test_box_forms():
    assert parse_box("1 2 3 4", "w") == parse_box("1,2,3,4", "w") == parse_box([1.0, 2, 3, 4], "w") == (1, 2, 3, 4)


def test_one_mask_rule():
    assert binary_mask(np.array([[0, 1]], np.uint8)).tolist() == [[0, 1]]  # 0/1 mask: non-zero
    assert binary_mask(np.array([[0, 127, 128, 255]], np.uint8)).tolist() == [[0, 0, 1, 1]]  # 0/255: half way
    assert binary_mask(np.array([[3, 9, 250, 255]], np.uint8)).tolist() == [[0, 0, 1, 1]]  # JPEG noise
    assert binary_mask(np.array([[0, 20, 60]], np.uint8)).tolist() == [[0, 0, 1]]  # relative to the brightest pixel


def test_read_gives_the_pipeline_job_arrays(images):
    rgba = JobSpec(reference=images / "ref.png", target=images / "scene.png", box=(20, 10, 40, 30), source="j")
    arrays = rgba.read()
    assert arrays["reference"].shape == (30, 40, 3) and arrays["reference_mask"].sum() == 20 * 24  # alpha = mask
    assert arrays["target"].shape == (50, 60, 3) and arrays["box"] == (20, 10, 40, 30) and arrays["target_mask"] is None
    with_mask = JobSpec(reference=images / "ref_rgb.png", reference_mask=images / "ref_mask.png",
                        target=images / "scene.png", target_mask=images / "mask01.png").read()
    assert np.array_equal(with_mask["reference"], arrays["reference"])
    assert np.array_equal(with_mask["reference_mask"], arrays["reference_mask"])
    assert with_mask["target_mask"].sum() == 20 * 20 and with_mask["box"] is None
    from models.pipeline import Job

    Job(**arrays)  # the keyword arguments of the pipeline's in-memory job


def test_read_errors_name_the_file(images):
    def spec(**kw):
        return JobSpec(**{"reference": images / "ref.png", "target": images / "scene.png", "box": (0, 0, 5, 5), **kw})

    with pytest.raises(ValueError, match="ref_rgb.png: no reference_mask and no alpha channel"):
        spec(reference=images / "ref_rgb.png").read()
    with pytest.raises(ValueError, match=r"ref_mask.png: mask is 40 x 30, its image 60 x 50"):
        spec(box=None, target_mask=images / "ref_mask.png").read()
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(images / "empty.png")
    with pytest.raises(ValueError, match="empty.png: the mask is empty"):
        read_mask(images / "empty.png", (50, 60))
    with pytest.raises(ImageError, match=r"scene.png: more pixels than the limit \(60 x 50"):
        spec().read(max_pixels=2000)
    with pytest.raises(ImageError, match="nope.png: no such file"):
        spec(target=images / "nope.png").read()


def test_sixteen_bit_gray_images_are_scaled_not_clipped(images):
    values = np.linspace(0, 65535, 50 * 60).reshape(50, 60).astype(np.uint16)
    Image.fromarray(values).save(images / "gray16.png")
    assert Image.open(images / "gray16.png").mode.startswith("I;16")
    target = JobSpec(reference=images / "ref.png", target=images / "gray16.png", box=(0, 0, 5, 5)).read()["target"]
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert np.array_equal(target, np.repeat(expected[..., None], 3, axis=2))
    assert (target < 255).mean() > 0.9  # Pillow's convert("RGB") clipped all but the darkest 0.4 % to white
