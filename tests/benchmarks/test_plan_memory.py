"""The planner: derived rows (pure arithmetic), the tiny real-vs-planned check, and full-size rows."""

import json

import pytest

from benchmarks.plan_memory import (
    GIB,
    Row,
    Setting,
    adam8bit_state_bytes,
    ddp_row,
    eight_bit_row,
    fsdp_row,
    need_gib,
    table,
)

FACTS = {"total": 2_000, "trainable": 1_000, "trainable_small": 100, "trainable_blocks": 4, "trainable_tensors": 3,
         "largest_fsdp_unit": 10}


def _row(setting=Setting(4)) -> Row:
    return Row(setting, "measured", {
        "forward": {"weights": 8_000, "gradients": 0, "optimizer": 8_000, "activations": 5_000, "temporaries": 0},
        "optimizer": {"weights": 8_000, "gradients": 4_000, "optimizer": 8_000, "activations": 0,
                      "temporaries": 4_000}}, FACTS)


def test_peak_is_the_largest_phase_and_need_adds_the_margins():
    r = _row()
    assert r.peak_phase == "optimizer" and r.peak == 24_000
    assert need_gib(10 * GIB) == pytest.approx(12.0)  # x1.10 fragmentation + 1 GiB context/workspaces


def test_eight_bit_swaps_the_state_for_bitsandbytes_layout_and_drops_the_step_temporary():
    r = eight_bit_row(_row())
    state = adam8bit_state_bytes(900, 100, 4, 3)
    assert state == 2 * 900 + 8 * 4 + 8 * 100 + 2048 + 4 * 512 * 3
    assert r.phases["forward"]["optimizer"] == state
    assert r.phases["optimizer"]["temporaries"] == 0
    assert r.setting.optimizer == "adamw8bit" and r.how == "derived"


