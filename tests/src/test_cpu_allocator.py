"""keep_freed_memory: large blocks come from the heap and stay there when freed (glibc's own books)."""

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# mallinfo2 (glibc >= 2.33): hblkhd = bytes in mmapped blocks, fordblks = free bytes kept in the heap
PROBE = """
import ctypes, sys
from src.cpu_allocator import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
block = libc.malloc(64 << 20)
mapped = libc.mallinfo2().hblkhd
libc.free(block)
print(applied, mapped >> 20, libc.mallinfo2().fordblks >> 20)
"""


def _probe(mode: str) -> list[str]:
    return subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, cwd=ROOT, check=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}).stdout.split()


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc >= 2.33 (mallinfo2)")
def test_large_blocks_come_from_the_heap_and_stay_there_when_freed():
    applied, mapped_mib, free_kept_mib = _probe("default")
    assert applied == "False" and int(mapped_mib) >= 64 and int(free_kept_mib) < 64  # mmapped, then unmapped
    applied, mapped_mib, free_kept_mib = _probe("keep")
    assert applied == "True" and int(mapped_mib) == 0 and int(free_kept_mib) >= 64  # heap, kept for reuse
