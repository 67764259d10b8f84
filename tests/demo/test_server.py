"""`anydoor demo` and the server: local address unless told, a model or a way to get one, a private
temporary folder that is emptied and removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest
from gradio_client import Client, handle_file

from demo.server import check_host, is_local, serving
from src.cli.demo import HOW_TO_GET_A_MODEL, newest_export
from src.cli.main import main
from tests.demo.conftest import free_port


@pytest.mark.parametrize("host, local", [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True),
                                         ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("::", False),
                                         ("192.168.1.20", False), ("example.org", False)])
def test_only_loopback_is_local(host, local):
    assert is_local(host) is local
    if local:
        check_host(host, allow_remote=False)
    else:
        with pytest.raises(ValueError, match="not a local address.*--allow-remote"):
            check_host(host, allow_remote=False)
        check_host(host, allow_remote=True)


def test_cli_refuses_a_non_local_host_before_loading_anything(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--host 0.0.0.0 is not a local address"):
        main(["demo", "--host", "0.0.0.0", "--model", str(tmp_path / "no-such-model")])


def test_cli_without_a_model_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no outputs/ here
    with pytest.raises(SystemExit) as err:
        main(["demo"])
    assert "make train" in str(err.value) and "anydoor convert" in str(err.value)
    with pytest.raises(SystemExit, match="does not exist(.|\n)*make train"):
        main(["demo", "--model", str(tmp_path / "missing")])


def test_newest_export_is_the_latest_make_train_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError):
        newest_export()
    for n in (0, 1):
        (tmp_path / f"outputs/tiny/version_{n}/export/pretrained").mkdir(parents=True)
        os.utime(tmp_path / f"outputs/tiny/version_{n}/export/pretrained", (1000 + n, 1000 + n))
    (tmp_path / "outputs/tiny/version_2/checkpoints").mkdir(parents=True)  # still training: no export yet
    assert newest_export() == "outputs/tiny/version_1/export/pretrained"
    assert "make train" in HOW_TO_GET_A_MODEL


def test_cli_help_is_instant_and_imports_no_gradio():
    code = ("import sys; from src.cli.main import build_parser; build_parser().parse_args(['demo', '--port', '1']); "
            "print(sorted(m for m in ('torch', 'gradio', 'diffusers', 'demo.app') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.stdout.strip() == "[]"
    listed = subprocess.run([sys.executable, "-m", "src.cli.main", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in listed.stdout


@pytest.fixture(scope="module")
def pipe(demo_model):
    from demo.generation import load_pipeline

    return load_pipeline(demo_model, "cpu")[0]


def test_serving_refuses_a_non_local_address_unless_allowed(pipe):
    with pytest.raises(ValueError, match="not a local address"):
        with serving(pipe, model_label="m", device_label="cpu", host="0.0.0.0", port=free_port()):
            pass
    port = free_port()
    with serving(pipe, model_label="m", device_label="cpu", host="0.0.0.0", port=port, allow_remote=True) as served:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200
        assert served.share_url is None  # no public link unless asked


def test_the_private_folder_is_cleaned_while_serving_and_removed_after(pipe, scene_files, tmp_path):
    before = os.environ.get("GRADIO_TEMP_DIR")
    with serving(pipe, model_label="m", device_label="cpu", port=free_port(), keep_minutes=1 / 60) as served:
        folder = served.temp_dir
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
        client = Client(served.url, verbose=False, analytics_enabled=False, download_files=str(tmp_path))
        client.predict(handle_file(str(scene_files["reference"])), None, handle_file(str(scene_files["target"])),
                       "10 10 100 100", None, False, "ddim", 1, 1.0, 0, False, "box", 0, api_name="/generate")
        assert list(folder.rglob("anydoor_seed0.png"))
        deadline = time.monotonic() + 15  # kept 1 s, swept every second
        while list(folder.rglob("*.png")) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not list(folder.rglob("*.png"))
    assert not folder.exists() and os.environ.get("GRADIO_TEMP_DIR") == before


def test_anydoor_demo_serves_until_stopped_and_leaves_nothing(demo_model):
    """The command `make demo` runs, end to end: it serves the page, and a `kill` removes its files."""
    import re
    import signal

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "src.cli.main", "demo", "--model", str(demo_model), "--port",
                             str(port), "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        line = proc.stdout.readline()
        while line and "AnyDoor demo:" not in line:
            line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line
        folder = re.search(r"its files: (\S+),", line).group(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200
        assert os.path.isdir(folder)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0 and not os.path.exists(folder)


def test_a_busy_port_is_a_message(pipe):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve on 127.0.0.1:{port}.*pass another --port"):
            with serving(pipe, model_label="m", device_label="cpu", port=port):
                pass
