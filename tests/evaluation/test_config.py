"""`anydoor eval` settings: jsonargparse validation, and only the project's own classes built from a
config or a run folder (untrusted input)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evaluation.config import EVAL_MODULES, ConfigError, check_class_paths, load_settings
from evaluation.methods import BackgroundFill, FromFolder

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", ["subprocess.run", "os.system", "builtins.eval", "evaluation.methods.Path",
                                  "evaluation.methods.torch.load", "evaluation.methodsx.Foo", "Foo", 3])
def test_allowlist_refuses_everything_else(path):
    tree = {"good": {"class_path": "evaluation.methods.BackgroundFill"},
            "bad": {"class_path": "evaluation.methods.FromFolder", "init_args": {"nested": {"class_path": path}}}}
    with pytest.raises(ConfigError, match=r"^cfg.yaml: methods.bad.init_args.nested: .*(refused|not a class|cannot import)"):
        check_class_paths(tree, EVAL_MODULES, "cfg.yaml", "methods")


def test_allowlist_accepts_the_projects_classes():
    check_class_paths({"a": {"class_path": "evaluation.identity.DinoScorer"}, "b": [{"class_path": "evaluation.methods.CopyPaste"}]},
                      EVAL_MODULES, "x")


def test_settings_are_validated_and_built(tmp_path):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"jobs": "j.json", "seed": 4, "methods": {
        "mine": {"class_path": "evaluation.methods.FromFolder", "init_args": {"folder": str(tmp_path)}},
        "bg": {"class_path": "evaluation.methods.BackgroundFill"}}}))
    parser, settings = load_settings(cfg, {"seed": 7, "size": None, "methods": {}, "scorers": {}})
    assert settings.seed == 7 and settings.size is None and settings.max_pixels == 64_000_000  # flag wins, None = unset
    built = parser.instantiate(settings)
    assert isinstance(built.methods["mine"], FromFolder) and isinstance(built.methods["bg"], BackgroundFill)
    cfg.write_text(yaml.safe_dump({"jobs": "j.json", "methods": {
        "mine": {"class_path": "evaluation.methods.FromFolder", "init_args": {"foldr": "x"}}}}))
    with pytest.raises(ConfigError, match=r"eval.yaml: .*'foldr' is not accepted"):
        load_settings(cfg, {})
    cfg.write_text("jobs: [unclosed\n")
    with pytest.raises(ConfigError, match="eval.yaml: not valid YAML"):
        load_settings(cfg, {})
    cfg.write_text("- a list\n")
    with pytest.raises(ConfigError, match="eval.yaml: must hold a mapping"):
        load_settings(cfg, {})


def test_model_settings_reach_model_methods_only(tmp_path):
    _, settings = load_settings(None, {"jobs": "j.json", "steps": 3, "device": "cpu", "methods": {
        "m": {"class_path": "evaluation.methods.PipelineMethod", "init_args": {"model": "dir", "steps": 9}},
        "f": {"class_path": "evaluation.methods.FromFolder", "init_args": {"folder": "x"}}}})
    assert settings.methods["m"].init_args.steps == 9  # the method's own value wins
    assert settings.methods["m"].init_args.device == "cpu" and "steps" not in settings.methods["f"].init_args


def test_eval_on_an_untrusted_run_folder(job_folder, tmp_path):
    """`anydoor eval --run DIR` where DIR/config.yaml names `subprocess.run`: one line naming the file,
    exit status 1, nothing executed (it used to run the command)."""
    run = tmp_path / "someone_elses_run"
    run.mkdir()
    marker = tmp_path / "PWNED"
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"class_path": "subprocess.run", "init_args": {"args": ["touch", str(marker)]}}}))
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"methods": {"untrained": {"class_path": "evaluation.methods.ModuleMethod",
                                                             "init_args": {"config": "{run}/config.yaml"}}}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "src.cli.main", "eval", "--config", str(cfg), "--jobs", str(job_folder),
                        "--run", str(run), "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"anydoor eval: {run / 'config.yaml'}: model class 'subprocess.run' is not an AnyDoorModule of this project")
    assert not marker.exists()
    # the same in the eval config itself
    cfg.write_text(yaml.safe_dump({"methods": {"x": {"class_path": "subprocess.run", "init_args": {"args": ["touch", str(marker)]}}}}))
    with pytest.raises(SystemExit, match=r"anydoor eval: .*eval.yaml: methods.x: class_path 'subprocess.run' refused"):
        from src.cli.main import main

        main(["eval", "--config", str(cfg), "--jobs", str(job_folder)])
    assert not marker.exists()
