"""The streaming pipeline: small named stages composed with webdataset, ending in whole batches.

Per source: shard list -> explicit node split -> explicit worker split -> resampled shards
(``wds.ResampledShards``) -> tar reading -> shuffle buffer. Sources are mixed by weight, each
sample becomes a training pair (``PairBuilder``) and pairs are collated into batches *in the
stream* (one ``default_collate``, into shared memory when in a worker), so every batch can carry a
small ``"__stream__"`` record: its slot, input position and skip counts.

A training **slot** is one (rank, worker) stream of one epoch. Its *input order* (which shards, the
shuffle, the mix) comes from ``SeedSequence([seed, epoch, rank, slot])`` alone, and the pair built
from its i-th input draws from its own generator keyed by (seed, epoch, rank, slot, i). Nothing
about an input's pair depends on the inputs before it, so a slot fast-forwards to input ``n`` by
reading and dropping ``n`` inputs *without decoding them*: that is how a resumed run continues
exactly where it stopped (``stream_loader.StreamLoader`` keeps the positions and plans the pass).
Validation reads its shards in order, deals samples round-robin to ranks and workers, and seeds
each pair from its key, so every epoch sees the same pairs.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np
import torch
import webdataset as wds

from datamodules.components.shard_format import SampleError

log = logging.getLogger(__name__)
PAIR_ERRORS = (ValueError, KeyError, IndexError, TypeError, cv2.error)  # what a bad sample can raise
STREAM_KEY = "__stream__"  # the per-batch record; StreamLoader removes it before anyone sees the batch
# Why a sample was skipped (docs/data.md lists them); counts travel as tuples in this order.
SKIP_REASONS = ("unreadable_shard", "bad_metadata", "missing_file", "corrupt_image", "corrupt_mask", "size_mismatch", "bad_pair")
_STREAM, _PAIR = 0, 1  # spawn-key prefixes: input-order generators vs per-input pair generators


def worker_info() -> tuple[int, int, int, int]:
    """(rank, world size, worker id, workers) as webdataset sees them (env RANK/WORLD_SIZE or torch.distributed)."""
    return wds.utils.pytorch_worker_info()


def skip_reason(error: BaseException) -> str:
    if isinstance(error, SampleError):
        return error.reason
    if isinstance(error, KeyError):  # a member the sample should have: "json", "003.jpg", ...
        key = str(error.args[0]) if error.args else ""
        return "missing_file" if key == "json" or key.endswith((".jpg", ".png")) else "bad_metadata"
    return "bad_pair"


class SkipCounter:
    """Counts skipped samples by reason and logs the first ones; raises after too many failures in a row.

    A stream of only bad samples would otherwise retry forever (resampled shards never end).
    """

    def __init__(self, start: Iterable[int] = (), max_consecutive: int = 200, log_first: int = 20) -> None:
        self.counts = dict.fromkeys(SKIP_REASONS, 0)
        for reason, n in zip(SKIP_REASONS, start):
            self.counts[reason] = int(n)
        self.max_consecutive, self.log_first = max_consecutive, log_first
        self.consecutive = 0
        self.last = ""

    def ok(self) -> None:
        self.consecutive = 0

    def skip(self, where: str, error: BaseException, reason: str | None = None) -> None:
        reason = reason or skip_reason(error)
        self.counts[reason] += 1
        self.consecutive += 1
        self.last = f"{where}: {reason}: {type(error).__name__}: {error}"
        total = sum(self.counts.values())
        if total <= self.log_first or total % 100 == 0:
            log.warning("skipped sample %s (skipped so far: %s)", self.last, {k: v for k, v in self.counts.items() if v})
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(f"{self.consecutive} samples in a row could not be read; last: {self.last}")

    def tar_handler(self, error: BaseException) -> bool:
        """webdataset handler for unreadable shards/tar members: count, log, continue."""
        self.skip("shard", error, "unreadable_shard")
        return True

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(self.counts[r] for r in SKIP_REASONS)


class EmptyGuard:
    """Stops a resampled source whose shards hold no samples at all (it would otherwise spin forever)."""

    def __init__(self, source: str, patience: int) -> None:
        self.source, self.patience = source, patience
        self.shards = self.samples = 0

    def urls(self, src: Iterable[dict]) -> Iterator[dict]:
        for url in src:
            self.shards += 1
            if self.samples == 0 and self.shards > self.patience:
                raise RuntimeError(f"source {self.source!r}: {self.patience} shards read and not one sample; last {url['url']}")
            yield url

    def count(self, src: Iterable[dict]) -> Iterator[dict]:
        for sample in src:
            self.samples += 1
            yield sample


# ---- worker set-up ----

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Keep per-sample buffers in the heap instead of mapping and unmapping them for every sample.

    glibc serves blocks above its (adaptive) mmap threshold with a fresh ``mmap`` and returns them
    with ``munmap``; a decoded 1280x720 frame or a 512 px float crop is such a block, so every
    sample paid ~4k page faults (the kernel zero-fills each new page). A fixed threshold of 32 MiB
    (glibc's maximum) and a trim threshold of 256 MiB keep those blocks in the heap for reuse; the
    price is up to 256 MiB of freed memory kept per process. Returns False where there is no glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


def init_worker(tune_allocator: bool, _worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the allocator. (Not ``cv2.setNumThreads``: called in a forked
    worker after the parent used OpenCV's thread pool, it can wait forever on the pool's lock.)"""
    if tune_allocator:
        tune_malloc()


