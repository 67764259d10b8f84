"""LightningDataModule streaming AnyDoor training pairs from WebDataset shards (docs/data.md)."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from datamodules.components.pairs import PairBuilder
from datamodules.components.streams import TrainStream, ValStream
from datamodules.components.shard_lists import resolve

log = logging.getLogger(__name__)


class AnyDoorDataModule(L.LightningDataModule):
    """Mixed, resampled training pairs and a fixed validation set, as the sample dict of docs/design.md.

    Args:
        train_shards: a folder written by ``anydoor shards`` (or its manifest), a list of
            folders/URLs/brace patterns, or a dict ``source -> list of URLs``.
        val_shards: the same forms; every sample once per epoch, same pairs every epoch.
        source_weights: ``source -> weight`` for mixing; default: the manifests' sample counts
            ("by dataset length", as the reference), or equal when unknown. Unlisted sources get 0.
        batch_size / num_workers: per rank.
        image_size: target crop side S; reference_size: DINOv2 input side.
        samples_per_epoch: training samples per epoch over all ranks (``with_epoch``).
        val_samples: cap on validation samples (None: all).
        seed: base seed; workers draw from (seed, epoch, rank, worker).
        shuffle_buffer: samples held per source for shuffling across shards.
    """

    def __init__(
        self,
        train_shards: str | list[str] | dict[str, Any] | None = None,
        val_shards: str | list[str] | dict[str, Any] | None = None,
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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_shards, self.val_shards = train_shards, val_shards
        self.source_weights = source_weights
        self.batch_size, self.num_workers = batch_size, num_workers
        self.samples_per_epoch, self.val_samples, self.seed = samples_per_epoch, val_samples, seed
        self.shuffle_buffer, self.pin_memory = shuffle_buffer, pin_memory
        self.train_builder = PairBuilder(image_size=image_size, reference_size=reference_size, augment=augment)
        self.val_builder = PairBuilder(image_size=image_size, reference_size=reference_size, augment=False)

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

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        if self.train_shards is None:
            raise ValueError("AnyDoorDataModule: train_shards is not set")
        sources, counts = resolve(self.train_shards)
        weights = self.mixing_weights(counts, list(sources))
        total = sum(weights.values()) or 1.0
        log.info("training sources: %s", {s: f"{len(sources[s])} shards, weight {w / total:.2f}" for s, w in weights.items()})
        dataset = TrainStream(sources, weights, self.train_builder, seed=self.seed, samples_per_epoch=self.samples_per_epoch,
                              batch_size=self.batch_size, num_workers=self.num_workers, world_size=self._world_size(),
                              shuffle_buffer=self.shuffle_buffer)
        return self._loader(dataset, persistent=True)

    def val_dataloader(self) -> torch.utils.data.DataLoader | list:
        if self.val_shards is None:
            return []
        sources, _ = resolve(self.val_shards)
        urls = [u for s in sorted(sources) for u in sources[s]]
        return self._loader(ValStream(urls, self.val_builder, seed=self.seed, limit=self.val_samples), persistent=False)

    def _loader(self, dataset: torch.utils.data.IterableDataset, persistent: bool) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            # training workers must persist: the epoch counter (part of their seed) lives in them
            persistent_workers=persistent and self.num_workers > 0,
            pin_memory=self.pin_memory,
        )
