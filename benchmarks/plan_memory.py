"""Plan training memory per GPU without a GPU: one real training step of the full model on fake tensors.

    python -m benchmarks.plan_memory                       # the table of docs/training.md (~6 min idle CPU)
    python -m benchmarks.plan_memory --config configs/anydoor_24gb.yaml   # that config's own row
    python -m benchmarks.plan_memory --batches 1 4 --json plan.json

Each measured row builds the model of the config (SD-2.1-base U-Net + ControlNet + VAE + DINOv2
ViT-g/14 + projector, no weights) with the setting's module options (``frozen_dtype``, ``lora``) on
fake CPU tensors and runs forward, backward, gradient clipping and an AdamW step (foreach, CUDA's
default) exactly as the module does, under CUDA's autocast policy (``benchmarks.memtrack``);
``PeakMemory`` books every storage. Rows marked *derived* swap in what a measured row cannot run here
(8-bit AdamW state in bitsandbytes' layout, DDP buckets, FSDP shards). "need" adds the margin of
``need_gib``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterable, Optional

import torch

from benchmarks.memtrack import CATEGORIES, CudaAutocast, PeakMemory, autocast_forward, backward

GIB = 2**30
# As reported: V100 16 GB (16160 MiB; a T4 has 15360), RTX 4090 (24564 MiB; an A10/L4 22.5 GiB), A100 40/80 GB
CARDS_GIB = {"16GB": 15.78, "24GB": 23.99, "40GB": 40.0, "80GB": 80.0}
FRAGMENTATION = 0.10  # caching-allocator slack (reserved - allocated) in steady training
FIXED_GIB = 1.0  # CUDA context (outside the allocator) + cuBLAS/cuDNN workspaces not seen on fake tensors
PRECISION_DTYPES = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
FROZEN = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}  # Setting.frozen -> the module's frozen_dtype
OPTIMIZERS = {"torch.optim.AdamW": "adamw", "bitsandbytes.optim.AdamW8bit": "adamw8bit"}


def need_gib(peak_bytes: float) -> float:
    """Card memory a tracked peak needs: +10% allocator fragmentation, +1 GiB context and workspaces."""
    return peak_bytes / GIB * (1 + FRAGMENTATION) + FIXED_GIB


@dataclass(frozen=True)
class Setting:
    """One training configuration at one batch size (per GPU)."""

    batch: int
    precision: str = "bf16-mixed"
    checkpointing: bool = True
    optimizer: str = "adamw"  # or "adamw8bit"
    frozen: str = "fp32"  # dtype of the frozen parts (module option frozen_dtype): a key of FROZEN
    trainable: str = "full"  # or "lora-<rank>" (module option lora)
    strategy: str = "single"  # single, ddp, ddp-bucket-view, fsdp-<N>
    size: int = 512

    def label(self) -> str:
        parts = [self.precision, "ckpt" if self.checkpointing else "no-ckpt", self.optimizer,
                 f"frozen-{self.frozen}", self.trainable, self.strategy]
        return " ".join(parts)

    def module_options(self, config_lora: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """``AnyDoorModule`` arguments of this setting (the config's other LoRA keys kept)."""
        lora = None
        if self.trainable != "full":
            lora = {**(config_lora or {}), "rank": int(self.trainable.removeprefix("lora-"))}
        return {"frozen_dtype": FROZEN[self.frozen], "lora": lora}


@dataclass
class Row:
    setting: Setting
    how: str  # measured / derived
    phases: dict[str, dict[str, int]]  # phase -> category bytes at that phase's peak
    facts: dict[str, Any]  # parameter counts of the model measured (model_facts)
    note: str = ""

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda p: sum(self.phases[p].values()))

    @property
    def peak(self) -> int:
        return sum(self.phases[self.peak_phase].values())

    def as_dict(self) -> dict[str, Any]:
        split = self.phases[self.peak_phase]
        return {**asdict(self.setting), "how": self.how, "note": self.note, "peak_phase": self.peak_phase,
                "trained_params": self.facts["trainable"],
                "peak_gib": round(self.peak / GIB, 2), "need_gib": round(need_gib(self.peak), 2),
                **{f"{k}_gib": round(v / GIB, 2) for k, v in split.items()},
                "fits": {card: need_gib(self.peak) <= cap for card, cap in CARDS_GIB.items()}}


