"""Tensor-memory accounting for one training step, without a GPU.

Two pieces, used by ``benchmarks.plan_memory`` on fake tensors and by its tiny validation on real ones:

* ``PeakMemory``: a ``TorchDispatchMode`` that sees every storage the step creates (forward, backward
  and optimizer kernels alike, since it sits below autograd), keeps the live bytes by category and the
  breakdown at the peak. Sizes are rounded up to 512 bytes like CUDA's caching allocator rounds each
  block, so the total is what ``torch.cuda.max_memory_allocated`` counts (without workspaces).
  ``torch.distributed._tools.mem_tracker.MemTracker`` does the same attribution, but in torch 2.14 it
  registers a gradient hook on every parameter a module owns and so fails on frozen ones
  ("cannot register a hook on a tensor that doesn't require gradient"), and its per-module snapshots
  cost ~12 minutes per full-size step here (forward 199 s, backward 522 s) against ~20 s for this.
* ``CudaAutocast``: CUDA's autocast policy replayed as a ``TorchFunctionMode``. Real autocast cannot be
  used on fake CUDA tensors here: ``torch.autocast("cuda")`` disables itself without a driver, and the
  autograd engine rejects fake CUDA tensors ("hasPrimaryContext expects a valid device index"). So
  the planner runs on fake CPU tensors and casts exactly where CUDA's autocast would: matmul-like ops
  to the low-precision dtype, norms/softmax/losses to fp32, ``cat``/``stack`` to the widest input,
  with the cast cache for fp32 leaf weights that require grad (held until the autocast region ends).
  A test checks this policy against real ``AutocastCUDA`` on fake CUDA tensors (forward only).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map, tree_map_only

BLOCK = 512  # CUDA caching allocator's minimum block and rounding step
CATEGORIES = ("weights", "gradients", "optimizer", "activations", "temporaries")


def rounded(nbytes: int, block: int = BLOCK) -> int:
    return -(-nbytes // block) * block


class PeakMemory(TorchDispatchMode):
    """Live tensor bytes by category and the category split at the overall peak.

    New storages are booked to the current ``phase`` ("activations" in forward, "temporaries" in
    backward and in the optimizer step); gradients move to "gradients" when autograd accumulates them
    (post-accumulate hooks) and optimizer state to "optimizer" after ``step``.
    """

    def __init__(self, block: int = BLOCK) -> None:
        super().__init__()
        self.block = block  # allocation rounding: 512 as CUDA's allocator; 1 to compare with CPU byte counts
        self.live: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
        self.total = 0
        self.phase_peaks: dict[str, int] = {}  # phase name -> peak total bytes during it
        self.phase_splits: dict[str, dict[str, int]] = {}  # phase name -> category bytes at that peak
        self.phase = "activations"
        self._phase_name = "setup"
        self._storages: dict[int, list] = {}  # id(storage) -> [category, nbytes, weakref]
        self._hooks: list = []

    # ------------------------------------------------------------------ booking
    def book(self, tensors: Any, category: str) -> None:
        """Count (or re-label) the storages behind ``tensors`` as ``category``."""
        tree_map_only(torch.Tensor, lambda t: self._book(t, category, relabel=True), tensors)

    def _book(self, t: torch.Tensor, category: str, relabel: bool = False) -> None:
        try:
            st = t.untyped_storage()
        except (NotImplementedError, RuntimeError):  # sparse / storage-less tensors: nothing to count
            return
        key = id(st)
        entry = self._storages.get(key)
        if entry is not None and entry[2]() is st:
            if relabel and entry[0] != category:
                self.live[entry[0]] -= entry[1]
                self.live[category] += entry[1]
                entry[0] = category
            return
        nbytes = rounded(st.nbytes(), self.block)
        ref = weakref.ref(st, lambda _, key=key: self._free(key))
        self._storages[key] = [category, nbytes, ref]
        self.live[category] += nbytes
        self.total += nbytes
        if self.total > self.phase_peaks.get(self._phase_name, -1):
            self.phase_peaks[self._phase_name] = self.total
            self.phase_splits[self._phase_name] = dict(self.live)

    def _free(self, key: int) -> None:
        entry = self._storages.pop(key, None)
        if entry is not None:
            self.live[entry[0]] -= entry[1]
            self.total -= entry[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, lambda t: self._book(t, self.phase), out)
        return out

    # ------------------------------------------------------------------ step structure
    @contextmanager
    def step_phase(self, name: str) -> Iterator[None]:
        """``forward`` books new storages as activations, any other phase as temporaries; the peak of
        each phase is kept with its split (a phase starts from what is live when it begins)."""
        before = (self.phase, self._phase_name)
        self.phase = "activations" if name == "forward" else "temporaries"
        self._phase_name = name
        self.phase_peaks[name] = self.total
        self.phase_splits[name] = dict(self.live)
        try:
            yield
        finally:
            self.phase, self._phase_name = before

    def watch_module(self, module: torch.nn.Module) -> None:
        """Book weights and buffers; gradients of trainable weights become "gradients" when accumulated."""
        self.book(list(module.parameters()) + list(module.buffers()), "weights")
        for p in module.parameters():
            if p.requires_grad:
                if p.grad is not None:
                    self.book(p.grad, "gradients")
                self._hooks.append(p.register_post_accumulate_grad_hook(lambda q: self.book(q.grad, "gradients")))

    def watch_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Book the optimizer state as "optimizer" (call after each ``step``)."""
        self.book([v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)],
                  "optimizer")

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    @property
    def peak(self) -> int:
        return max(self.phase_peaks.values(), default=0)


