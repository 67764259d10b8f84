"""Ctrl-C / SIGTERM on a real `lightning fit` subprocess: configs/tiny.yaml (its callbacks, export and
sample grid included) with the test-sized model and random pairs served by a data worker process."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.src.cli.support import logged_steps
from tests.fakes import TINY_MODEL_KWARGS

ROOT = Path(__file__).resolve().parents[3]


def write_override(tmp_path: Path, **trainer: object) -> Path:
    """A second --config over configs/tiny.yaml: small model, random pairs, outputs under tmp_path."""
    model = {k: (list(v) if isinstance(v, tuple) else v) for k, v in TINY_MODEL_KWARGS.items()}
    model["unet_config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model["unet_config"].items()}
    model.update(collage_residual=False, train_unet_encoder=False)  # tiny.yaml's x0 recipe vs the test model's v-prediction
    out = tmp_path / "out"
    config = {
        "trainer": {"max_time": None, "max_steps": 100_000, "default_root_dir": str(out), "val_check_interval": 100_000,
                    "limit_val_batches": 1, "log_every_n_steps": 1,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(out), "name": "tiny"}}, **trainer},
        "model": {"init_args": model},
        "data": {"class_path": "tests.src.cli.support.WorkerPairs", "init_args": {"batch_size": 2, "num_workers": 1}},
    }
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Run:
    """`lightning fit` in its own session (a process group, as a terminal's foreground job)."""

    def __init__(self, tmp_path: Path, *extra: str, env: dict | None = None, name: str = "run") -> None:
        self.steps = tmp_path / f"{name}.steps"
        self.err_path = tmp_path / f"{name}.err"
        cmd = [sys.executable, "-m", "src.cli.train", "fit", "--config", "configs/tiny.yaml",
               "--config", str(tmp_path / "override.yaml"),
               "--trainer.callbacks+", "tests.src.cli.support.StepLog", "--trainer.callbacks.path", str(self.steps), *extra]
        full_env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {}))
        self.err = self.err_path.open("w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=self.err,
                                     start_new_session=True)

    def wait_for_step(self, step: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(s >= step for s in logged_steps(self.steps)):
                return
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (rc {self.proc.returncode}) before step {step}:\n{self.stderr()[-3000:]}")
            time.sleep(0.1)
        self.kill()
        pytest.fail(f"no step {step} within {timeout} s")

    def wait_for_text(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and text not in self.stderr() and self.proc.poll() is None:
            time.sleep(0.02)

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()
            self.err.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")


def saved_lines(stderr: str) -> list[str]:
    tail = stderr[stderr.index("Stopped by"):]
    return [line.strip() for line in tail.splitlines()[1:] if line.startswith("  ")]


def assert_no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if ".tmp-" in p.name or p.name.endswith(".partial")]


def test_ctrl_c_saves_checkpoint_and_export_then_exits_130(tmp_path):
    write_override(tmp_path)
    run = Run(tmp_path)
    run.wait_for_step(2)
    os.killpg(run.proc.pid, signal.SIGINT)  # Ctrl-C: the trainer and its data worker get it
    rc = run.finish()
    err = run.stderr()
    assert rc == 130, err[-3000:]
    assert "Traceback" not in err
    assert "SIGINT: finishing this step, then saving and exporting (SIGINT again quits at once" in err
    last_step = logged_steps(run.steps)[-1]
    assert f"Stopped by SIGINT at step {last_step}. Saved:" in err
    lines = saved_lines(err)
    ckpt = Path(next(line.split()[-1] for line in lines if line.startswith("checkpoint") and "last" in line))
    assert torch.load(ckpt, weights_only=True)["global_step"] == last_step  # resumable, at the stop step
    assert any(line.startswith("folder") and line.endswith("export/") for line in lines)
    assert (ckpt.parents[1] / "export" / "pretrained" / "model_index.json").is_file()
    assert f"Resume: the same command with --ckpt_path {ckpt}" in err
    assert_no_temporaries(tmp_path / "out")


@pytest.mark.slow
def test_sigterm_saves_and_the_run_resumes_from_last_ckpt(tmp_path):
    write_override(tmp_path)
    run = Run(tmp_path)
    run.wait_for_step(2)
    run.proc.send_signal(signal.SIGTERM)  # a cluster's preemption: the trainer process only
    assert run.finish() == 128 + signal.SIGTERM, run.stderr()[-3000:]
    stopped = logged_steps(run.steps)[-1]
    ckpt = next(Path(line.split()[-1]) for line in saved_lines(run.stderr()) if line.startswith("checkpoint"))
    assert torch.load(ckpt, weights_only=True)["global_step"] == stopped

    resumed = Run(tmp_path, "--ckpt_path", str(ckpt), "--trainer.max_steps", str(stopped + 2), name="resumed")
    assert resumed.finish() == 0, resumed.stderr()[-3000:]
    assert logged_steps(resumed.steps) == [stopped + 1, stopped + 2]  # continues, does not restart at 1


@pytest.mark.slow
def test_a_second_ctrl_c_quits_at_once_without_leaving_partial_files(tmp_path):
    write_override(tmp_path)
    run = Run(tmp_path)
    run.wait_for_step(2)
    os.killpg(run.proc.pid, signal.SIGINT)
    run.wait_for_text("SIGINT: finishing this step")
    os.killpg(run.proc.pid, signal.SIGINT)
    rc = run.finish(timeout=60)
    err = run.stderr()
    assert rc == 1, err[-3000:]
    assert "SIGINT again: quitting now, without saving" in err
    assert "Stopped by" not in err
    assert_no_temporaries(tmp_path / "out")
    for ckpt in (tmp_path / "out").rglob("*.ckpt"):  # whatever was written is whole
        torch.load(ckpt, weights_only=True)


@pytest.mark.slow
@pytest.mark.ddp
def test_one_rank_signalled_stops_every_rank_at_the_same_step(tmp_path):
    # No SampleLogger/ExportOnTrainEnd: both ask trainer.log_dir (a collective) on rank 0 only and deadlock
    # under DDP (reported); without them StopOnSignal writes last.ckpt itself, from every rank.
    write_override(tmp_path, devices=2, strategy="ddp", callbacks=[])
    run = Run(tmp_path)
    run.wait_for_step(2)
    run.proc.send_signal(signal.SIGTERM)  # rank 0 only; rank 1 learns of it through the agreed stop
    assert run.finish() == 128 + signal.SIGTERM, run.stderr()[-3000:]
    rank0, rank1 = logged_steps(run.steps, 0), logged_steps(run.steps, 1)
    assert rank0[-1] == rank1[-1]
    ckpt = next(Path(line.split()[-1]) for line in saved_lines(run.stderr()) if line.startswith("checkpoint"))
    assert torch.load(ckpt, weights_only=True)["global_step"] == rank0[-1]


@pytest.mark.slow
def test_slurm_requeue_goes_through_lightning_and_the_requeued_job_resumes(tmp_path):
    """SIGUSR1 (``#SBATCH --signal=SIGUSR1@90``): Lightning saves hpc_ckpt_1.ckpt and runs ``scontrol requeue``;
    SLURM's SIGTERM then stops the run like ours; the requeued job (same command) resumes from hpc_ckpt."""
    write_override(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "anydoor", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_NODEID": "0", "SLURM_NODELIST": "127.0.0.1"}
    run = Run(tmp_path, env=env)
    run.wait_for_step(2)
    run.proc.send_signal(signal.SIGUSR1)
    hpc = tmp_path / "out" / "hpc_ckpt_1.ckpt"
    deadline = time.monotonic() + 120
    while not (hpc.is_file() and (tmp_path / "scontrol.log").is_file()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 128 + signal.SIGTERM, run.stderr()[-3000:]
    at_requeue = torch.load(hpc, weights_only=True)["global_step"]

    requeued = Run(tmp_path, "--trainer.max_steps", str(at_requeue + 1), env=env, name="requeued")
    assert requeued.finish() == 0, requeued.stderr()[-3000:]
    assert logged_steps(requeued.steps) == [at_requeue + 1]
