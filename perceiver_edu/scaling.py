"""How attention's cost grows with the input size M: measured and estimated.

Paper, abstract: the Perceiver "leverages an asymmetric attention mechanism to iteratively distill
inputs into a tight latent bottleneck, allowing it to scale to handle very large inputs." Full
self-attention over M inputs builds an M x M score matrix; the Perceiver's cross-attention from N
latents builds an N x M one. This module times one attention layer of each kind and measures its
peak memory, on whatever device it is given, and gives the matching analytic estimates.

What is compared
----------------
Three single layers, each the package's `Attention` module, on B inputs of M elements with C channels:

* ``"cross"``: N latents (width D) attend to the M inputs, the Perceiver's cross-attend;
* ``"self"``: the M inputs attend to each other at the same width C, a Transformer layer on raw inputs;
* ``"self_fused"``: the same self-attention through ``scaled_dot_product_attention``.

"cross" and "self" use the explicit ``softmax(QK^T / sqrt(d)) V`` path, which stores the score matrix
as the paper's cost analysis assumes. "self_fused" shows what a memory-efficient kernel (later than
the paper) changes: it never stores the M x M matrix, so memory grows like M, but it still does M^2
work.

How memory is measured
----------------------
On CUDA: ``torch.cuda.max_memory_allocated`` minus what was allocated before the pass (the caching
allocator's own high-water mark). Elsewhere (CPU): `TensorMemoryTracker` counts the bytes of every
tensor storage created while the pass runs and subtracts them when the storage is freed; the peak of
that running total is the figure. It sees every tensor PyTorch creates through its dispatcher, the
activations saved for backward and the gradients included, but not scratch buffers a kernel
allocates internally (a few per-thread tiles for fused attention) nor the allocator's overhead.
The tests check it against known allocations and against the torch profiler's allocator record.
"""
from __future__ import annotations

import math
import os
import statistics
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .attention import Attention

KINDS = ("cross", "self", "self_fused")
BYTES_PER_FLOAT = 4  # fp32 throughout


@dataclass(frozen=True)
class AttentionWorkload:
    """Sizes shared by every layer in a scaling sweep; only M changes."""

    num_latents: int = 128  # N, fixed: the Perceiver's bottleneck
    input_dim: int = 64     # C: channels of one input element, also the attention width
    latent_dim: int = 128   # D
    num_heads: int = 1
    batch_size: int = 1
    backward: bool = True   # time/measure forward + backward (a training step), else forward only

    def __post_init__(self):
        for name in ("num_latents", "input_dim", "latent_dim", "num_heads", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"AttentionWorkload.{name} must be >= 1, got {getattr(self, name)}")
        if self.input_dim % self.num_heads:
            raise ValueError(f"input_dim={self.input_dim} is not divisible by num_heads={self.num_heads}")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; choose one of {KINDS}")


def attention_step(kind: str, num_inputs: int, workload: AttentionWorkload = AttentionWorkload(),
                   device: torch.device | str = "cpu", seed: int = 0) -> Callable[[], None]:
    """Build one attention layer and its inputs; return a function that runs one pass.

    The pass is forward (+ backward when `workload.backward`), with gradients reset to None first so
    that every call allocates the same tensors.
    """
    _check_kind(kind)
    if num_inputs < 1:
        raise ValueError(f"num_inputs (M) must be >= 1, got {num_inputs}")
    w, device = workload, torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(w.batch_size, num_inputs, w.input_dim, generator=generator).to(device)  # (B, M, C)
    if kind == "cross":
        layer = Attention(w.latent_dim, w.input_dim, w.num_heads, qk_dim=w.input_dim, out_dim=w.latent_dim)
        latents = torch.randn(w.batch_size, w.num_latents, w.latent_dim, generator=generator)
        latents = latents.to(device).requires_grad_(w.backward)  # (B, N, D): learned in a Perceiver
        queries, context = latents, inputs
    else:
        layer = Attention(w.input_dim, None, w.num_heads)
        queries, context = inputs, None
    layer = layer.to(device)
    explicit = kind != "self_fused"

    def step() -> None:
        for tensor in [*layer.parameters(), queries]:
            tensor.grad = None
        with torch.set_grad_enabled(w.backward):
            out = layer(queries, context, return_attention=explicit)
            out = out[0] if explicit else out  # (B, N or M, width)
            if w.backward:
                out.sum().backward()

    return step


# Timing ----------------------------------------------------------------------------------------
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], None], device: torch.device | str = "cpu", repeats: int = 3,
              warmup: int = 1) -> float:
    """Median wall-clock seconds of `fn()` over `repeats` runs, after `warmup` untimed runs.

    The warm-up pays one-off costs (kernel selection, allocator growth); the median ignores a run
    disturbed by another process. On CUDA the device is synchronised around each run, because
    kernels launch asynchronously.
    """
    device = torch.device(device)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# Memory ----------------------------------------------------------------------------------------
class TensorMemoryTracker(TorchDispatchMode):
    """Counts the bytes of tensor storages created while active; `peak` is the high-water mark.

    Every operator call goes through `__torch_dispatch__`. An output whose storage is new (not one
    of the operator's inputs' storages: views and in-place results are not allocations) adds its
    bytes; a weak reference on the storage subtracts them when PyTorch frees it. Tensors that existed
    before the tracker started (weights, the input batch) are not counted.
    """

    def __init__(self):
        super().__init__()
        self.current = 0   # bytes of tracked storages alive now
        self.peak = 0      # the largest `current` seen
        self._alive: dict[int, weakref.ref] = {}

    @staticmethod
    def _storages(tree) -> dict:
        leaves, _ = tree_flatten(tree)
        found = {}
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                storage = leaf.untyped_storage()
                found[storage._cdata] = storage
        return found

    def _release(self, key: int, nbytes: int) -> None:
        if self._alive.pop(key, None) is not None:
            self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = self._storages((args, kwargs))
        for key, storage in self._storages(out).items():
            if key in inputs or key in self._alive:
                continue
            nbytes = storage.nbytes()
            self._alive[key] = weakref.ref(storage, lambda _, key=key, nbytes=nbytes: self._release(key, nbytes))
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        return out