# ---- stages ----

def split_shards(urls: list[str], rank: int, world: int, worker: int, workers: int) -> list[str]:
    """This worker's share of the shards: by node, then by worker (all of them when too few to split)."""
    mine = list(urls)
    if world > 1 and len(mine) >= world:
        mine = mine[rank::world]
    if workers > 1 and len(mine) >= workers:
        mine = mine[worker::workers]
    return mine


def shuffle_samples(src: Iterable[dict], bufsize: int, rng: np.random.Generator) -> Iterator[dict]:
    """Reservoir shuffle across shard boundaries (a sample leaves once the buffer is full)."""
    buf: list[dict] = []
    for sample in src:
        if len(buf) < bufsize:
            buf.append(sample)
            continue
        k = int(rng.integers(len(buf)))
        buf[k], sample = sample, buf[k]
        yield sample
    rng.shuffle(buf)
    yield from buf


def mix_sources(streams: list[Iterator[dict]], weights: list[float], rng: np.random.Generator) -> Iterator[dict]:
    """Draw the next sample's source by weight; an exhausted source leaves the mix."""
    streams, w = list(streams), np.asarray(weights, dtype=np.float64)
    while streams:
        k = int(rng.choice(len(streams), p=w / w.sum()))
        try:
            yield next(streams[k])
        except StopIteration:
            del streams[k]
            w = np.delete(w, k)


def build_pairs(src: Iterable[tuple[int, dict]], builder: Callable, rng_for: Callable[[int, dict], np.random.Generator],
                skips: SkipCounter) -> Iterator[tuple[int, dict]]:
    """(input index, shard sample) -> (input index, training pair); bad samples are counted and skipped."""
    for i, sample in src:
        try:
            pair = builder(sample, rng_for(i, sample))
        except PAIR_ERRORS as e:
            skips.skip(str(sample.get("__url__", "?")) + ":" + str(sample.get("__key__", "?")), e)
            continue
        skips.ok()
        yield i, pair


class BatchBuffers:
    """Batch arrays reused from batch to batch when the loader runs in this process.

    A fresh 32 MiB batch tensor costs 8192 page faults (the kernel hands out zeroed 4 KiB pages:
    ~13 ms per 32 MiB on the development machine, as long as the copy itself); reusing arrays costs
    none. An array is reused only when no tensor made from it is alive: ``torch.from_numpy`` keeps
    a reference to the array until the last tensor or view on it is gone, so its reference count
    says whether a consumer still holds the batch (a kept batch simply gets new arrays).
    """

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        self.sets: list[tuple[dict[str, np.ndarray], list[int]]] = []  # arrays, their reference counts when unused

    @staticmethod
    def _refs(arrays: dict[str, np.ndarray]) -> list[int]:
        return [sys.getrefcount(a) for a in arrays.values()]

    def get(self, layout: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, np.ndarray]:
        for arrays, unused in self.sets:
            if self._refs(arrays) == unused and all((a.shape, a.dtype) == layout[k] for k, a in arrays.items()):
                return arrays
        arrays = {k: np.empty(shape, dtype) for k, (shape, dtype) in layout.items()}
        if len(self.sets) < self.keep:
            self.sets.append((arrays, self._refs(arrays)))
        return arrays