def test_eight_bit_layout_is_bitsandbytes_own():
    """Only where bitsandbytes is installed (it is not a dependency; it runs on CPU since 0.4x)."""
    import math

    import torch

    bnb = pytest.importorskip("bitsandbytes")
    model = torch.nn.Sequential(torch.nn.Linear(300, 500), torch.nn.Linear(500, 7), torch.nn.Conv2d(64, 64, 3))
    opt = bnb.optim.AdamW8bit(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    storages = {v.untyped_storage().data_ptr(): v.nbytes for s in opt.state.values() for v in s.values()
                if isinstance(v, torch.Tensor)}
    params = list(model.parameters())
    large = [p.numel() for p in params if p.numel() >= 4096]
    small = [p.numel() for p in params if p.numel() < 4096]
    exact = adam8bit_state_bytes(sum(large), sum(small), sum(math.ceil(n / 256) for n in large), 0)
    assert sum(storages.values()) == exact


def test_ddp_buckets_cost_one_fp32_gradient_copy_unless_they_are_views():
    assert ddp_row(_row(), False).peak == _row().peak + 4 * FACTS["trainable"]
    assert ddp_row(_row(), True).peak == _row().peak


def test_fsdp_divides_parameter_memory_and_keeps_activations():
    r = fsdp_row(_row(), 4)
    fwd = r.phases["forward"]
    assert fwd["weights"] == 8_000 / 4 + 2 * 2 * 10 and fwd["optimizer"] == 2_000
    assert fwd["activations"] == 5_000
    assert r.setting.strategy == "fsdp-4"


def test_table_marks_what_fits():
    text = table([_row()])
    assert "| measured |" in text and text.count("| yes") == 4


def test_tiny_plan_matches_a_real_cpu_step():
    """Fake-tensor plan vs the profiler's allocations on real tensors (benchmarks.check_planner): full
    fine-tuning, and LoRA with the frozen parts in bf16 (the module options the planner sets)."""
    from benchmarks.check_planner import check
    from benchmarks.full_model import read_config

    settings = [Setting(4, "bf16-mixed", True, size=64),
                Setting(4, "bf16-mixed", True, frozen="bf16", trainable="lora-8", size=64)]
    results = check(read_config("configs/tiny.yaml"), settings)
    for r in results:
        assert 0.98 <= r["planned_over_measured"] <= 1.02, r


@pytest.mark.slow
def test_tiny_plan_matches_real_steps_without_checkpointing_and_in_fp32():
    from benchmarks.check_planner import check
    from benchmarks.full_model import read_config

    settings = [Setting(b, p, c, size=64) for b in (2, 16) for p, c in (("32-true", False), ("bf16-mixed", False))]
    for r in check(read_config("configs/tiny.yaml"), settings):
        assert 0.98 <= r["planned_over_measured"] <= 1.02, r


@pytest.mark.slow
def test_full_size_step_on_fake_tensors_books_what_the_parameter_counts_say(tmp_path):
    from benchmarks.plan_memory import main

    out = tmp_path / "plan.json"
    assert main(["--config", "configs/anydoor.yaml", "--batches", "1", "--json", str(out)]) == 0
    plan = json.loads(out.read_text())
    facts, row = plan["facts"], plan["rows"][0]
    assert 2.4e9 < facts["total"] < 2.5e9 and 8.7e8 < facts["trainable"] < 8.9e8  # ViT-g + SD-2.1 + ControlNet
    assert row["how"] == "measured" and row["peak_phase"] == "optimizer"
    # fp32 weights, fp32 gradients, AdamW's two fp32 moments, foreach AdamW's one fp32 temporary
    assert row["weights_gib"] == pytest.approx(4 * facts["total"] / GIB, abs=0.02)
    assert row["gradients_gib"] == pytest.approx(4 * facts["trainable"] / GIB, abs=0.02)
    assert row["optimizer_gib"] == pytest.approx(8 * facts["trainable"] / GIB, abs=0.02)
    assert row["temporaries_gib"] == pytest.approx(4 * facts["trainable"] / GIB, abs=0.02)


def _print_config(capsys, path) -> str:
    from src.cli.train import cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("name", ["anydoor", "anydoor_24gb", "anydoor_16gb"])
def test_shipped_configs_parse_with_the_training_cli(capsys, tmp_path, name):
    """As shipped where bitsandbytes is installed; elsewhere with torch's AdamW in place of the 8-bit one
    (LightningCLI imports the optimizer class while parsing)."""
    import yaml

    path = f"configs/{name}.yaml"
    cfg = yaml.safe_load(open(path))
    eight_bit = cfg["model"]["init_args"]["optimizer"]["class_path"] == "bitsandbytes.optim.AdamW8bit"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        if eight_bit:
            cfg["model"]["init_args"]["optimizer"]["class_path"] = "torch.optim.AdamW"
            path = tmp_path / f"{name}.yaml"
            path.write_text(yaml.safe_dump(cfg))
    printed = _print_config(capsys, path)
    assert "gradient_as_bucket_view: true" in printed
    if name == "anydoor_16gb":
        assert "frozen_dtype: bfloat16" in printed


def test_the_8bit_configs_parse_as_shipped(capsys):
    pytest.importorskip("bitsandbytes")
    for name in ("anydoor_24gb", "anydoor_16gb"):
        assert "bitsandbytes.optim.AdamW8bit" in _print_config(capsys, f"configs/{name}.yaml")


def test_config_settings_read_the_recipe():
    from benchmarks.full_model import read_config
    from benchmarks.plan_memory import config_settings

    (s,) = config_settings(read_config("configs/anydoor_24gb.yaml"))
    assert (s.batch, s.precision, s.checkpointing, s.optimizer, s.size) == (8, "bf16-mixed", True, "adamw8bit", 512)
    with pytest.raises(ValueError, match="nowhere.yaml"):
        read_config("nowhere.yaml")


@pytest.mark.slow
def test_24gb_recipe_fits_one_24gb_gpu_at_its_batch(tmp_path):
    from benchmarks.plan_memory import main

    out = tmp_path / "plan.json"
    assert main(["--config", "configs/anydoor_24gb.yaml", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["batch"] == 8 and row["optimizer"] == "adamw8bit" and row["how"] == "derived"
    assert row["fits"]["24GB"] and row["need_gib"] < 22.5  # also inside an A10/L4's 22.5 GiB


@pytest.mark.slow
def test_16gb_recipe_fits_one_16gb_gpu_at_its_batch(tmp_path):
    from benchmarks.plan_memory import main

    out = tmp_path / "plan.json"
    assert main(["--config", "configs/anydoor_16gb.yaml", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["batch"], row["optimizer"], row["frozen"], row["trainable"]) == (4, "adamw8bit", "bf16", "full")
    assert row["trained_params"] == 880_039_076  # the full trainable set
    assert row["fits"]["16GB"] and row["need_gib"] < 15.0  # also inside a T4's 15 GiB


@pytest.mark.slow
def test_full_size_lora_is_planned_by_running_it():
    """peft adapters on the full model on fake tensors: the trained set is the adapters, the new ControlNet
    parts and the projector; the base weights are frozen (bf16 here) and hold no gradient."""
    from benchmarks.full_model import read_config
    from benchmarks.plan_memory import plan

    (row,) = plan([Setting(1, frozen="bf16", trainable="lora-8")], read_config("configs/anydoor.yaml"),
                  log=lambda _: None)
    facts = row.facts
    assert 2.4e9 < facts["total"] < 2.5e9 and 1e7 < facts["trainable"] < 3e7
    split = row.phases["optimizer"]
    assert split["gradients"] == pytest.approx(4 * facts["trainable"], rel=0.01)
    frozen = facts["total"] - facts["trainable"]
    assert split["weights"] == pytest.approx(2 * frozen + 4 * facts["trainable"], rel=0.01)
