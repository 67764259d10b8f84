"""The header-parsing shard reader yields exactly what webdataset's tarfile_to_samples yields."""

import io
import tarfile

import webdataset as wds

from datamodules.components.tar_reader import tar_samples


def _tar(path, members, fmt=tarfile.PAX_FORMAT):
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def _both(urls):
    errors = {"wds": [], "ours": []}
    ref = list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=lambda e: errors["wds"].append(e) or True)))
    ours = list(tar_samples(({"url": u} for u in urls), lambda e: errors["ours"].append(e) or True))
    return ref, ours, errors


def test_same_samples_as_webdataset_including_long_names_and_formats(tmp_path):
    long_key = "d/" + "k" * 150
    members = [("a.json", b"{}"), ("a.000.jpg", b"x" * 700), ("a.000.PNG", b""), ("__meta__", b"m"),
               (long_key + ".json", b"1"), (long_key + ".001.jpg", b"y" * 513), ("b.json", b"2")]
    urls = [_tar(tmp_path / "pax.tar", members), _tar(tmp_path / "gnu.tar", members, tarfile.GNU_FORMAT),
            _tar(tmp_path / "ustar.tar", members[:4] + members[-1:], tarfile.USTAR_FORMAT)]
    ref, ours, errors = _both(urls)
    assert ours == ref and len(ours) == 8 and not errors["ours"]
    assert ours[0] == {"__key__": "a", "__url__": urls[0], "json": b"{}", "000.jpg": b"x" * 700, "000.png": b""}


def test_damaged_shards_go_to_the_handler_and_the_next_shard_is_read(tmp_path):
    good = _tar(tmp_path / "good.tar", [("s.json", b"{}"), ("s.000.jpg", b"z" * 2000), ("t.json", b"{}")])
    data = open(good, "rb").read()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:1024 + 1000])  # inside s.000.jpg
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar file at all" * 40)
    ours_errors = []
    got = list(tar_samples(({"url": u} for u in [str(cut), str(garbage), str(tmp_path / "missing.tar"), good]),
                           lambda e: ours_errors.append(e) or True))
    assert len(ours_errors) == 3
    assert [s["__key__"] for s in got] == ["s", "s", "t"]  # the partial sample of the cut shard, then the good shard
    assert set(got[0]) == {"__key__", "__url__", "json"} and got[1]["000.jpg"] == b"z" * 2000