def collate_pairs(pairs: list[dict[str, np.ndarray]], buffers: BatchBuffers | None = None) -> dict[str, torch.Tensor]:
    """Stack pairs (dicts of numpy arrays) into a batch of tensors.

    In a DataLoader worker: ``default_collate``, which stacks straight into shared memory, so the
    batch crosses to the main process without another copy. In the main process: ``np.stack`` into
    reused ``buffers``.
    """
    if torch.utils.data.get_worker_info() is not None or buffers is None:
        return torch.utils.data.default_collate(pairs)
    first = {k: np.asarray(v) for k, v in pairs[0].items()}
    out = buffers.get({k: ((len(pairs), *v.shape), v.dtype) for k, v in first.items()})
    for k, arr in out.items():
        np.stack([p[k] for p in pairs], out=arr)
    return {k: torch.from_numpy(arr) for k, arr in out.items()}


def make_batches(pairs: Iterator[tuple[int, dict]], batch_size: int, count: int | None,
                 record: Callable[[int], dict]) -> Iterator[dict]:
    """Up to ``count`` batches of ``batch_size`` pairs (the last may be short when ``pairs`` ends);
    ``record(inputs read)`` becomes each batch's ``STREAM_KEY``."""
    buffers = BatchBuffers()
    for _ in itertools.count() if count is None else range(count):
        chunk = list(itertools.islice(pairs, batch_size))
        if not chunk:
            return
        batch = collate_pairs([pair for _, pair in chunk], buffers)
        batch[STREAM_KEY] = record(chunk[-1][0] + 1)
        yield batch


