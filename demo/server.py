"""Serving the demo safely: this machine only unless told, no public link unless asked, one
generation at a time, and nothing a person uploads left behind.

- ``check_host``: a non-loopback address needs ``allow_remote`` (the page has no login: whoever
  reaches the port can use the model and upload files).
- Gradio writes uploads and the pictures it serves to ``GRADIO_TEMP_DIR``; each server gets its own
  fresh folder (mode 0700), which is deleted when it stops. Uploads are deleted as soon as they are
  read (``demo.app``); served pictures ``keep_minutes`` after they were made (Gradio's
  ``delete_cache``), so a result can still be downloaded for a while.
- Nothing leaves the machine: no analytics or version check, no share link, no MCP server, no run
  history in the browser.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
KEEP_MINUTES = 30
QUEUE_SIZE = 16  # waiting generations; more get "queue full" instead of piling up


def is_local(host: str) -> bool:
    """Loopback only: ``localhost``, 127.0.0.0/8, ``::1``."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_host(host: str, allow_remote: bool) -> None:
    if not is_local(host) and not allow_remote:
        raise ValueError(f"--host {host} is not a local address, and the demo has no login: anyone who can "
                         "reach it could use the model. Pass --allow-remote to serve it there anyway.")


def max_upload_bytes(max_pixels: int | None) -> int | None:
    """Uploads larger than an uncompressed 16-bit RGBA image at the pixel limit are refused unread."""
    return None if max_pixels is None else 8 * max_pixels + (1 << 20)


@dataclass
class Served:
    url: str  # on this machine
    share_url: str | None  # the public link, only with share=True
    blocks: Any  # gradio.Blocks
    temp_dir: Path


@contextmanager
def serving(pipe: Any, *, model_label: str, device_label: str, host: str = DEFAULT_HOST,
            port: int | None = DEFAULT_PORT, allow_remote: bool = False, share: bool = False,
            max_pixels: int | None = None, keep_minutes: float = KEEP_MINUTES) -> Iterator[Served]:
    """Start the demo for ``pipe`` in a background thread; stop it and delete its folder on exit."""
    check_host(host, allow_remote)
    temp_dir = Path(tempfile.mkdtemp(prefix="anydoor-demo-"))
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(temp_dir)  # read by Gradio when the app and its parts are built
    blocks = None
    try:
        from demo.app import DemoApp

        keep = max(1, int(keep_minutes * 60))
        app = DemoApp(pipe, model_label=model_label, device_label=device_label, max_pixels=max_pixels,
                      upload_root=temp_dir, keep_s=keep)
        blocks = app.build(delete_cache=(min(60, keep), keep))
        blocks.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
        try:
            _, url, share_url = blocks.launch(
                server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
                show_error=False, max_file_size=max_upload_bytes(max_pixels), ssr_mode=False, mcp_server=False,
                enable_monitoring=False, run_history=False, footer_links=["api"])
        except OSError as err:
            raise OSError(f"cannot serve on {host}:{port} ({err}); pass another --port") from None
        yield Served(url, share_url, blocks, temp_dir)
    finally:
        if blocks is not None:
            blocks.close()
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous
        shutil.rmtree(temp_dir, ignore_errors=True)


def serve(model: str | Path, *, device: str | None = None, dtype: str | None = None, **kwargs: Any) -> None:
    """Load the model folder and serve it until Ctrl-C (``anydoor demo``)."""
    from demo.generation import load_pipeline

    pipe, device_label = load_pipeline(model, device, dtype)
    with serving(pipe, model_label=str(model), device_label=device_label, **kwargs) as served:
        public = f", public link {served.share_url}" if served.share_url else ""
        print(f"AnyDoor demo: {served.url}{public} (model {model}, {device_label}; its files: {served.temp_dir}, "
              "removed on exit; Ctrl-C stops it)", flush=True)
        previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up like Ctrl-C
        try:
            served.blocks.block_thread()  # returns on Ctrl-C; leaving the block stops the server
        finally:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
