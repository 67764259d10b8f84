import json

import pytest
import yaml

from evaluation.jobs import prepare_job
from evaluation.shard_jobs import jobs_from_shards
from src.cli.main import main
from src.jobs import read_jobs


def test_jobs_from_shards_are_deterministic(heldout_shards, tmp_path):
    first = jobs_from_shards(heldout_shards, tmp_path / "a")
    second = jobs_from_shards(heldout_shards, tmp_path / "b")
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert a["jobs"] == b["jobs"] and not a["skipped"]
    kinds = {j["kind"] for j in a["jobs"]}
    assert kinds == {"video", "image"}
    for name in ("reference", "target"):
        assert (tmp_path / "a" / a["jobs"][0][name]).read_bytes() == (tmp_path / "b" / b["jobs"][0][name]).read_bytes()
    jobs = read_jobs(first)
    job = prepare_job(jobs[0], 32)
    assert job.has_mask and job.ground_truth is not None
    assert len(jobs_from_shards(heldout_shards, tmp_path / "c", limit=1).read_text()) < len(first.read_text())


def test_cli_eval_on_shards_with_config(heldout_shards, tmp_path):
    out = tmp_path / "eval"
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"jobs": str(heldout_shards), "out": str(out), "size": 32, "grid_rows": 2}))
    assert main(["eval", "--config", str(cfg), "--limit", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_jobs"] == 3 and set(metrics["summary"]) == {"background", "copy_paste"}
    assert metrics["settings"]["limit"] == 3
    assert (out / "grid.png").is_file() and (out / "metrics.md").read_text().count("| background |") >= 1


def test_cli_eval_generated_folder_and_errors(job_folder, tmp_path, capsys):
    gen = tmp_path / "gen"
    gen.mkdir()
    for job in read_jobs(job_folder):
        (gen / f"{job.name}.png").write_bytes(job.ground_truth.read_bytes())
    assert main(["eval", "--jobs", str(job_folder), "--out", str(tmp_path / "o"), "--size", "32", "--generated", f"mine={gen}", "--no-baselines"]) == 0
    assert "| mine |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--jobs"):
        main(["eval", "--out", str(tmp_path / "x")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobz: 1\n")
    with pytest.raises(SystemExit, match=r"bad.yaml: .*'jobz' is not accepted"):
        main(["eval", "--config", str(bad)])
    bad.write_text("jobs: x\nbatch_size: -3\n")
    with pytest.raises(SystemExit, match=r"bad.yaml: .*batch_size"):
        main(["eval", "--config", str(bad)])
    with pytest.raises(SystemExit, match="no such job"):
        main(["eval", "--jobs", str(tmp_path / "missing.json")])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "bad_jobs.json").write_text(json.dumps([
        {"reference": "broken.png", "target": str(job_folder / "j0_target.png"), "box": [1, 1, 9, 9]},
        {"reference": "gone.png", "target": str(job_folder / "j0_target.png"), "box": [1, 1, 9, 9]}]))
    with pytest.raises(SystemExit, match=r"^anydoor eval: .*bad_jobs.json job 1: reference .*gone.png: no such file$"):
        main(["eval", "--jobs", str(tmp_path / "bad_jobs.json"), "--out", str(tmp_path / "b")])  # before any model
    (tmp_path / "bad_jobs.json").write_text(json.dumps([
        {"reference": "broken.png", "target": str(job_folder / "j0_target.png"), "box": [1, 1, 9, 9]}]))
    with pytest.raises(SystemExit, match=r"^anydoor eval: .*bad_jobs.json job 0: .*broken.png: not an image file"):
        main(["eval", "--jobs", str(tmp_path / "bad_jobs.json"), "--out", str(tmp_path / "b")])


def test_run_placeholder_points_every_setting_at_one_run(tmp_path, job_folder):
    from evaluation.config import ConfigError, fill_run

    spec = {"a": {"init_args": {"checkpoint": "{run}/checkpoints/last.ckpt"}}, "b": ["{run}"], "c": 3}
    assert fill_run(spec, "/r/v1") == {"a": {"init_args": {"checkpoint": "/r/v1/checkpoints/last.ckpt"}}, "b": ["/r/v1"], "c": 3}
    with pytest.raises(ConfigError, match="needs a training run"):
        fill_run("{run}/x", None)
    with pytest.raises(SystemExit, match="make train"):
        main(["eval", "--jobs", str(job_folder), "--out", str(tmp_path), "--run", str(tmp_path / "version_*")])


def test_generate_then_eval_one_job_file(job_folder, tmp_path, capsys):
    """The shared schema end to end: `generate --jobs F --out-dir G` writes <name>.png, which
    `eval --jobs F --generated G` scores (the composited full images, cut to each job's crop)."""
    from tests.fakes import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "model")
    assert main(["generate", "--jobs", str(job_folder / "jobs.json"), "--model", str(tmp_path / "model"), "--steps", "1",
                 "--out-dir", str(tmp_path / "gen")]) == 0
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["job0.png", "job1.png", "job2.png"]
    capsys.readouterr()
    assert main(["eval", "--jobs", str(job_folder), "--generated", f"tiny={tmp_path / 'gen'}", "--size", "32",
                 "--out", str(tmp_path / "eval")]) == 0
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())["summary"]
    assert summary["tiny"]["psnr_box"]["n"] == 3
    assert summary["tiny"]["psnr_bg"]["n_inf"] == 3  # box compositing (the default): the scene is exact
