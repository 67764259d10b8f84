"""The streaming pipeline: small named stages composed with webdataset.

Per source: shard list -> explicit node split -> explicit worker split -> resampled shards
(``wds.ResampledShards``, seeded per rank/worker/epoch) -> tar reading -> shuffle buffer. Sources are
mixed by weight, each sample becomes a training pair (``PairBuilder``), and ``with_epoch`` cuts the
endless stream into epochs. Validation reads its shards in order, splits *samples* round-robin over
ranks and workers, and seeds each pair from its key, so every epoch sees the same pairs.

Workers draw from ``SeedSequence([seed, epoch, rank, worker])``: distinct per worker and epoch, and
reproducible (the reference's workers could share NumPy state and draw identical augmentations).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from functools import partial

import cv2
import numpy as np
import torch
import webdataset as wds

log = logging.getLogger(__name__)
PAIR_ERRORS = (ValueError, KeyError, IndexError, TypeError, cv2.error)  # what a bad sample can raise


def worker_info() -> tuple[int, int, int, int]:
    """(rank, world size, worker id, workers) as webdataset sees them (env RANK/WORLD_SIZE or torch.distributed)."""
    return wds.utils.pytorch_worker_info()


class SkipCounter:
    """Counts skipped samples by reason and logs them; raises after too many failures in a row.

    A stream of only bad samples would otherwise retry forever (resampled shards never end).
    """

    def __init__(self, max_consecutive: int = 200, log_first: int = 20) -> None:
        self.counts: Counter = Counter()
        self.max_consecutive, self.log_first = max_consecutive, log_first
        self.consecutive = 0
        self.last = ""

    def ok(self) -> None:
        self.consecutive = 0

    def skip(self, where: str, error: BaseException) -> None:
        reason = type(error).__name__
        self.counts[reason] += 1
        self.consecutive += 1
        self.last = f"{where}: {reason}: {error}"
        total = sum(self.counts.values())
        if total <= self.log_first or total % 100 == 0:
            log.warning("skipped sample %s (skipped so far: %s)", self.last, dict(self.counts))
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(f"{self.consecutive} samples in a row could not be read; last: {self.last}")

    def tar_handler(self, error: BaseException) -> bool:
        """webdataset handler for unreadable shards/tar members: count, log, continue."""
        self.skip("shard", error)
        return True


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


def build_pairs(src: Iterable[dict], builder: Callable, rng_for: Callable[[dict], np.random.Generator], skips: SkipCounter) -> Iterator[dict]:
    """Shard sample -> training pair; bad samples are counted and skipped."""
    for sample in src:
        try:
            pair = builder(sample, rng_for(sample))
        except PAIR_ERRORS as e:
            skips.skip(str(sample.get("__url__", "?")) + ":" + str(sample.get("__key__", "?")), e)
            continue
        skips.ok()
        yield pair


def to_tensors(src: Iterable[dict]) -> Iterator[dict[str, torch.Tensor]]:
    for pair in src:
        yield {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else torch.tensor(v) for k, v in pair.items()}


def key_rng(seed: int, sample: dict) -> np.random.Generator:
    """A generator fixed by the sample's key: the validation pair never changes between epochs."""
    digest = hashlib.blake2b(f"{sample.get('__url__', '')}/{sample.get('__key__', '')}".encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


# ---- the datasets ----

class TrainStream(torch.utils.data.IterableDataset):
    """Endless, mixed, resampled pairs; each iteration (epoch) yields ``len(self)`` samples per rank."""

    def __init__(self, sources: dict[str, list[str]], weights: dict[str, float], builder: Callable, *, seed: int = 0,
                 samples_per_epoch: int = 10_000, batch_size: int = 1, num_workers: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 256) -> None:
        super().__init__()
        self.sources = {k: v for k, v in sources.items() if weights.get(k, 0) > 0}
        if not self.sources:
            raise ValueError(f"no source has a positive weight (sources {sorted(sources)}, weights {weights})")
        self.weights = [float(weights[k]) for k in self.sources]
        self.builder, self.seed, self.shuffle_buffer = builder, seed, shuffle_buffer
        workers = max(num_workers, 1)
        # whole batches per worker, so len(DataLoader) is exact
        batches = -(-samples_per_epoch // (world_size * workers * batch_size))
        self.per_worker, self.workers = batches * batch_size, workers
        self.epoch = -1  # advanced per iteration; persistent workers keep it across epochs

    def __len__(self) -> int:
        return self.per_worker * self.workers

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.epoch += 1
        rank, world, worker, workers = worker_info()
        seq = np.random.SeedSequence([self.seed, self.epoch, rank, worker])
        rng = np.random.default_rng(seq)
        skips = SkipCounter()
        streams = []
        for i, (name, urls) in enumerate(self.sources.items()):
            shard_seed = int(seq.spawn(len(self.sources))[i].generate_state(1)[0])
            mine = split_shards(urls, rank, world, worker, workers)
            guard = EmptyGuard(name, patience=max(50, 3 * len(mine)))
            stream = wds.DataPipeline(
                wds.ResampledShards(mine, seed=shard_seed, worker_seed=lambda: 0, deterministic=True),
                guard.urls,
                wds.tarfile_to_samples(handler=skips.tar_handler),
                guard.count,
                partial(shuffle_samples, bufsize=self.shuffle_buffer, rng=rng),
            )
            streams.append(iter(stream))
        pipeline = wds.DataPipeline(
            lambda: mix_sources(streams, self.weights, rng),
            partial(build_pairs, builder=self.builder, rng_for=lambda _s: rng, skips=skips),
            to_tensors,
        ).with_epoch(self.per_worker)
        yield from pipeline


class ValStream(torch.utils.data.IterableDataset):
    """Every validation sample once, in shard order, split round-robin over ranks x workers."""

    def __init__(self, urls: list[str], builder: Callable, *, seed: int = 0, limit: int | None = None) -> None:
        super().__init__()
        self.urls, self.builder, self.seed, self.limit = list(urls), builder, seed, limit

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rank, world, worker, workers = worker_info()
        slot, slots = rank * workers + worker, world * workers
        skips = SkipCounter()

        def mine(src: Iterable[dict]) -> Iterator[dict]:
            for k, sample in enumerate(src):
                if self.limit is not None and k >= self.limit:
                    return
                if k % slots == slot:
                    yield sample

        yield from wds.DataPipeline(
            wds.SimpleShardList(self.urls),
            wds.tarfile_to_samples(handler=skips.tar_handler),
            mine,
            partial(build_pairs, builder=self.builder, rng_for=partial(key_rng, self.seed), skips=skips),
            to_tensors,
        )


def read_manifest_counts(manifest_path: str) -> dict[str, int]:
    with open(manifest_path) as f:
        return {k: v["samples"] for k, v in json.load(f)["sources"].items()}