# ------------------------------------------------------------------------------------ one step
def make_optimizer(module) -> torch.optim.Optimizer:
    """The module's own AdamW, switched to the multi-tensor path CUDA picks by default (on CPU torch
    would loop per tensor and skip the step's full-size temporary)."""
    out = module.configure_optimizers()
    opt = out["optimizer"] if isinstance(out, dict) else out
    for group in opt.param_groups:
        group["foreach"] = True
    return opt


def warm_optimizer(module, optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer state (a step on zero gradients), so measured steps are steady-state ones."""
    for p in module.trainable_parameters().values():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_step(module, optimizer, batch: dict[str, torch.Tensor], precision: str,
               tracker: Optional[PeakMemory] = None, emulate_autocast: bool = True, clip: float = 1.0) -> torch.Tensor:
    """One Lightning-style step: forward under autocast, backward, clip, optimizer step, zero_grad.

    ``emulate_autocast`` replays CUDA's policy (fake/CPU tensors); on a GPU pass False for the real one.
    fp16 scales the loss like ``GradScaler`` (same memory; no unscale skip logic needed here).
    Returns the (detached) loss.
    """
    dtype = PRECISION_DTYPES[precision]
    phase: Callable[[str], Any] = tracker.step_phase if tracker else (lambda name: nullcontext())
    amp = CudaAutocast(dtype) if (dtype is not None and emulate_autocast) else None
    device_type = batch["target"].device.type
    real_amp = (torch.autocast(device_type, dtype=dtype) if (dtype is not None and not emulate_autocast)
                else nullcontext())
    gen = torch.Generator(device=batch["target"].device).manual_seed(0)
    with phase("forward"), autocast_forward(amp), real_amp:
        loss = module.diffusion_loss(batch, timesteps=batch["timesteps"], generator=gen)
        if dtype == torch.float16:
            loss = loss * 65536.0  # GradScaler's initial scale
    with phase("backward"):
        backward(loss, amp)
    value = loss.detach()
    del loss
    params = list(module.trainable_parameters().values())
    with phase("clip"):
        torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
    with phase("optimizer"):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if tracker is not None:
        tracker.watch_optimizer(optimizer)
    return value


def measure(module, optimizer, setting: Setting, facts: dict[str, Any], reference_size: int = 224,
            block: int = 512) -> Row:
    """Track one steady-state step of ``module`` (fake or real tensors) at ``setting``."""
    from benchmarks.full_model import random_batch

    set_checkpointing(module, setting.checkpointing)
    tracker = PeakMemory(block)
    with tracker:
        tracker.watch_module(module)
        tracker.watch_optimizer(optimizer)
        batch = random_batch(setting.batch, setting.size, reference_size, device=module.device,
                             num_timesteps=module.noise_scheduler.config.num_train_timesteps)
        train_step(module, optimizer, batch, setting.precision, tracker)
        del batch
    tracker.close()
    phases = {k: v for k, v in tracker.phase_splits.items() if k != "setup"}
    return Row(setting, "measured", phases, facts)


def set_checkpointing(module, on: bool) -> None:
    if on:
        module.denoiser.enable_gradient_checkpointing()
    else:
        module.denoiser.unet.disable_gradient_checkpointing()
        module.denoiser.controlnet.disable_gradient_checkpointing()


def plan(settings: Iterable[Setting], config: dict[str, Any], block: int = 512,
         log: Callable[[str], None] = print) -> list[Row]:
    """Measure ``settings`` (AdamW, one GPU) on fake tensors with the model of ``config``, one build per
    frozen dtype and trainable set; rows in the order given."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from benchmarks.full_model import build_module, materialize

    settings = list(settings)
    rows: dict[int, Row] = {}
    reference_size = int(config["data"]["init_args"].get("reference_size", 224))
    config_lora = config["model"]["init_args"].get("lora")
    for frozen, trainable in sorted({(s.frozen, s.trainable) for s in settings}):
        start = time.perf_counter()
        group = [i for i, s in enumerate(settings) if (s.frozen, s.trainable) == (frozen, trainable)]
        module = build_module(config, "meta", ema_decay=None, **settings[group[0]].module_options(config_lora))
        facts = model_facts(module)
        with FakeTensorMode(allow_non_fake_inputs=True):
            materialize(module, "cpu")
            optimizer = make_optimizer(module)
            warm_optimizer(module, optimizer)
            log(f"built the model on fake tensors, frozen parts {frozen}, {trainable}: "
                f"{time.perf_counter() - start:.0f} s")
            for i in group:
                s = settings[i]
                start = time.perf_counter()
                rows[i] = measure(module, optimizer, s, facts, reference_size, block)
                log(f"  {s.label()} batch {s.batch}: peak {rows[i].peak / GIB:.2f} GiB "
                    f"({time.perf_counter() - start:.0f} s)")
        del module, optimizer
    return [rows[i] for i in range(len(settings))]


# ------------------------------------------------------------------------------------ model facts
def model_facts(module) -> dict[str, Any]:
    """Parameter counts the derived rows need, read off the (meta) module."""
    trainable = module.trainable_parameters()
    counts = {"total": sum(p.numel() for p in module.parameters()),
              "trainable": sum(p.numel() for p in trainable.values())}
    # bitsandbytes keeps fp32 state for tensors under 4096 elements (min_8bit_size).
    counts["trainable_small"] = sum(p.numel() for p in trainable.values() if p.numel() < 4096)
    counts["trainable_blocks"] = sum(math.ceil(p.numel() / 256) for p in trainable.values() if p.numel() >= 4096)
    counts["trainable_tensors"] = len(trainable)
    units = [*module.denoiser.unet.down_blocks, *module.denoiser.unet.up_blocks, module.denoiser.unet.mid_block,
             *module.denoiser.controlnet.down_blocks, module.denoiser.controlnet.mid_block,
             *module.id_encoder.vit.blocks]
    counts["largest_fsdp_unit"] = max(sum(p.numel() for p in u.parameters()) for u in units)
    return counts


# ------------------------------------------------------------------------------------ derived rows
def _adjust(row: Row, setting: Setting, how: str, note: str, optimizer: Optional[float] = None,
            step_temp: float = 1.0, extra: float = 0.0) -> Row:
    """A row with parameter-bound memory changed in every phase: optimizer state replaced, the
    optimizer step's temporaries scaled, ``extra`` persistent bytes added (booked as weights)."""
    phases = {}
    for name, split in row.phases.items():
        new = dict(split)
        new["weights"] = split["weights"] + extra
        if optimizer is not None:
            new["optimizer"] = optimizer
        if name == "optimizer":
            new["temporaries"] = split["temporaries"] * step_temp
        phases[name] = {k: int(v) for k, v in new.items()}
    return Row(setting, how, phases, row.facts, note)


def adam8bit_state_bytes(n_large: int, n_small: int, blocks: int, tensors: int) -> int:
    """bitsandbytes AdamW8bit: two uint8 states + one fp32 absmax per 256-element block each for
    tensors of >= 4096 elements, two fp32 states below that, two shared 256-entry quantisation maps;
    plus up to 512 B of CUDA allocator rounding for each of a tensor's four state tensors. Checked
    against bitsandbytes 0.50.2 on CPU (tests/benchmarks/test_plan_memory.py)."""
    return 2 * n_large + 2 * 4 * blocks + 8 * n_small + 2 * 256 * 4 + 4 * 512 * tensors


def eight_bit_row(row: Row) -> Row:
    """The measured AdamW row with bitsandbytes' 8-bit state; its step updates in place (no temporary)."""
    facts = row.facts
    state = adam8bit_state_bytes(facts["trainable"] - facts["trainable_small"], facts["trainable_small"],
                                 facts["trainable_blocks"], facts["trainable_tensors"])
    return _adjust(row, replace(row.setting, optimizer="adamw8bit"), "derived",
                   "AdamW state swapped for bitsandbytes' 8-bit layout", optimizer=state, step_temp=0.0)


def ddp_row(row: Row, bucket_view: bool) -> Row:
    """DDP: the reducer keeps fp32 gradient buckets as large as all trainable gradients, unless
    ``gradient_as_bucket_view=True`` makes ``.grad`` views into them (Lightning's default is False)."""
    extra = 0 if bucket_view else 4 * row.facts["trainable"]
    setting = replace(row.setting, strategy="ddp-bucket-view" if bucket_view else "ddp")
    return _adjust(row, setting, "derived", "gradients as bucket views" if bucket_view else "+ fp32 gradient buckets",
                   extra=extra)


def fsdp_row(row: Row, world: int) -> Row:
    """FULL_SHARD over ``world`` GPUs: weights, gradients, optimizer state and the step's temporaries
    divided by ``world``; plus two gathered units in the compute dtype (current + prefetched) and the
    unsharded gradient of one unit before its reduce-scatter. Activations are not sharded."""
    compute = 4 if row.setting.precision == "32-true" else 2
    unit = row.facts["largest_fsdp_unit"]
    phases = {}
    for name, split in row.phases.items():
        new = dict(split)
        new["weights"] = split["weights"] / world + 2 * compute * unit
        new["gradients"] = split["gradients"] / world + compute * unit
        new["optimizer"] = split["optimizer"] / world
        if name == "optimizer":
            new["temporaries"] = split["temporaries"] / world
        phases[name] = {k: int(v) for k, v in new.items()}
    note = f"gather buffers: 2 x {unit / 1e6:.0f} M-parameter unit"
    return Row(replace(row.setting, strategy=f"fsdp-{world}"), "derived", phases, row.facts, note)


# ------------------------------------------------------------------------------------ table
def table(rows: list[Row]) -> str:
    """Markdown: per-GPU GiB split at the peak, the peak, what it needs with margins, and the fits."""
    head = ("| setting | batch | how | weights | grads | optimizer | activations | temporaries | peak | need "
            "| 16 GB | 24 GB | 40 GB | 80 GB |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        split = r.phases[r.peak_phase]
        need = need_gib(r.peak)
        fits = " | ".join("yes" if need <= cap else "no" for cap in CARDS_GIB.values())
        cells = [f"{split[c] / GIB:.2f}" for c in CATEGORIES]
        lines.append(f"| {r.setting.label()} | {r.setting.batch} | {r.how} | {' | '.join(cells)} | "
                     f"{r.peak / GIB:.2f} ({r.peak_phase}) | {need:.1f} | {fits} |")
    return "\n".join(lines)


def default_settings(batches: Iterable[int], lora_rank: int = 64) -> list[Setting]:
    """The measured grid: fp32 and bf16 without checkpointing, bf16 with it (frozen fp32 and bf16), LoRA
    with frozen bf16, and the authors' fp16 setting."""
    out = []
    for b in batches:
        out += [Setting(b, "32-true", False), Setting(b, "bf16-mixed", False), Setting(b, "bf16-mixed", True),
                Setting(b, "bf16-mixed", True, frozen="bf16"),
                Setting(b, "bf16-mixed", True, frozen="bf16", trainable=f"lora-{lora_rank}")]
    if 16 in batches:  # the authors' run: 16-mixed (fp16 AMP), batch 16; their YAML sets use_checkpoint: True
        out += [Setting(16, "16-mixed", True), Setting(16, "16-mixed", False)]
    return out


def derived_rows(rows: list[Row]) -> list[Row]:
    out = []
    for r in rows:
        s = r.setting
        if s.precision != "bf16-mixed" or not s.checkpointing:
            continue
        eight = eight_bit_row(r)
        out.append(eight)
        if s.frozen == "fp32" and s.trainable == "full" and s.batch in (4, 16):
            out += [ddp_row(r, False), ddp_row(r, True), ddp_row(eight, False), ddp_row(eight, True)]
            out += [fsdp_row(r, n) for n in (2, 4, 8)]
    return out


def config_settings(config: dict[str, Any], batches: Optional[Iterable[int]] = None) -> list[Setting]:
    """The setting a project config trains with (precision, checkpointing, optimizer, frozen dtype,
    LoRA rank, batch, image size)."""
    init = config["model"]["init_args"]
    precision = str(config.get("trainer", {}).get("precision", "32-true"))
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"precision {precision!r} is not planned (use one of {sorted(PRECISION_DTYPES)})")
    optimizer = str((init.get("optimizer") or {}).get("class_path", "torch.optim.AdamW"))
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {optimizer!r} is not planned (use one of {sorted(OPTIMIZERS)})")
    frozen = {v: k for k, v in FROZEN.items()}.get(init.get("frozen_dtype") or None)
    if frozen is None and init.get("frozen_dtype") not in (None, "float32"):
        raise ValueError(f"frozen_dtype {init.get('frozen_dtype')!r} is not planned (use one of {sorted(FROZEN)})")
    lora = init.get("lora")
    trainable = f"lora-{int(lora['rank'])}" if lora else "full"
    data = config["data"]["init_args"]
    return [Setting(b, precision, bool(init.get("gradient_checkpointing", False)), OPTIMIZERS[optimizer],
                    frozen or "fp32", trainable, size=int(data.get("image_size", 512)))
            for b in (batches or [int(data.get("batch_size", 1))])]


def main(argv: Optional[list[str]] = None) -> int:
    from benchmarks.full_model import DEFAULT_CONFIG, read_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="plan only this config's own setting (default: the grid "
                   f"on {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[1])})")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="per-GPU batch sizes (default 1 2 4 8 16)")
    p.add_argument("--lora-rank", type=int, default=64, help="rank of the grid's LoRA rows")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # fake tensors do no arithmetic
    try:
        config = read_config(args.config or DEFAULT_CONFIG)
        if args.config:
            wanted = config_settings(config, args.batches)
        else:
            wanted = default_settings(args.batches or (1, 2, 4, 8, 16), args.lora_rank)
    except ValueError as err:
        raise SystemExit(f"plan_memory: {err}") from None
    start = time.perf_counter()
    # 8-bit rows are measured with AdamW and their state swapped (bitsandbytes cannot run on fake tensors).
    measured = plan([replace(s, optimizer="adamw") for s in wanted], config)
    rows: list[Row] = []
    for s, r in zip(wanted, measured):
        rows.append(eight_bit_row(r) if s.optimizer == "adamw8bit" else r)
    if not args.config:
        rows += derived_rows(measured)
    print(table(rows))
    facts = rows[0].facts
    print(f"\n{facts['total'] / 1e6:.0f} M parameters, {facts['trainable'] / 1e6:.0f} M trained; GiB per GPU at "
          f"the step's peak; need = peak x {1 + FRAGMENTATION:.2f} + {FIXED_GIB:g} GiB; "
          f"planned in {time.perf_counter() - start:.0f} s")
    if args.json:
        from src.files import atomic_write

        atomic_write(args.json, json.dumps({"facts": facts, "rows": [r.as_dict() for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