def peak_memory(fn: Callable[[], None], device: torch.device | str = "cpu") -> int:
    """Peak bytes allocated by `fn()` beyond what was allocated before it ran.

    CUDA: the caching allocator's statistics. Other devices: `TensorMemoryTracker`.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - baseline
    with TensorMemoryTracker() as tracker:
        fn()
    return tracker.peak


def memory_method(device: torch.device | str) -> str:
    """One line saying how `peak_memory` measures on this device."""
    if torch.device(device).type == "cuda":
        return "torch.cuda.max_memory_allocated (caching allocator high-water mark, minus the baseline)"
    return "TensorMemoryTracker (bytes of live tensor storages created during the pass, high-water mark)"


def device_memory_bytes(device: torch.device | str) -> int:
    """Total memory of the device: a GPU's own memory, or the machine's RAM for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# Sweeps ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    kind: str
    num_inputs: int            # M
    seconds: float | None      # median time of one pass, None when not timed
    peak_bytes: int | None     # peak memory of one pass, None when not measured


def measure(kind: str, sizes: Iterable[int], workload: AttentionWorkload = AttentionWorkload(),
            device: torch.device | str = "cpu", repeats: int = 3, timing: bool = True,
            memory: bool = True) -> list:
    """Time and/or measure peak memory of one `kind` layer at each input size M in `sizes`."""
    results = []
    for num_inputs in sizes:
        step = attention_step(kind, num_inputs, workload, device)
        peak = peak_memory(step, device) if memory else None  # also serves as a warm-up run
        seconds = time_call(step, device, repeats, warmup=0 if memory else 1) if timing else None
        results.append(Measurement(kind, int(num_inputs), seconds, peak))
        del step
    return results


# Analysis --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionCost:
    flops: float          # multiply-adds x 2 of the matmuls in one forward pass (softmax excluded)
    matrix_bytes: int     # one fp32 score matrix, all heads: B * heads * queries * M * 4


def attention_cost(kind: str, num_inputs: int, workload: AttentionWorkload = AttentionWorkload()) -> AttentionCost:
    """Analytic forward cost of one layer. A backward pass adds about twice the forward FLOPs.

    cross: Q = latents W_q (N x D -> C), [K V] = inputs W_kv (M x C -> 2C), scores Q K^T (N x M),
           weights V (N x C), output projection (C -> D).
    self:  [Q K V] = inputs W_qkv (M x C -> 3C), scores (M x M), weights V, output projection (C -> C).
    """
    _check_kind(kind)
    w, m = workload, num_inputs
    c, n, d = w.input_dim, w.num_latents, w.latent_dim
    if kind == "cross":
        flops = 2 * n * d * c + 2 * m * c * 2 * c + 2 * n * m * c * 2 + 2 * n * c * d
        queries = n
    else:
        flops = 2 * m * c * 3 * c + 2 * m * m * c * 2 + 2 * m * c * c
        queries = m
    return AttentionCost(flops=float(w.batch_size * flops),
                         matrix_bytes=w.batch_size * w.num_heads * queries * m * BYTES_PER_FLOAT)


def fit_power_law(sizes: Sequence[float], values: Sequence[float]) -> tuple:
    """Least-squares fit of log(value) = slope * log(size) + log(prefactor). Returns (slope, prefactor)."""
    if len(sizes) != len(values) or len(sizes) < 2:
        raise ValueError("fit_power_law needs at least two (size, value) pairs of equal length")
    if min(sizes) <= 0 or min(values) <= 0:
        raise ValueError("fit_power_law needs positive sizes and values (it fits in log-log space)")
    xs = [math.log(s) for s in sizes]
    ys = [math.log(v) for v in values]
    x_mean, y_mean = statistics.fmean(xs), statistics.fmean(ys)
    slope = (sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys))
             / sum((x - x_mean) ** 2 for x in xs))
    return slope, math.exp(y_mean - slope * x_mean)


def size_at_budget(slope: float, prefactor: float, budget: float) -> float:
    """The M where prefactor * M**slope reaches `budget`: where a fitted cost curve hits a limit."""
    if slope <= 0 or prefactor <= 0 or budget <= 0:
        raise ValueError("size_at_budget needs a positive slope, prefactor and budget")
    return (budget / prefactor) ** (1.0 / slope)


def round_significant(value: float, digits: int = 3) -> float:
    """`value` rounded to `digits` significant figures, e.g. 11_551_283 -> 11_600_000.

    Figures extrapolated from a fit far beyond its data are not known to more; printing them digit
    for digit would also make stored notebook outputs depend on the machine.
    """
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def format_bytes(nbytes: float, significant: int | None = None) -> str:
    """Bytes in binary units, e.g. 1536 -> '1.5 KiB'; with `significant=3`, 115_523_584 -> '110 MiB'.

    Exact counts get one decimal; extrapolated ones `significant` figures (see `round_significant`).
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            if significant is not None:
                value = round_significant(nbytes, significant)
                decimals = max(0, significant - 1 - math.floor(math.log10(abs(value)))) if value else 0
                return f"{value:.{decimals}f} {unit}"
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")
