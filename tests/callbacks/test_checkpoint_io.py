"""SafeCheckpointIO: atomic writes next to the destination, weights-only loading, uncached remote files."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from callbacks.checkpoint_io import CheckpointLoadError, SafeCheckpointIO
from tests.src.cli.support import malicious_checkpoint, serve_folder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    with serve_folder(www) as base:
        yield www, base


def test_save_replaces_atomically_and_records_the_step(tmp_path):
    io = SafeCheckpointIO()
    target = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"global_step": 3, "optimizer_states": [], "w": torch.ones(2)}, target)
    io.save_checkpoint({"global_step": 5, "optimizer_states": [], "w": torch.full((2,), 5.0)}, target)
    assert torch.load(target, weights_only=True)["global_step"] == 5
    assert io.saved == {str(target): 5}
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporaries


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    io = SafeCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "optimizer_states": []}, target)
    with pytest.raises(Exception):
        io.save_checkpoint({"global_step": 2, "bad": lambda: None}, target)  # a lambda does not pickle
    assert torch.load(target, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_stale_temporary_of_a_killed_writer_goes_at_the_next_save(tmp_path):
    stale = tmp_path / ".last.ckpt.tmp-0badc0de"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".other.ckpt.tmp-12345678"  # another file's temporary: not ours to remove
    other.write_bytes(b"x")
    SafeCheckpointIO().save_checkpoint({"global_step": 1}, tmp_path / "last.ckpt")
    assert not stale.exists() and other.exists()


def test_local_malicious_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = malicious_checkpoint(tmp_path / "last.ckpt", marker)
    with pytest.raises(CheckpointLoadError, match=r"refused to load .*last.ckpt: it references io.open") as err:
        SafeCheckpointIO().load_checkpoint(path, weights_only=False)  # the caller's False is overridden
    assert "\n" not in str(err.value)
    assert not marker.exists()
    # the file really is malicious: a plain pickle load runs its code
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_truncated_and_missing_checkpoints_give_one_line(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"w": torch.zeros(1000)}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointLoadError, match=r"cannot read checkpoint .*cut.ckpt: .*truncated"):
        SafeCheckpointIO().load_checkpoint(cut)
    with pytest.raises(CheckpointLoadError, match=r"checkpoint not found: .*nothere.ckpt"):
        SafeCheckpointIO().load_checkpoint(tmp_path / "nothere.ckpt")


def test_remote_malicious_checkpoint_is_refused(served, tmp_path):
    www, base = served
    marker = tmp_path / "pwned"
    malicious_checkpoint(www / "last.ckpt", marker)
    with pytest.raises(CheckpointLoadError, match=rf"refused to load {base}/last.ckpt: it references io.open"):
        SafeCheckpointIO().load_checkpoint(f"{base}/last.ckpt")
    assert not marker.exists()


def test_two_urls_with_the_same_file_name_give_their_own_contents(served):
    www, base = served
    for step, folder in ((1, "a"), (2, "b")):
        (www / folder).mkdir()
        torch.save({"global_step": step, "w": torch.full((3,), float(step))}, www / folder / "last.ckpt")
    io = SafeCheckpointIO()
    assert io.load_checkpoint(f"{base}/a/last.ckpt")["global_step"] == 1
    assert io.load_checkpoint(f"{base}/b/last.ckpt")["global_step"] == 2
    torch.save({"global_step": 3}, www / "a" / "last.ckpt")  # the file changed on the server: no stale copy
    assert io.load_checkpoint(f"{base}/a/last.ckpt")["global_step"] == 3
    with pytest.raises(CheckpointLoadError, match=r"cannot download checkpoint .*/c/last.ckpt: (?i:.*not found)"):
        io.load_checkpoint(f"{base}/c/last.ckpt")


KILL_DURING_SAVE = textwrap.dedent("""
    import sys, torch
    from callbacks.checkpoint_io import SafeCheckpointIO
    io, target = SafeCheckpointIO(), sys.argv[1]
    io.save_checkpoint({"global_step": 1, "w": torch.zeros(8)}, target)
    print("first saved", flush=True)
    big = torch.ones(int(sys.argv[2]) // 4)  # float32: sys.argv[2] bytes
    while True:
        io.save_checkpoint({"global_step": 2, "w": big}, target)
""")


def _mount_tmpfs(folder: Path, size_mb: int) -> bool:
    folder.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.slow
def test_sigkill_during_a_large_save_on_another_filesystem_keeps_the_previous_checkpoint(tmp_path):
    """Outputs on a tmpfs, the system temp folder on the root filesystem (the NFS/Lustre-beside-local-/tmp
    case): a SIGKILL while the big checkpoint is written leaves the previous one whole."""
    size = 192 * 2**20
    outputs = tmp_path / "outputs"
    if not _mount_tmpfs(outputs, 3 * size // 2**20):
        pytest.skip("cannot mount a tmpfs here (needs root); the same-filesystem case is covered above")
    try:
        target = outputs / "last.ckpt"
        assert os.stat(outputs).st_dev != os.stat(tmp_path).st_dev  # really another filesystem
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
        proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_SAVE, str(target), str(size)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "first saved"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # kill once the big write is under way
            partial = [p for p in outputs.iterdir() if p.name.startswith(".last.ckpt.tmp-")]
            if partial and 0 < partial[0].stat().st_size < size // 2:
                break
            time.sleep(0.002)
        else:
            pytest.fail("never saw the big checkpoint being written")
        proc.kill()
        proc.wait(timeout=30)
        assert torch.load(target, weights_only=True)["global_step"] == 1  # the previous checkpoint, whole
        assert not list(tmp_path.glob("tmp*"))  # nothing went through the system temp folder
        SafeCheckpointIO().save_checkpoint({"global_step": 3}, target)  # the next save clears the leftover
        assert [p.name for p in outputs.iterdir()] == ["last.ckpt"]
    finally:
        subprocess.run(["umount", str(outputs)], check=False)
