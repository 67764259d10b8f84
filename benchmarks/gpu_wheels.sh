#!/bin/sh
# Wheels that benchmarks/gpu_check.py needs and the lent H200 image lacks (it has torch, lightning,
# timm, safetensors, opencv, huggingface_hub; no internet). Run here, in the repo root, where PyPI is
# reachable; .whl/ is git-ignored and travels with `carry: [".whl"]` (about 55 MB of the 64 MiB limit).
# Versions are those of requirements/constraints.txt; bitsandbytes (the 24 GB recipe's 8-bit AdamW)
# is optional: without it gpu_check skips the 8-bit rows.
set -eu
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  diffusers==0.42.1 importlib_metadata==10.2.0 lazy-importer==0.1.0 kornia==0.9.0 kornia_rs==0.2.0 bitsandbytes==0.50.2
du -sh .whl
