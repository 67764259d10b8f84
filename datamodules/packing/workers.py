"""Worker processes for packing that never outlive the command.

Three rules, each from a way a pack went wrong:

* a worker dies with its parent: killing only the parent (``kill -9``, a lost terminal) used to leave
  the pool's workers running forever, still writing shards while a re-run went on. On Linux the
  kernel kills the worker when the parent goes (``prctl(PR_SET_PDEATHSIG)``); elsewhere a thread in
  the worker polls ``os.getppid()``;
* a worker ignores SIGINT: Ctrl-C reaches every process of the terminal's group, and it is the
  parent's to handle (it stops the pool and prints one line, not one traceback per worker);
* the parent can stop its workers at once (``stop``), leaving a shard cut mid-way as a temporary
  file that the resumed run rewrites.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


def die_with_parent(parent: int) -> None:
    """Make this process end when process ``parent`` does (call it first thing in a child)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent was gone before the request took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()


def _init_worker(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)


@contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A fork pool whose workers die with this process and ignore Ctrl-C; leaving the block by an
    exception (Ctrl-C included) ends the workers at once instead of waiting for their shards."""
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_init_worker, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        for child in set(multiprocessing.active_children()) - before:  # the pool's workers (forked at the first submit)
            child.kill()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