def key_rng(seed: int, sample: dict) -> np.random.Generator:
    """A generator fixed by the sample's key: the validation pair never changes between epochs."""
    digest = hashlib.blake2b(f"{sample.get('__url__', '')}/{sample.get('__key__', '')}".encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


# ---- the datasets ----

@dataclass(frozen=True)
class SlotStart:
    """Where one slot starts in a pass: inputs already read this epoch, skips so far, batches still to make."""

    inputs: int
    skipped: tuple[int, ...]
    batches: int


@dataclass(frozen=True)
class Plan:
    """What the next pass over a ``TrainStream`` does; set by the loader in the main process before workers start.

    DataLoader worker ``j`` plays slot ``(j + rotation) % workers``, so a pass resumed after ``k``
    batches hands out the next batch from the slot that would have made it. ``salt`` != 0 gives
    fresh input orders (a resume whose data layout changed, so positions cannot carry over).
    ``slots`` None: every slot starts the epoch from its beginning.
    """

    epoch: int = 0
    rotation: int = 0
    salt: int = 0
    slots: tuple[SlotStart, ...] | None = None


class TrainStream(torch.utils.data.IterableDataset):
    """Endless, mixed, resampled pairs in batches; each pass (epoch) yields ``len(self)`` batches per rank."""

    def __init__(self, sources: dict[str, list[str]], weights: dict[str, float], builder: Callable, *, seed: int = 0,
                 samples_per_epoch: int = 10_000, batch_size: int = 1, num_workers: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 256) -> None:
        super().__init__()
        self.sources = {k: v for k, v in sources.items() if weights.get(k, 0) > 0}
        if not self.sources:
            raise ValueError(f"no source has a positive weight (sources {sorted(sources)}, weights {weights})")
        self.weights = [float(weights[k]) for k in self.sources]
        self.builder, self.seed, self.shuffle_buffer = builder, seed, shuffle_buffer
        self.batch_size, self.workers, self.world = batch_size, max(num_workers, 1), world_size
        # whole batches per slot, so len(DataLoader) is exact and every slot makes the same number
        self.batches_per_slot = -(-samples_per_epoch // (world_size * self.workers * batch_size))
        self.plan = Plan()

    def __len__(self) -> int:
        return self.batches_per_slot * self.workers

    def layout(self) -> dict:
        """What decides each slot's input order: a resumed run continues exactly only if this is unchanged."""
        digest = hashlib.blake2b(json.dumps([self.sources, self.weights]).encode(), digest_size=8).hexdigest()
        return {"world": self.world, "workers": self.workers, "batch_size": self.batch_size,
                "batches_per_slot": self.batches_per_slot, "seed": self.seed, "shuffle_buffer": self.shuffle_buffer,
                "sources": digest}

    def inputs(self, base: list[int], rank: int, world: int, slot: int, skips: SkipCounter) -> Iterator[dict]:
        """The slot's input order: per source its shards, resampled and shuffled; then the weighted mix."""
        streams = []
        for k, (name, urls) in enumerate(self.sources.items()):
            shard_seq, shuffle_seq = (np.random.SeedSequence(base, spawn_key=(_STREAM, k, j)) for j in (0, 1))
            mine = split_shards(urls, rank, world, slot, self.workers)
            guard = EmptyGuard(name, patience=max(50, 3 * len(mine)))
            streams.append(iter(wds.DataPipeline(
                wds.ResampledShards(mine, seed=int(shard_seq.generate_state(1)[0]), worker_seed=lambda: 0, deterministic=True),
                guard.urls,
                wds.tarfile_to_samples(handler=skips.tar_handler),
                guard.count,
                partial(shuffle_samples, bufsize=self.shuffle_buffer, rng=np.random.default_rng(shuffle_seq)),
            )))
        mix = np.random.SeedSequence(base, spawn_key=(_STREAM, len(self.sources), 0))
        return mix_sources(streams, self.weights, np.random.default_rng(mix))

    def __iter__(self) -> Iterator[dict]:
        rank, world, worker, workers = worker_info()
        if workers != self.workers or world != self.world:
            raise RuntimeError(f"TrainStream was built for {self.world} rank(s) x {self.workers} worker(s), "
                               f"iterated by {world} x {workers}")
        plan = self.plan
        slot = (worker + plan.rotation) % workers
        start = plan.slots[slot] if plan.slots else SlotStart(0, (), self.batches_per_slot)
        base = [self.seed, plan.epoch, rank, slot] + ([plan.salt] if plan.salt else [])
        skips = SkipCounter(start.skipped)

        def pair_rng(i: int, _sample: dict) -> np.random.Generator:
            return np.random.default_rng(np.random.SeedSequence(base, spawn_key=(_PAIR, i)))

        # fast-forward: inputs before start.inputs are read (the order depends on them) but never decoded
        todo = itertools.islice(enumerate(self.inputs(base, rank, world, slot, skips)), start.inputs, None)
        pairs = build_pairs(todo, self.builder, pair_rng, skips)
        yield from make_batches(pairs, self.batch_size, start.batches,
                                lambda n: {"slot": slot, "epoch": plan.epoch, "inputs": n, "skipped": skips.as_tuple()})


class ValStream(torch.utils.data.IterableDataset):
    """Every validation sample once, in shard order, split round-robin over ranks x workers, in batches."""

    def __init__(self, urls: list[str], builder: Callable, *, seed: int = 0, limit: int | None = None,
                 batch_size: int = 1) -> None:
        super().__init__()
        self.urls, self.builder, self.seed, self.limit, self.batch_size = list(urls), builder, seed, limit, batch_size

    def __iter__(self) -> Iterator[dict]:
        rank, world, worker, workers = worker_info()
        slot, slots = rank * workers + worker, world * workers
        skips = SkipCounter()

        read = 0

        def mine(src: Iterable[dict]) -> Iterator[tuple[int, dict]]:
            nonlocal read
            for k, sample in enumerate(src):
                if self.limit is not None and k >= self.limit:
                    return
                if k % slots == slot:
                    read += 1
                    yield read - 1, sample

        def record(n: int) -> dict:
            return {"slot": worker, "epoch": -1, "inputs": n, "skipped": skips.as_tuple()}

        samples = wds.DataPipeline(wds.SimpleShardList(self.urls), wds.tarfile_to_samples(handler=skips.tar_handler), mine)
        pairs = build_pairs(iter(samples), self.builder, lambda _i, s: key_rng(self.seed, s), skips)
        yield from make_batches(pairs, self.batch_size, None, record)
        yield {STREAM_KEY: record(read)}  # record only: samples skipped after the last pair are reported too


def read_manifest_counts(manifest_path: str) -> dict[str, int]:
    with open(manifest_path) as f:
        return {k: v["samples"] for k, v in json.load(f)["sources"].items()}
