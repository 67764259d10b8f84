"""The planner's two instruments: storage booking (PeakMemory) and CUDA's autocast policy (CudaAutocast)."""

from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.memtrack import CudaAutocast, PeakMemory, autocast_forward, backward, rounded


@contextmanager
def real_cuda_autocast(dtype):
    """torch.autocast("cuda") switches itself off without a driver; the dispatch key works on fake CUDA."""
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        torch.autocast_decrement_nesting()
        torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", False)


def test_rounding_follows_cuda_blocks():
    assert rounded(1) == 512 and rounded(512) == 512 and rounded(513) == 1024 and rounded(0) == 0
    assert rounded(7, block=1) == 7


def test_books_weights_gradients_optimizer_and_the_step_temporary_exactly():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32))
    frozen = torch.nn.Linear(32, 32).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), foreach=True)
    n_bytes = sum(p.nbytes for p in model.parameters())
    tracker = PeakMemory(block=1)
    with tracker:
        tracker.watch_module(model)
        tracker.watch_module(frozen)
        with tracker.step_phase("forward"):
            x = torch.randn(16, 64)
            loss = frozen(model(x)).square().mean()
        with tracker.step_phase("backward"):
            loss.backward()
        del loss, x
        assert tracker.live["gradients"] == n_bytes  # every trainable .grad, nothing for the frozen layer
        with tracker.step_phase("optimizer"):
            opt.step()
        tracker.watch_optimizer(opt)
        opt.zero_grad(set_to_none=True)
    tracker.close()
    weights = n_bytes + sum(p.nbytes for p in frozen.parameters())
    state_bytes = 2 * n_bytes + 4 * len(list(model.parameters()))  # exp_avg, exp_avg_sq + fp32 step counters
    assert tracker.live["weights"] == weights
    assert tracker.live["optimizer"] == state_bytes
    assert tracker.live["gradients"] == 0 and tracker.live["activations"] == 0
    step = tracker.phase_splits["optimizer"]
    assert step["gradients"] == n_bytes
    assert step["temporaries"] >= n_bytes  # foreach AdamW's sqrt(exp_avg_sq) copy of every state
    fwd = tracker.phase_splits["forward"]
    assert fwd["activations"] >= 16 * (64 + 128 + 32) * 4  # input + hidden + output at least


POLICY_CASES = {
    "linear": lambda x, w: F.linear(x, w),
    "matmul": lambda x, w: x @ w.t(),
    "bmm": lambda x, w: torch.bmm(x[None], w.t()[None]),
    "baddbmm": lambda x, w: torch.baddbmm(x[None], x[None], w[None]),
    "conv2d": lambda x, w: F.conv2d(x[None, None], w[None, None]),
    "sdpa": lambda x, w: F.scaled_dot_product_attention(x[None], w[None], w[None]),
    "group_norm": lambda x, w: F.group_norm(x[None].to(torch.bfloat16), 4),
    "layer_norm": lambda x, w: F.layer_norm(x.to(torch.bfloat16), (x.shape[-1],)),
    "softmax": lambda x, w: torch.softmax(x.to(torch.bfloat16), -1),
    "sum": lambda x, w: x.to(torch.bfloat16).sum(),
    "exp": lambda x, w: torch.exp(x.to(torch.bfloat16)),
    "mse_loss": lambda x, w: F.mse_loss(x.to(torch.bfloat16), w.to(torch.bfloat16)),
    "cat": lambda x, w: torch.cat([x, w.to(torch.bfloat16)]),
    "gelu": lambda x, w: F.gelu(x.to(torch.bfloat16)),
    "silu": lambda x, w: F.silu(x),
}


@pytest.mark.parametrize("name", sorted(POLICY_CASES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_policy_gives_the_dtype_real_cuda_autocast_gives(name, dtype):
    fn = POLICY_CASES[name]
    with FakeTensorMode():
        with real_cuda_autocast(dtype):
            real = fn(torch.randn(8, 8, device="cuda"), torch.randn(8, 8, device="cuda"))
        with autocast_forward(CudaAutocast(dtype)):
            ours = fn(torch.randn(8, 8), torch.randn(8, 8))
    assert ours.dtype == real.dtype, f"{name}: CUDA autocast gives {real.dtype}, the replay {ours.dtype}"


def _forward_memory(device: str, dtype: torch.dtype) -> tuple[int, int]:
    """Forward peak and saved bytes of the small test model on fake ``device`` tensors."""
    from benchmarks.full_model import materialize, random_batch
    from models.anydoor_module import AnyDoorModule
    from tests.fakes import TINY_MODEL_KWARGS

    with torch.device("meta"):
        module = AnyDoorModule(**TINY_MODEL_KWARGS)
    with FakeTensorMode(allow_non_fake_inputs=True):
        materialize(module, device)
        tracker = PeakMemory()
        with tracker:
            tracker.watch_module(module)
            batch = random_batch(4, 32, 56, device=device)
            amp = real_cuda_autocast(dtype) if device == "cuda" else autocast_forward(CudaAutocast(dtype))
            # The same attention kernel on both sides: fake CUDA cannot ask a GPU for flash attention.
            with tracker.step_phase("forward"), amp, sdpa_kernel(SDPBackend.MATH):
                loss = module.diffusion_loss(batch, timesteps=batch["timesteps"],
                                             generator=torch.Generator().manual_seed(0))
            saved = tracker.live["activations"]
            del loss
        tracker.close()
    return tracker.phase_peaks["forward"], saved


def test_replayed_policy_books_the_same_forward_memory_as_real_cuda_autocast():
    """Real AutocastCUDA runs on fake CUDA tensors in the forward (only the backward needs a driver)."""
    real = _forward_memory("cuda", torch.bfloat16)
    ours = _forward_memory("cpu", torch.bfloat16)
    # The one difference: on CUDA the scheduler's 1000-entry alphas_cumprod table is copied to the
    # device (add_noise), 4000 B = 8 blocks; on CPU it is used in place. Full size: same 4 KiB of 16.9 GB.
    assert [r - o for r, o in zip(real, ours)] == [4096, 4096]


def test_backward_keeps_the_policy_for_checkpointed_recomputation():
    from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

    lin = torch.nn.Linear(16, 16)
    norm = torch.nn.GroupNorm(4, 16)
    seen = []

    def block(x):
        h = lin(norm(x))
        seen.append(h.dtype)
        return h

    amp = CudaAutocast(torch.bfloat16)
    x = torch.randn(2, 16, requires_grad=True)
    with set_checkpoint_early_stop(False):  # let the recomputation run to the end of the block
        with autocast_forward(amp):
            y = checkpoint(block, x, use_reentrant=False).float().sum()
    backward(y, amp)
    assert seen == [torch.bfloat16, torch.bfloat16]  # forward and the recomputation in backward
    assert lin.weight.grad is not None and lin.weight.grad.dtype == torch.float32


def test_plain_backward_under_the_mode_would_recompute_in_fp32():
    """Why ``backward`` exists: Tensor.backward is a torch function, so the mode would switch itself
    off for the whole backward and checkpointing would recompute in fp32 (torch notices)."""
    from torch.utils.checkpoint import CheckpointError, checkpoint

    lin = torch.nn.Linear(16, 16)
    amp = CudaAutocast(torch.bfloat16)
    with autocast_forward(amp):
        y = checkpoint(lin, torch.randn(2, 16, requires_grad=True), use_reentrant=False).float().sum()
    with amp, pytest.raises(CheckpointError, match="different metadata"):
        y.backward()
