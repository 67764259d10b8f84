"""Shard sources in every documented form, typed on the command line as in a YAML file (issue 14)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule

from datamodules.components.shard_lists import parse_spec, resolve
from src.cli.train import cli_main
from src.constants import KINDS


class Tiny(LightningModule):
    """A model the CLI can build in no time (the datamodule is what is tested)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)


def from_command_line(*data_args: str):
    argv = ["--model", f"{__name__}.Tiny", "--data", "datamodules.anydoor_datamodule.AnyDoorDataModule",
            "--data.init_args.num_workers", "0", "--data.init_args.image_size", "32", "--data.init_args.reference_size", "28",
            "--data.init_args.batch_size", "4", "--data.init_args.samples_per_epoch", "8",
            "--trainer.logger", "false", "--trainer.accelerator", "cpu", *data_args]
    return cli_main(argv, run=False).datamodule


def test_folder_list_and_mapping_forms_from_the_command_line(synthetic_shards):
    d = synthetic_shards
    videos = [str(d / f"synthetic_video-{i:06d}.tar") for i in range(2)]
    stills = [str(d / f"synthetic_image-{i:06d}.tar") for i in range(3)]
    forms = {
        str(d): {"synthetic_video": videos, "synthetic_image": stills},
        # brace patterns inside a list or mapping are not valid YAML flow syntax: they used to arrive as one string
        f"[{d}/synthetic_video-{{000000..000001}}.tar, {d}/synthetic_image-000000.tar]":
            {"synthetic_video": videos, "synthetic_image": stills[:1]},
        f"{{clips: [{d}/synthetic_video-{{000000..000001}}.tar], stills: {d}/synthetic_image-{{000000..000002}}.tar}}":
            {"clips": videos, "stills": stills},
    }
    for text, expected in forms.items():
        dm = from_command_line("--data.init_args.train_shards", text)
        assert resolve(dm.train_shards)[0] == expected, text
        batch = next(iter(dm.train_dataloader()))
        assert batch["target"].shape == (4, 3, 32, 32)
    # the mapping's names are the sources that weights refer to
    dm = from_command_line("--data.init_args.train_shards", f"{{clips: [{d}/synthetic_video-{{000000..000001}}.tar], "
                           f"stills: [{d}/synthetic_image-000000.tar]}}", "--data.init_args.source_weights", "{clips: 1}")
    kinds = torch.cat([b["kind"] for b in dm.train_dataloader()])
    assert (kinds == KINDS.index("video")).all()


def test_parse_spec_keeps_brace_patterns_urls_and_plain_text():
    assert parse_spec("[a-{0..3}.tar, 'b c.tar']") == ["a-{0..3}.tar", "b c.tar"]
    assert parse_spec('{sav: ["pipe:aws s3 cp s3://b/sav-{000..999}.tar -"], x: http://h/x-{0..1}.tar}') == {
        "sav": ["pipe:aws s3 cp s3://b/sav-{000..999}.tar -"], "x": "http://h/x-{0..1}.tar"}
    for text in ("data/train", "name-{000000..000009}.tar", "{a,b}-{0..3}.tar", "{http://a/x.tar,http://b/y.tar}"):
        assert parse_spec(text) == text  # a folder or a brace pattern, not a mapping
    for bad in ("[a,,b]", "{sav: }", "[a] b]"):
        with pytest.raises(ValueError, match="cannot be read"):
            parse_spec(bad)


def test_missing_local_shards_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"2 of 2 shard files do not exist, e.g. .*nope-000000.tar"):
        resolve(f"[{tmp_path}/nope-{{000000..000001}}.tar]")
    with pytest.raises(FileNotFoundError, match="data/synthetic/absent"):
        resolve("data/synthetic/absent")
    remote = resolve("[pipe:aws s3 cp s3://b/sav-{0..1}.tar -, http://h/coco-7.tar]")[0]  # not checked here
    assert remote == {"sav": ["pipe:aws s3 cp s3://b/sav-0.tar -", "pipe:aws s3 cp s3://b/sav-1.tar -"], "coco": ["http://h/coco-7.tar"]}
