"""The datamodule's samples: contract (shapes, dtypes, ranges), collage geometry, splitting, seeding, skips."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import webdataset as wds

from datamodules.anydoor_datamodule import AnyDoorDataModule
from datamodules.components import streams
from datamodules.components.pairs import PairBuilder
from datamodules.components.shard_format import SampleError
from datamodules.components.shard_lists import resolve
from datamodules.components.stream_loader import StreamLoader
from datamodules.components.streams import STREAM_KEY, Plan, SkipCounter, TrainStream, ValStream
from src.constants import KINDS
from src.packed import unpack_batch

S, R = 64, 56  # small crops keep the tests fast; the geometry is the same as at 512/224


def fake_worker(monkeypatch, rank=0, world=1, worker=0, workers=1):
    monkeypatch.setattr(streams, "worker_info", lambda: (rank, world, worker, workers))


def test_batch_contract(synthetic_shards):
    dm = AnyDoorDataModule(str(synthetic_shards), str(synthetic_shards), batch_size=4, num_workers=0, image_size=S,
                           reference_size=R, samples_per_epoch=24)
    packed = list(dm.train_dataloader())
    assert len(packed) == len(dm.train_dataloader()) == 6
    bytes_ = {"reference": (3, R, R), "target": (3, S, S), "collage": (4, S, S), "object_mask": (1, S, S)}
    for batch in packed:  # the loader ships bytes (src.packed): collage channel 3 is location + 1
        for key, shape in bytes_.items():
            assert batch[key].dtype == torch.uint8 and tuple(batch[key].shape) == (4, *shape), key
        assert set(batch["collage"][:, 3].unique().tolist()) <= {0, 1, 2}
    batches = [unpack_batch(b) for b in packed]  # what the model sees (its on_after_batch_transfer)
    float_dm = AnyDoorDataModule(str(synthetic_shards), str(synthetic_shards), batch_size=4, num_workers=0, image_size=S,
                                 reference_size=R, samples_per_epoch=24, packed=False)
    for got, want in zip(batches, float_dm.train_dataloader(), strict=True):  # the float loader's batches, value for value
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=key)
    expected = {  # key: (dtype, shape without batch, low, high)
        "reference": (torch.float32, (3, R, R), 0.0, 1.0),
        "target": (torch.float32, (3, S, S), -1.0, 1.0),
        "collage": (torch.float32, (4, S, S), -1.0, 1.0),
        "kind": (torch.int64, (), 0, len(KINDS) - 1),
        "box": (torch.int64, (4,), 0, S),
        "object_mask": (torch.float32, (1, S, S), 0.0, 1.0),
    }
    for batch in batches:
        assert set(batch) == set(expected)
        for key, (dtype, shape, lo, hi) in expected.items():
            v = batch[key]
            assert v.dtype == dtype and tuple(v.shape) == (4, *shape), key
            assert v.min() >= lo and v.max() <= hi, key
        assert set(batch["object_mask"].unique().tolist()) <= {0.0, 1.0}
        box = batch["box"]
        assert (box[:, 2] > box[:, 0]).all() and (box[:, 3] > box[:, 1]).all()
    kinds = torch.cat([b["kind"] for b in batches])
    assert set(kinds.tolist()) == {0, 1}  # video and image pairs are both drawn
    val = list(dm.val_dataloader())
    assert sum(len(b["kind"]) for b in val) == json.loads((synthetic_shards / "manifest.json").read_text())["total_samples"]


def test_collage_box_agrees_with_mask_channel(synthetic_shards):
    sources, _ = resolve(str(synthetic_shards))
    samples = list(wds.WebDataset([u for v in sources.values() for u in v], shardshuffle=False))
    builder = PairBuilder(image_size=S, reference_size=R, mask_channel_prob=0.0)
    rng = np.random.default_rng(0)
    for s in samples:
        out = builder(s, rng)
        x1, y1, x2, y2 = out["box"]
        channel = out["collage"][3]
        valid = channel >= 0
        inside = np.zeros((S, S), bool)
        inside[y1:y2, x1:x2] = True
        assert (channel[inside & valid] == 1).all() and (channel[~inside & valid] == 0).all()
        # the hint is pasted in the box and nowhere else: elsewhere the collage is the target
        assert np.array_equal(out["collage"][:3][:, ~inside], out["target"][:, ~inside])
        # the box holds the object
        obj = out["object_mask"][0] > 0
        assert obj.any() and inside[obj].mean() > 0.95
    # with the default p=0.7 some mask channels are perturbed object masks, not boxes
    builder = PairBuilder(image_size=S, reference_size=R)
    shapes = []
    for s in samples[:20]:
        out = builder(s, rng)
        x1, y1, x2, y2 = out["box"]
        ones = out["collage"][3] == 1
        shapes.append(ones.sum() == (x2 - x1) * (y2 - y1) and ones[y1:y2, x1:x2].all())
    assert 0 < sum(shapes) < len(shapes)


def pairs_of(dataset, **kwargs) -> list[dict]:
    """Every batch a pass over ``dataset`` gives, through the loader the datamodule uses."""
    return list(StreamLoader(dataset, **kwargs))


def urls_seen(stream, n=24) -> set[str]:
    seen = set()
    builder = stream.builder

    def spy(sample, rng):
        seen.add(sample["__url__"])
        return builder(sample, rng)

    stream.builder = spy
    list(itertools.islice(iter(stream), n))
    return seen


def test_two_ranks_get_disjoint_shards(synthetic_shards, monkeypatch):
    sources, counts = resolve(str(synthetic_shards))
    builder = PairBuilder(image_size=S, reference_size=R)
    seen = []
    for rank in (0, 1):
        fake_worker(monkeypatch, rank=rank, world=2)
        stream = TrainStream(sources, counts, builder, samples_per_epoch=48, world_size=2, shuffle_buffer=4)
        seen.append(urls_seen(stream))
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] == {u for v in sources.values() for u in v}


def first_references(stream, n=4) -> torch.Tensor:
    return torch.cat([b["reference"] for b in itertools.islice(iter(stream), n)])


def test_workers_draw_distinct_reproducible_streams(synthetic_shards, monkeypatch):
    sources, counts = resolve(str(synthetic_shards))
    one = {"synthetic_video": sources["synthetic_video"][:1]}  # one shard: workers cannot be split by shard
    builder = PairBuilder(image_size=S, reference_size=R)
    refs = []
    for worker in (0, 1, 0):
        fake_worker(monkeypatch, worker=worker, workers=2)
        refs.append(first_references(TrainStream(one, {"synthetic_video": 1}, builder, num_workers=2, shuffle_buffer=2)))
    assert not torch.equal(refs[0], refs[1])  # distinct seeds per worker
    assert torch.equal(refs[0], refs[2])  # reproducible from (seed, epoch, rank, worker)
    stream = TrainStream(one, {"synthetic_video": 1}, builder, num_workers=2, shuffle_buffer=2)
    first = first_references(stream)
    stream.plan = Plan(epoch=1)
    assert not torch.equal(first, first_references(stream))  # the next epoch differs


def test_validation_is_deterministic_and_split(synthetic_shards, monkeypatch):
    sources, _ = resolve(str(synthetic_shards))
    urls = [u for v in sources.values() for u in v]
    builder = PairBuilder(image_size=S, reference_size=R, augment=False)
    a, b = pairs_of(ValStream(urls, builder)), pairs_of(ValStream(urls, builder))
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert STREAM_KEY not in x and all(torch.equal(x[k], y[k]) for k in x)
    parts = []
    for rank in (0, 1):
        fake_worker(monkeypatch, rank=rank, world=2)
        parts.append(pairs_of(ValStream(urls, builder)))
    assert len(parts[0]) + len(parts[1]) == len(a)
    assert abs(len(parts[0]) - len(parts[1])) <= 1


def test_source_weights(synthetic_shards):
    dm = AnyDoorDataModule(str(synthetic_shards), source_weights={"synthetic_video": 1.0}, batch_size=8, num_workers=0,
                           image_size=S, reference_size=R, samples_per_epoch=16)
    kinds = torch.cat([b["kind"] for b in dm.train_dataloader()])
    assert (kinds == KINDS.index("video")).all()
    with pytest.raises(ValueError, match="not among"):
        AnyDoorDataModule(str(synthetic_shards), source_weights={"nope": 1.0}, num_workers=0).train_dataloader()


def test_bad_samples_are_skipped_and_a_hopeless_stream_stops(synthetic_shards, tmp_path, caplog):
    sources, _ = resolve(str(synthetic_shards))
    good = next(iter(wds.WebDataset(sources["synthetic_image"][:1], shardshuffle=False)))
    bad = dict(good, __key__="broken")
    bad["000.jpg"] = b"\xff\xd8 not a jpeg"
    with wds.TarWriter(str(tmp_path / "mixed-000000.tar"), encoder=False) as sink:
        for s in (bad, good, bad):
            sink.write({k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"})
    builder = PairBuilder(image_size=S, reference_size=R, augment=False)
    out = pairs_of(ValStream([str(tmp_path / "mixed-000000.tar")], builder, batch_size=2))
    assert [len(b["kind"]) for b in out] == [1]
    assert "broken" in caplog.text
    assert "validation pass: 1 pairs from 3 samples read, 2 skipped (corrupt_image 2)" in caplog.text
    with wds.TarWriter(str(tmp_path / "allbad-000000.tar"), encoder=False) as sink:
        sink.write({k: v for k, v in bad.items() if not k.startswith("__") or k == "__key__"})
    stream = TrainStream({"allbad": [str(tmp_path / "allbad-000000.tar")]}, {"allbad": 1}, builder, shuffle_buffer=1)
    with pytest.raises(RuntimeError, match="in a row"):
        list(itertools.islice(iter(stream), 10))


def test_skip_counter_counts_reasons():
    skips = SkipCounter(max_consecutive=4)
    skips.skip("a", SampleError("corrupt_mask", "x"))
    skips.ok()
    skips.skip("b", KeyError("003.jpg"))
    skips.skip("c", KeyError("boxes"))
    skips.skip("d", ValueError("empty mask"))
    assert {k: v for k, v in skips.counts.items() if v} == {"corrupt_mask": 1, "missing_file": 1, "bad_metadata": 1, "bad_pair": 1}
    assert skips.consecutive == 3
    with pytest.raises(RuntimeError, match="in a row"):
        skips.tar_handler(OSError("truncated"))
    assert skips.counts["unreadable_shard"] == 1


def test_loader_with_worker_processes(synthetic_shards):
    dm = AnyDoorDataModule(str(synthetic_shards), str(synthetic_shards), batch_size=2, num_workers=2, image_size=32,
                           reference_size=32, samples_per_epoch=8)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 4
    assert all(b["target"].shape == (2, 3, 32, 32) and STREAM_KEY not in b for b in batches)
    in_process = AnyDoorDataModule(str(synthetic_shards), batch_size=2, num_workers=0, image_size=32, reference_size=32,
                                   samples_per_epoch=8)
    assert len(list(in_process.train_dataloader())) == 4
    total = json.loads((synthetic_shards / "manifest.json").read_text())["total_samples"]
    assert sum(len(b["kind"]) for b in dm.val_dataloader()) == total  # split over two workers, each sample once


def _rank_urls(rank: int, shards: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
    sources, counts = resolve(shards)
    stream = TrainStream(sources, counts, PairBuilder(image_size=S, reference_size=R), samples_per_epoch=48, world_size=2, shuffle_buffer=4)
    with open(f"{out}/{rank}.json", "w") as f:
        json.dump(sorted(urls_seen(stream)), f)
    dist.destroy_process_group()


@pytest.mark.ddp
@pytest.mark.slow
def test_two_gloo_processes_read_disjoint_shards(synthetic_shards, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_urls, args=(str(synthetic_shards), str(tmp_path)), nprocs=2)
    seen = [set(json.loads((tmp_path / f"{r}.json").read_text())) for r in (0, 1)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_a_source_of_empty_shards_stops_with_an_error(tmp_path):
    with wds.TarWriter(str(tmp_path / "empty-000000.tar"), encoder=False):
        pass
    stream = TrainStream({"empty": [str(tmp_path / "empty-000000.tar")]}, {"empty": 1}, PairBuilder(image_size=S, reference_size=R))
    with pytest.raises(RuntimeError, match="not one sample"):
        next(iter(stream))


def test_in_process_batches_equal_worker_batches_and_reused_buffers_never_change_a_kept_batch(synthetic_shards):
    """num_workers 0 and 1 run the same slot: the in-process collate (reused numpy buffers) and the
    worker's (shared memory) must give the same batches, whether the consumer keeps them or not."""
    def loader(workers):
        return AnyDoorDataModule(str(synthetic_shards), batch_size=3, num_workers=workers, image_size=S, reference_size=R,
                                 samples_per_epoch=15).train_dataloader()

    def digest(batch):
        return [(k, v.dtype, tuple(v.shape), v.numpy().tobytes()) for k, v in sorted(batch.items())]

    kept = list(loader(0))  # every batch held: no buffer may be reused
    streamed = [digest(b) for b in loader(0)]  # each batch dropped at once: buffers are reused
    in_worker = [digest(b) for b in loader(1)]
    assert len(kept) == 5 and [digest(b) for b in kept] == streamed == in_worker
    assert len({b["target"].data_ptr() for b in kept}) == 5
