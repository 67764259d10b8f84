"""A resumed run continues the data stream (issue 14) and the skip report reaches the log (issue 13).

Driven through real ``Trainer.fit`` runs: a tiny LightningModule records a hash of every batch it
trains on; an uninterrupted run is compared with a run that stops (checkpoint) and one resumed
from that checkpoint with ``ckpt_path``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import webdataset as wds
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules.anydoor_datamodule import AnyDoorDataModule
from datamodules.components import streams
from datamodules.components.pairs import PairBuilder
from datamodules.components.shard_lists import resolve
from datamodules.components.stream_loader import StreamLoader
from datamodules.components.streams import Plan, SlotStart, TrainStream

ROOT = Path(__file__).resolve().parents[2]
EPOCH = 6  # batches per epoch (12 samples in batches of 2, whatever the worker count)


class Recorder(LightningModule):
    """Trains nothing useful; remembers what it was fed."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[str] = []

    def training_step(self, batch, batch_idx):
        digest = hashlib.sha1(batch["target"].numpy().tobytes() + batch["reference"].numpy().tobytes())
        self.seen.append(digest.hexdigest()[:12])
        return self.layer(batch["target"].float().mean().view(1, 1)).sum()  # packed batches are uint8

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def datamodule(shards, workers: int) -> AnyDoorDataModule:
    return AnyDoorDataModule(str(shards), batch_size=2, num_workers=workers, image_size=32, reference_size=28,
                             samples_per_epoch=2 * EPOCH, shuffle_buffer=4, seed=3)


def fit(shards, workers: int, steps: int, root, ckpt_path=None, every: int | None = None) -> list[str]:
    model = Recorder()
    callbacks = [ModelCheckpoint(dirpath=root, every_n_train_steps=every, save_top_k=-1)] if every else []
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=bool(every), callbacks=callbacks,
                      limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=root)
    trainer.fit(model, datamodule=datamodule(shards, workers), ckpt_path=ckpt_path)
    return model.seen


def checkpoint(root, step: int) -> str:
    (path,) = root.glob(f"*step={step}.ckpt")
    return str(path)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_resumed_fit_sees_what_an_uninterrupted_fit_would(synthetic_shards, tmp_path, workers):
    steps = EPOCH + 3
    whole = fit(synthetic_shards, workers, steps, tmp_path / "whole")
    assert len(whole) == steps and len(set(whole)) == steps
    stopped = fit(synthetic_shards, workers, EPOCH, tmp_path / "stopped", every=1)
    assert stopped == whole[:EPOCH]
    # mid-epoch (with 2 workers: the next batch is worker 1's, not worker 0's), and on the epoch's last batch
    for step in (3, EPOCH):
        resumed = fit(synthetic_shards, workers, steps, tmp_path / f"resumed{step}", ckpt_path=checkpoint(tmp_path / "stopped", step))
        assert resumed[0] != whole[0]  # not a replay of the start
        assert resumed == whole[step:]


def test_a_changed_layout_continues_without_replaying(synthetic_shards, tmp_path, caplog):
    fit(synthetic_shards, 2, 3, tmp_path / "two", every=3)
    whole = fit(synthetic_shards, 1, EPOCH + 2, tmp_path / "one")
    with caplog.at_level(logging.WARNING):
        resumed = fit(synthetic_shards, 1, EPOCH + 2, tmp_path / "resumed", ckpt_path=checkpoint(tmp_path / "two", 3))
    assert "cannot be continued exactly" in caplog.text and "'workers': (2, 1)" in caplog.text
    assert len(resumed) == EPOCH - 1  # the rest of epoch 0 and two batches of epoch 1
    assert not set(resumed[:EPOCH - 3]) & set(whole)  # fresh sample orders for the rest of the interrupted epoch
    assert resumed[EPOCH - 3:] == whole[EPOCH:]  # the next epoch is the regular one


class CountingBuilder:
    """Counts pairs built (skipped inputs must cost no decoding)."""

    def __init__(self) -> None:
        self.builder, self.calls = PairBuilder(image_size=32, reference_size=28), 0

    def __call__(self, sample, rng):
        self.calls += 1
        return self.builder(sample, rng)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_slot_fast_forwards_without_decoding(synthetic_shards, monkeypatch, rank):
    """Each rank's slots: started at input n, a slot yields what it would have yielded after its first n inputs."""
    monkeypatch.setattr(streams, "worker_info", lambda: (rank, 2, 1, 2))  # rank r of 2, worker 1 of 2
    sources, counts = resolve(str(synthetic_shards))
    builder = CountingBuilder()
    stream = TrainStream(sources, counts, builder, seed=5, samples_per_epoch=48, batch_size=2, num_workers=2,
                         world_size=2, shuffle_buffer=4)
    stream.plan = Plan(epoch=2)
    batches = list(stream)
    assert len(batches) == stream.batches_per_slot == 6
    after = batches[1][streams.STREAM_KEY]["inputs"]  # inputs read for the first two batches
    stream.plan = Plan(epoch=2, slots=(SlotStart(0, (), 6), SlotStart(after, (0,) * 7, 4)))  # this is slot 1
    builder.calls = 0
    again = list(stream)
    assert builder.calls == 8  # four batches of two: nothing built for the inputs skipped
    for x, y in zip(again, batches[2:], strict=True):
        assert x[streams.STREAM_KEY] == y[streams.STREAM_KEY]
        assert all(torch.equal(x[k], y[k]) for k in x if k != streams.STREAM_KEY)


