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
.PHONY: help install test test-all train shards eval bench bench-data bench-train bench-infer bench-convert clean

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

bench: bench-data bench-train bench-infer  ## run every benchmark

$(DATA)/bench/manifest.json: | $(STAMP)
	$(VENV)/bin/anydoor shards synthetic --out $(DATA)/bench --seed 2000 --videos 24 --images 24 --frames 12 --frame-size 1280x720

# AGAINST=DIR: A/B against another checkout's loader (REPEAT rounds, alternating, separate processes).
bench-data: $(DATA)/bench/manifest.json  ## loader samples/s per CPU-second and page faults: decode, pairs, whole loader, workers
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.bench_data --shards $(DATA)/bench $(if $(AGAINST),--against $(AGAINST) --repeat $(or $(REPEAT),3))

bench-train: $(STAMP)  ## training step time and peak memory (tiny on CPU; full size on a GPU if present)
	$(PY) -m benchmarks.bench_train

bench-infer: $(STAMP)  ## one generation, part by part, and peak memory
	$(PY) -m benchmarks.bench_infer

BENCH_DIR ?= /tmp/anydoor-bench-convert
bench-convert: $(STAMP)  ## convert a synthesised full-size authors' checkpoint (needs ~23 GB free disk in BENCH_DIR)
	$(PY) -m benchmarks.bench_convert --workdir $(BENCH_DIR)

clean:  ## remove outputs and generated data (keeps .venv)
	rm -rf outputs $(DATA)
