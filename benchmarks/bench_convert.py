"""Convert a full-size checkpoint in the authors' layout and report time and peak memory.

    python -m benchmarks.bench_convert --workdir /tmp/anydoor-convert   # needs ~23 GB of free disk

The released weights cannot be downloaded here, so the checkpoint is synthesised from the key
manifest (`shared/reference/anydoor_official_keys.tsv`): every key with its shape, random values, the
released DDPM schedule, plus ``--optimizer-gb`` of optimizer state that the converter must not read.
The conversion runs in a child process (`anydoor convert`) so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

DEFAULT_MANIFEST = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "anydoor_official_keys.tsv"


# The child reports its own high-water mark: a forked child's rusage would include the parent's pages.
_CHILD = """
import sys
from src.cli.main import main
code = main(["convert", *sys.argv[1:]])
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
sys.exit(code)
"""


def synthesize_checkpoint(manifest: Path, out: Path, optimizer_gb: float, seed: int = 0) -> int:
    """Write a Lightning-style checkpoint with the manifest's keys; returns the weights' byte count."""
    from diffusers import DDIMScheduler

    gen = torch.Generator().manual_seed(seed)
    state, nbytes = {}, 0
    for line in manifest.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        tensor = torch.empty(json.loads(shape), dtype=getattr(torch, dtype))
        if tensor.numel():
            tensor.normal_(0, 0.02, generator=gen)
        state[key] = tensor
        nbytes += tensor.numel() * tensor.element_size()
    released = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    state["betas"] = released.betas.float()
    per_slot = int(optimizer_gb * 1e9 / 4 / 2)
    optimizer = {"state": {0: {"exp_avg": torch.zeros(per_slot), "exp_avg_sq": torch.zeros(per_slot)}}}
    torch.save({"state_dict": state, "optimizer_states": [optimizer], "epoch": 1, "global_step": 8687}, out)
    return nbytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="scratch folder (checkpoint + converted model)")
    parser.add_argument("--manifest", default=str(DEFAULT_MANIFEST))
    parser.add_argument("--optimizer-gb", type=float, default=3.0)
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and converted model")
    args = parser.parse_args(argv)

    manifest = Path(args.manifest)
    if not manifest.is_file():
        parser.error(f"manifest {manifest} not found (pass --manifest)")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ckpt, out = work / "epoch=1-step=8687.ckpt", work / "converted"
    if out.exists():
        parser.error(f"{out} exists; remove it or choose another --workdir")
    start = time.perf_counter()
    weight_bytes = synthesize_checkpoint(manifest, ckpt, args.optimizer_gb)
    res: dict[str, object] = {"synthesize_s": round(time.perf_counter() - start, 1),
                              "checkpoint_gb": round(ckpt.stat().st_size / 1e9, 2),
                              "weights_gb": round(weight_bytes / 1e9, 2)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, str(ckpt), "--out", str(out)], check=True,
                          stdout=subprocess.PIPE, text=True)
    res["convert_s"] = round(time.perf_counter() - start, 1)
    print(done.stdout.rsplit("\n", 2)[0])
    res["convert_peak_rss_gib"] = round(int(done.stdout.split()[-1]) / 2**20, 2)
    res["converted_gb"] = round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e9, 2)
    print(json.dumps(res, indent=2))
    if not args.keep:
        ckpt.unlink()
        shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