# ---------------------------------------------------------------------------------- autocast policy
# Names of the ops CUDA's autocast runs in the low-precision dtype / in fp32 / in the widest input type
# (aten/src/ATen/autocast_mode.cpp, CUDA lists), as they reach ``__torch_function__`` (functional and
# Tensor-method spellings alike). Ops not listed run in their inputs' dtype, as under real autocast.
LOWER_PRECISION = frozenset({
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "conv_tbc",
    "linear", "matmul", "__matmul__", "__rmatmul__", "mm", "mv", "bmm", "baddbmm", "addmm", "addmv", "addr",
    "addbmm", "einsum", "chain_matmul", "prelu", "scaled_dot_product_attention",
})
FP32 = frozenset({
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal",
    "rsqrt", "sinh", "tan", "pow", "__pow__", "softplus", "layer_norm", "group_norm", "norm", "cosine_similarity",
    "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "hinge_embedding_loss", "kl_div", "l1_loss",
    "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss", "multilabel_margin_loss",
    "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss", "binary_cross_entropy_with_logits",
    "dist", "pdist", "cdist", "renorm", "logsumexp",
    # fp32_set_opt_dtype: run with dtype=float32 when no dtype is given
    "softmax", "log_softmax", "cumprod", "cumsum", "prod", "sum",
})
PROMOTE = frozenset({"cat", "stack", "addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "index_put",
                     "scatter_add", "tensordot", "vdot"})


def _is_float(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


class CudaAutocast(TorchFunctionMode):
    """CUDA autocast semantics on any device (see module docstring). In the forward
    (``autocast_forward``) casts of fp32 leaf weights are cached like autocast's cache; checkpoint
    recomputation during ``backward`` casts afresh, as autocast outside its outermost region does."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.dtype = dtype
        self.cache_enabled = False
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def clear_cache(self) -> None:
        self._cache.clear()

    def _cast(self, t: Any, dtype: torch.dtype) -> Any:
        if not _is_float(t) or t.dtype == dtype:
            return t
        cacheable = (self.cache_enabled and dtype == self.dtype and t.dtype == torch.float32 and t.requires_grad
                     and t.is_leaf)
        if cacheable:
            hit = self._cache.get(id(t))
            if hit is not None and hit[0] is t:
                return hit[1]
        out = t.to(dtype)
        if cacheable:
            self._cache[id(t)] = (t, out)
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in LOWER_PRECISION:
            args, kwargs = tree_map(lambda t: self._cast(t, self.dtype), (args, kwargs))
        elif name in FP32:
            has_low = any(_is_float(t) and t.dtype != torch.float32 for t in tree_leaves((args, kwargs)))
            if name in ("softmax", "log_softmax", "cumprod", "cumsum", "prod", "sum"):
                if has_low and kwargs.get("dtype") is None and not _has_positional_dtype(args):
                    kwargs = {**kwargs, "dtype": torch.float32}
            else:
                args, kwargs = tree_map(lambda t: self._cast(t, torch.float32), (args, kwargs))
        elif name in PROMOTE:
            floats = [t for t in tree_leaves((args, kwargs)) if _is_float(t)]
            if floats:
                widest = max((t.dtype for t in floats), key=lambda d: torch.finfo(d).bits)
                if any(t.dtype != widest for t in floats):
                    args, kwargs = tree_map(lambda t: self._cast(t, widest), (args, kwargs))
        return func(*args, **kwargs)


def _has_positional_dtype(args: tuple) -> bool:
    return any(isinstance(a, torch.dtype) for a in args)


@contextmanager
def autocast_forward(mode: CudaAutocast | None) -> Iterator[None]:
    """The forward under autocast (cached casts, dropped on exit like ``torch.autocast``)."""
    if mode is None:
        yield
        return
    mode.cache_enabled = True
    try:
        with mode:
            yield
    finally:
        mode.clear_cache()
        mode.cache_enabled = False


def backward(loss: torch.Tensor, mode: CudaAutocast | None) -> None:
    """``loss.backward()`` with ``mode`` active, so checkpointed blocks recompute under the policy, as
    ``torch.utils.checkpoint`` re-enters the autocast state it saved. ``Tensor.backward`` is itself a
    torch function: a ``TorchFunctionMode`` would receive it and run the whole backward with itself
    switched off, hence the engine entry that ``torch.autograd.backward`` ends in."""
    if mode is None:
        loss.backward()
        return
    from torch.autograd.graph import _engine_run_backward

    grad = torch.ones_like(loss)
    with mode:
        _engine_run_backward((loss,), (grad,), False, False, (), allow_unreachable=True, accumulate_grad=True)
