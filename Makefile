# Every target bootstraps .venv on first use, so `make train` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DATA ?= data/synthetic
CONFIG ?= configs/tiny.yaml
# Tiny models on 2 cores run faster on one intra-op thread each (tests also start loader/DDP processes).
TEST_THREADS ?= 1

.DEFAULT_GOAL := help
.PHONY: help install test test-all train shards eval demo bench bench-data bench-train bench-infer bench-convert plan-memory gpu-check clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -c requirements/constraints.txt -e ".[dev]"
	touch $@

install: $(STAMP)  ## create .venv and install the project + dev extra (once; re-runs are instant)

test: $(STAMP)  ## run the test suite (CPU, skips tests marked slow)
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)  ## run every test, slow ones included
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -q

$(DATA)/train/manifest.json: | $(STAMP)
	$(VENV)/bin/anydoor shards synthetic --out $(DATA)/train --seed 0
$(DATA)/val/manifest.json: | $(STAMP)
	$(VENV)/bin/anydoor shards synthetic --out $(DATA)/val --seed 1000 --videos 16 --images 16

shards: $(DATA)/train/manifest.json $(DATA)/val/manifest.json  ## build the embedded synthetic WebDataset shards (train + held-out)

# One intra-op thread: on a small shared CPU, 2 threads spin against the data worker (0.7 vs 3 s/step measured).
TRAIN_THREADS ?= 1
train: shards  ## train the tiny embedded default on CPU (<= 30 min); logs and samples under outputs/tiny
	OMP_NUM_THREADS=$(TRAIN_THREADS) $(VENV)/bin/lightning fit --config $(CONFIG)

eval: shards  ## score the `make train` checkpoint against baselines on the held-out synthetic set
	$(VENV)/bin/anydoor eval --config configs/eval_tiny.yaml

# The newest `make train` export, or MODEL=DIR (e.g. an `anydoor convert` folder; DEMO_ARGS="--device cuda").
demo: $(STAMP)  ## serve the web demo on http://127.0.0.1:7860 (the newest `make train` model; MODEL=DIR for another)
	$(VENV)/bin/anydoor demo $(if $(MODEL),--model $(MODEL)) $(DEMO_ARGS)

bench: bench-data bench-train bench-infer  ## run every benchmark

$(DATA)/bench/manifest.json: | $(STAMP)
	$(VENV)/bin/anydoor shards synthetic --out $(DATA)/bench --seed 2000 --videos 24 --images 24 --frames 12 --frame-size 1280x720

# AGAINST=DIR: A/B against another checkout's loader (REPEAT rounds, alternating, separate processes).
bench-data: $(DATA)/bench/manifest.json  ## loader samples/s per CPU-second and page faults: decode, pairs, whole loader, workers
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.bench_data --shards $(DATA)/bench $(if $(AGAINST),--against $(AGAINST) --repeat $(or $(REPEAT),3))

bench-train: $(STAMP)  ## training step time of the tiny default on CPU
	OMP_NUM_THREADS=$(TRAIN_THREADS) $(PY) -m benchmarks.bench_train

plan-memory: $(STAMP)  ## full-size training memory per GPU, planned on fake tensors (no GPU; ~15 min on 2 busy cores)
	$(PY) -m benchmarks.plan_memory

GPU_CHECK_OUT ?= outputs/gpu_check
gpu-check: $(STAMP)  ## on a CUDA machine: real peaks beside the plan, training and inference speed (< 8 min on an H200)
	$(PY) -m benchmarks.gpu_check --out $(GPU_CHECK_OUT)

bench-infer: $(STAMP)  ## one generation, part by part, and peak memory
	$(PY) -m benchmarks.bench_infer

BENCH_DIR ?= /tmp/anydoor-bench-convert
bench-convert: $(STAMP)  ## convert a synthesised full-size authors' checkpoint (needs ~23 GB free disk in BENCH_DIR)
	$(PY) -m benchmarks.bench_convert --workdir $(BENCH_DIR)

clean:  ## remove outputs and generated data (keeps .venv)
	rm -rf outputs $(DATA)
