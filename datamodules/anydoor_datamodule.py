"""LightningDataModule streaming AnyDoor training pairs from WebDataset shards (docs/data.md)."""

from __future__ import annotations

import logging

import lightning as L
import torch

from datamodules.components.pairs import PairBuilder
from datamodules.components.shard_lists import ShardSpec, resolve
from datamodules.components.stream_loader import StreamLoader, report
from datamodules.components.streams import TrainStream, ValStream

log = logging.getLogger(__name__)


class AnyDoorDataModule(L.LightningDataModule):
    """Mixed, resampled training pairs and a fixed validation set, as the sample dict of docs/design.md.

    Args:
        train_shards: a folder written by ``anydoor shards`` (or its manifest), a list of
            folders/URLs/brace patterns, or a dict ``source -> list of URLs``. A string written as a
            list or mapping (``"[a, b-{000..009}.tar]"``, ``"{sav: [...]}"``, as typed on the command
            line) is read as one, brace patterns and all (``shard_lists.parse_spec``).
        val_shards: the same forms; every sample once per epoch, same pairs every epoch.
        source_weights: ``source -> weight`` for mixing; default: the manifests' sample counts
            ("by dataset length", as the reference), or equal when unknown. Unlisted sources get 0.
        batch_size / num_workers: per rank.
        image_size: target crop side S; reference_size: DINOv2 input side.
        samples_per_epoch: training samples per epoch over all ranks (rounded up to whole batches per worker).
        val_samples: cap on validation samples (None: all).
        seed: base seed; each (rank, worker) stream orders its samples from (seed, epoch, rank,
            worker) and builds the pair of its i-th sample from (seed, epoch, rank, worker, i).
        shuffle_buffer: samples held per source for shuffling across shards.
        tune_allocator: keep per-sample buffers in the heap (``streams.tune_malloc``) in every
            loader worker, and in this process when ``num_workers=0``.
        packed: batches in bytes (``src.packed``: uint8 ``reference``/``target``/``collage``/
            ``object_mask``), 4x less to build, collate and ship from workers; ``AnyDoorModule``
            turns them into the float contract on the device (``on_after_batch_transfer``). Set
            False for float batches straight from the loader (another consumer, or to compare).

    The training loader is stateful: Lightning checkpoints its position, and a run resumed with
    ``ckpt_path`` continues the data stream where it stopped (``stream_loader``). Skipped samples
    are reported by reason at the end of every epoch and of ``fit``.
    """

    def __init__(
        self,
        train_shards: ShardSpec = None,
        val_shards: ShardSpec = None,
        source_weights: dict[str, float] | None = None,
        batch_size: int = 8,
        num_workers: int = 2,
        image_size: int = 512,
        reference_size: int = 224,
        samples_per_epoch: int = 10_000,
        val_samples: int | None = None,
        seed: int = 0,
        shuffle_buffer: int = 256,
        augment: bool = True,
        pin_memory: bool = False,
        tune_allocator: bool = True,
        packed: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_shards, self.val_shards = train_shards, val_shards
        self.source_weights = source_weights
        self.batch_size, self.num_workers = batch_size, num_workers
        self.samples_per_epoch, self.val_samples, self.seed = samples_per_epoch, val_samples, seed
        self.shuffle_buffer, self.pin_memory, self.tune_allocator = shuffle_buffer, pin_memory, tune_allocator
        self._train_loader: StreamLoader | None = None
        # packed: uint8 batches (4x fewer bytes to build, collate and ship from workers); the model
        # makes the float form on the device (src.packed.unpack_batch in on_after_batch_transfer)
        self.train_builder = PairBuilder(image_size=image_size, reference_size=reference_size, augment=augment, packed=packed)
        self.val_builder = PairBuilder(image_size=image_size, reference_size=reference_size, augment=False, packed=packed)

    def mixing_weights(self, counts: dict[str, int], sources: list[str]) -> dict[str, float]:
        if self.source_weights:
            unknown = set(self.source_weights) - set(sources)
            if unknown:
                raise ValueError(f"source_weights names {sorted(unknown)}, not among the shard sources {sorted(sources)}")
            missing = [s for s in sources if s not in self.source_weights]
            if missing:
                log.warning("sources %s have no weight in source_weights: not used", missing)
            return {s: float(self.source_weights.get(s, 0.0)) for s in sources}
        if all(s in counts for s in sources):
            return {s: float(counts[s]) for s in sources}
        return {s: 1.0 for s in sources}

    def _world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.world_size) if trainer is not None else 1

    def train_dataloader(self) -> StreamLoader:
        if self.train_shards is None:
            raise ValueError("AnyDoorDataModule: train_shards is not set")
        sources, counts = resolve(self.train_shards)
        weights = self.mixing_weights(counts, list(sources))
        total = sum(weights.values()) or 1.0
        log.info("training sources: %s", {s: f"{len(sources[s])} shards, weight {w / total:.2f}" for s, w in weights.items()})
        dataset = TrainStream(sources, weights, self.train_builder, seed=self.seed, samples_per_epoch=self.samples_per_epoch,
                              batch_size=self.batch_size, num_workers=self.num_workers, world_size=self._world_size(),
                              shuffle_buffer=self.shuffle_buffer)
        self._train_loader = self._loader(dataset, "train")
        return self._train_loader

    def val_dataloader(self) -> StreamLoader | list:
        if self.val_shards is None:
            return []
        sources, _ = resolve(self.val_shards)
        urls = [u for s in sorted(sources) for u in sources[s]]
        dataset = ValStream(urls, self.val_builder, seed=self.seed, limit=self.val_samples, batch_size=self.batch_size)
        return self._loader(dataset, "validation")

    def _loader(self, dataset: torch.utils.data.IterableDataset, name: str) -> StreamLoader:
        return StreamLoader(dataset, num_workers=self.num_workers, pin_memory=self.pin_memory,
                            tune_allocator=self.tune_allocator, trainer_fn=lambda: self.trainer, name=name)

    def teardown(self, stage: str) -> None:
        if stage == "fit" and self._train_loader is not None:
            report(logging.INFO, "data: training run ends: %s", self._train_loader.report_run())
