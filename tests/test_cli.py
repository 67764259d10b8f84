import subprocess
import sys

import pytest


def test_anydoor_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "src.cli.main", "--help"], capture_output=True, text=True, check=True)
    for name in ("shards", "generate", "convert", "eval"):
        assert name in out.stdout


def test_anydoor_help_imports_no_heavy_module():
    code = "import sys; from src.cli.main import build_parser; build_parser(); print(sorted(m for m in ('torch','lightning','diffusers','timm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lightning_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "src.cli.train", "--help"], capture_output=True, text=True, check=True)
    for name in ("fit", "validate", "test", "predict"):
        assert name in out.stdout


def test_lightning_fit_help_lists_options_without_building_anything(monkeypatch, capsys):
    import src.cli.train as train

    monkeypatch.setattr(sys, "argv", ["lightning", "fit", "--help"])
    monkeypatch.setattr("src.cli.train.config_problems", lambda *a: pytest.fail("--help must not check paths"))
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for option in ("--ckpt_path", "--trainer.max_steps", "--trainer.plugins", "--model", "--data"):
        assert option in out


def test_lightning_console_entry_returns_none(monkeypatch):
    # setuptools' console script does sys.exit(main()); a returned LightningCLI object would exit 1.
    import src.cli.train as train

    monkeypatch.setattr(train, "cli_main", lambda args=None, run=True: object())
    assert train.main() is None
