import json

import pytest
import torch

from evaluation.jobs import prepare_job
from evaluation.methods import BackgroundFill, CopyPaste, FromFolder, background_fill
from evaluation.runner import evaluate
from src.jobs import read_jobs

SIZE = 48


class Oracle:
    """Returns the ground-truth crop: must score infinite PSNR in the box."""

    def __call__(self, jobs):
        return torch.stack([j.ground_truth for j in jobs])


def test_prepared_jobs_are_deterministic_and_consistent(job_folder):
    jobs = read_jobs(job_folder)
    assert [j.name for j in jobs] == ["job0", "job1", "job2"]
    a, b = prepare_job(jobs[0], SIZE), prepare_job(jobs[0], SIZE)
    assert torch.equal(a.collage, b.collage) and a.box == b.box
    assert a.target.shape == (3, SIZE, SIZE) and a.has_mask
    x1, y1, x2, y2 = a.box
    assert a.object_mask[0, y1:y2, x1:x2].sum() == a.object_mask.sum()  # the object lies inside the box
    assert torch.equal(a.ground_truth, a.target)  # the synthetic target is its own ground truth
    box_job = prepare_job(jobs[2], SIZE)
    assert not box_job.has_mask


def test_background_fill_changes_only_the_box(job_folder):
    job = prepare_job(read_jobs(job_folder)[0], SIZE)
    filled = background_fill(job)
    x1, y1, x2, y2 = job.box
    outside = torch.ones(SIZE, SIZE, dtype=torch.bool)
    outside[y1:y2, x1:x2] = False
    assert torch.equal(filled[:, outside], job.target[:, outside])
    inside = filled[:, y1:y2, x1:x2].reshape(3, -1)
    assert torch.allclose(inside, inside[:, :1].expand_as(inside))


def test_evaluate_end_to_end(job_folder, tmp_path, tiny_scorers):
    jobs = read_jobs(job_folder)
    methods = {"oracle": Oracle(), "background": BackgroundFill(), "copy_paste": CopyPaste()}
    result = evaluate(jobs, methods, tmp_path, size=SIZE, scorers=tiny_scorers, batch_size=2, grid_rows=3)
    s = result["summary"]
    assert s["oracle"]["psnr_box"]["n_inf"] == 3
    assert s["oracle"]["dino_i"]["n"] == 3 and -1 <= s["oracle"]["dino_i"]["mean"] <= 1
    # the stripes are in the reference: pasting them beats a flat fill inside the object
    assert s["copy_paste"]["psnr_mask"]["mean"] > s["background"]["psnr_mask"]["mean"]
    assert s["background"]["psnr_mask"]["n"] == 2  # the box-only job has no mask score
    assert s["background"]["psnr_box"]["n"] == 3
    assert s["background"]["psnr_bg"]["n_inf"] == 3  # outside the box is untouched
    assert set(result["by_kind"]) == {"even", "odd"}
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["jobs"]["oracle"][0]["psnr_box"] == "inf"
    table = (tmp_path / "metrics.md").read_text()
    assert "| copy_paste |" in table and "dino_i" in table and "clip_i" in table
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "images" / "oracle").iterdir()) == ["job0.png", "job1.png", "job2.png"]


def test_from_folder_reads_full_images(job_folder, tmp_path):
    jobs = read_jobs(job_folder)
    folder = tmp_path / "generated"
    folder.mkdir()
    for job in jobs:  # "generated" = the ground truth itself
        (folder / f"{job.name}.png").write_bytes(job.ground_truth.read_bytes())
    result = evaluate(jobs, {"files": FromFolder(folder)}, tmp_path / "out", size=SIZE, save_images=False)
    assert result["summary"]["files"]["psnr_box"]["n_inf"] == 3
    (folder / "job1.png").unlink()
    with pytest.raises(FileNotFoundError, match="job1"):
        evaluate(jobs, {"files": FromFolder(folder)}, tmp_path / "out2", size=SIZE)


def test_bad_job_lists_name_the_problem(tmp_path, job_folder):
    bad = tmp_path / "jobs.json"
    bad.write_text(json.dumps([{"reference": "missing.png", "target": "t.png", "box": [0, 0, 4, 4]},
                               {"reference": str(job_folder / "j0_reference.png"), "reference_mask": str(job_folder / "j0_reference_mask.png"),
                                "target": str(job_folder / "j0_target.png"), "box": [0, 0, 4, 4]}]))
    with pytest.raises(ValueError, match=r"jobs.json job 0: .*missing.png: no such file"):  # every bad job, one line each
        evaluate(read_jobs(bad), {"bg": BackgroundFill()}, tmp_path / "out", size=SIZE)
    assert not (tmp_path / "out" / "metrics.json").exists()
def test_method_with_wrong_output_is_refused(job_folder, tmp_path):
    jobs = read_jobs(job_folder)[:1]
    with pytest.raises(ValueError, match="expected"):
        evaluate(jobs, {"bad": lambda batch: torch.zeros(len(batch), 3, 8, 8)}, tmp_path, size=SIZE)
