import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.ddp
def test_two_process_gloo_ddp_reads_different_shards(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    shards = tmp_path / "shards"
    subprocess.run([sys.executable, "-m", "src.cli.main", "shards", "synthetic", "--out", str(shards), "--seed", "5",
                    "--videos", "4", "--images", "8", "--items-per-shard", "2", "--workers", "1", "--no-progress"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "tests.models.ddp_run", str(shards), str(tmp_path / "run")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["steps"] == 3 for r in records)
    assert len(records[0]["seen"]) == len(records[1]["seen"]) == 6
    assert not set(records[0]["seen"]) & set(records[1]["seen"])  # disjoint shards per rank
    assert records[0]["checksum"] == pytest.approx(records[1]["checksum"], rel=1e-9)  # gradients were synced