def corrupt_copy(shards, out):
    """The synthetic set with every third image sample's JPEG broken and every fifth video sample's metadata."""
    out.mkdir()
    sources, _ = resolve(str(shards))
    for source, urls in sources.items():
        for url in urls:
            with wds.TarWriter(str(out / url.rsplit("/", 1)[-1]), encoder=False) as sink:
                for k, s in enumerate(wds.WebDataset([url], shardshuffle=False)):
                    s = {key: v for key, v in s.items() if not key.startswith("__") or key == "__key__"}
                    if source.endswith("image") and k % 3 == 0:
                        s["000.jpg"] = b"\xff\xd8 broken"
                    elif source.endswith("video") and k % 5 == 0:
                        s["json"] = b"{not json"
                    sink.write(s)
    return out


REPORT = re.compile(r"epoch (\d+) done: (\d+) pairs from (\d+) samples read, (\d+) skipped \(([^)]*)\)")


def test_skips_are_reported_per_epoch_and_run_and_survive_a_resume(synthetic_shards, tmp_path, caplog):
    bad = corrupt_copy(synthetic_shards, tmp_path / "bad")
    with caplog.at_level(logging.INFO, logger="datamodules"):
        whole = fit(bad, 2, 2 * EPOCH, tmp_path / "whole")
    lines = REPORT.findall(caplog.text)
    assert [int(e) for e, *_ in lines] == [0, 1]
    for _, pairs, read, skipped, why in lines:
        reasons = dict(r.split() for r in why.split(", "))
        assert int(pairs) == 2 * EPOCH and int(read) == int(pairs) + int(skipped)  # counts travelled from both workers
        assert set(reasons) <= {"corrupt_image", "bad_metadata"} and sum(map(int, reasons.values())) == int(skipped)
    total = sum(int(s) for *_, s, _ in lines)
    assert total > 0
    run_line = re.search(rf"training run ends: 2 epoch\(s\) finished; {4 * EPOCH} pairs from (\d+) samples read, (\d+) skipped", caplog.text)
    assert run_line and int(run_line.group(2)) == total
    # stop in epoch 1, resume: same batches, and the reports count what happened before the stop too
    fit(bad, 2, EPOCH + 1, tmp_path / "stopped", every=EPOCH + 1)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="datamodules"):
        resumed = fit(bad, 2, 2 * EPOCH, tmp_path / "resumed", ckpt_path=checkpoint(tmp_path / "stopped", EPOCH + 1))
    assert resumed == whole[EPOCH + 1:]
    assert REPORT.findall(caplog.text) == lines[1:]
    assert f"{4 * EPOCH} pairs from {run_line.group(1)} samples read, {total} skipped" in caplog.text


def test_validation_loader_strips_records_and_the_loader_state_is_empty_without_a_pass(synthetic_shards):
    dm = datamodule(synthetic_shards, 0)
    assert dm.train_dataloader().state_dict() == {}
    dm.val_shards = str(synthetic_shards)
    val = dm.val_dataloader()
    assert isinstance(val, StreamLoader) and val.state_dict() == {}
    first = next(iter(val))
    assert set(first) == {"reference", "target", "collage", "kind", "box", "object_mask"}
    loader = dm.train_dataloader()
    list(itertools.islice(loader, 3))
    state = loader.state_dict()
    assert state["epoch"] == 0 and state["batches"] == 3 and len(state["ranks"]) == 1
    with pytest.raises(ValueError, match="version"):
        loader.load_state_dict(dict(state, version=0))


def ddp_fit(shards, out, steps: int, every: int | None = None, ckpt: str | None = None) -> list[list[str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    args = [str(shards), str(out), str(steps), str(every) if every else "-"] + ([ckpt] if ckpt else [])
    proc = subprocess.run([sys.executable, "-m", "tests.datamodules.ddp_resume_run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_with_two_workers_each_resume_exactly(synthetic_shards, tmp_path):
    whole = ddp_fit(synthetic_shards, tmp_path / "whole", EPOCH + 3)
    assert not set(whole[0]) & set(whole[1])  # ranks read different shards
    ddp_fit(synthetic_shards, tmp_path / "stopped", 3, every=3)
    resumed = ddp_fit(synthetic_shards, tmp_path / "resumed", EPOCH + 3, ckpt=checkpoint(tmp_path / "stopped", 3))
    for rank in (0, 1):
        assert resumed[rank] == whole[rank][3:]


def test_report_lines_reach_stderr_where_no_logging_is_configured(monkeypatch, capsys, caplog):
    """A plain `lightning fit` configures no handler for this package: INFO would be dropped."""
    from datamodules.components import stream_loader

    monkeypatch.setattr(stream_loader.log, "hasHandlers", lambda: False)
    stream_loader.report(logging.INFO, "data: epoch %d done: %s", 3, "x")
    assert "data: epoch 3 done: x" in capsys.readouterr().err
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="datamodules"):
        stream_loader.report(logging.INFO, "data: epoch %d done: %s", 4, "y")
    assert "data: epoch 4 done: y" in caplog.text and "epoch 4" not in capsys.readouterr().err
