"""The scaling measurements: memory counted right, costs estimated right, fits that recover exponents.

No timed assertions here (timings live in benchmarks/scaling.py); memory figures are deterministic.
"""
import math

import pytest
import torch

from perceiver_edu.scaling import (AttentionWorkload, TensorMemoryTracker, attention_cost, attention_step,
                                   device_memory_bytes, fit_power_law, format_bytes, measure, peak_memory,
                                   round_significant, size_at_budget, time_call)

SMALL = AttentionWorkload(num_latents=16, input_dim=32, latent_dim=32)


def test_tracker_counts_a_known_allocation_exactly():
    assert peak_memory(lambda: torch.empty(1000, 1000)) == 4_000_000
    assert peak_memory(lambda: torch.empty(10, dtype=torch.float64)) == 80


def test_tracker_peak_is_the_high_water_mark_not_the_total():
    def sequential():  # the first buffer is freed before the second exists
        first = torch.ones(1000, 1000)
        del first
        torch.ones(1000, 1000)

    def together():
        first = torch.ones(1000, 1000)
        second = torch.ones(1000, 1000)
        return first, second

    assert peak_memory(sequential) == 4_000_000
    assert peak_memory(together) == 8_000_000


def test_tracker_ignores_views_in_place_ops_and_preexisting_tensors():
    existing = torch.ones(1000, 1000)

    def no_new_storage():
        existing.add_(1)                  # in place: writes into an existing buffer
        existing.t()[0, :10], existing.view(-1)[:10]  # views of it
        existing[0].zero_()

    assert peak_memory(no_new_storage) == 0
    with TensorMemoryTracker() as tracker:
        kept = existing * 2               # a new (1000, 1000) buffer, still alive at exit
    assert tracker.peak == tracker.current == 4_000_000
    del kept
    assert tracker.current == 0           # freeing it after the fact is still accounted


def test_tracker_agrees_with_the_torch_profiler():
    """The profiler records every CPU-allocator allocation (kernel scratch buffers too)."""
    profiler = pytest.importorskip("torch.profiler")
    step = attention_step("self", 512, SMALL)
    step()
    tracked = peak_memory(step)
    with profiler.profile(activities=[profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = profiled = 0
    for event in events:
        live += event.nbytes()
        profiled = max(profiled, live)
    assert profiled > 0
    assert tracked == pytest.approx(profiled, rel=0.1)


def test_explicit_self_attention_holds_the_m_by_m_matrix():
    for m in (256, 512):
        matrix = attention_cost("self", m, SMALL).matrix_bytes
        assert matrix == 4 * m * m
        assert peak_memory(attention_step("self", m, SMALL)) >= 2 * matrix  # scores and softmax


def test_memory_grows_quadratically_for_self_and_linearly_for_cross():
    sizes = [512, 1024, 2048]
    for kind, low, high in (("self", 1.8, 2.1), ("cross", 0.9, 1.1), ("self_fused", 0.9, 1.1)):
        results = measure(kind, sizes, SMALL, timing=False)
        slope, _ = fit_power_law(sizes, [r.peak_bytes for r in results])
        assert low < slope < high, (kind, slope)


def test_forward_only_measures_less_than_a_training_step():
    forward_only = AttentionWorkload(num_latents=16, input_dim=32, latent_dim=32, backward=False)
    assert 0 < peak_memory(attention_step("self", 512, forward_only)) < peak_memory(attention_step("self", 512, SMALL))


def test_steps_run_and_give_gradients():
    for kind in ("cross", "self", "self_fused"):
        step = attention_step(kind, 64, SMALL)
        step()
        assert time_call(step, repeats=2, warmup=0) > 0


def test_analytic_costs():
    w = AttentionWorkload(num_latents=128, input_dim=64, latent_dim=128, num_heads=2, batch_size=3)
    m = 4096
    assert attention_cost("cross", m, w).matrix_bytes == 3 * 2 * 128 * m * 4
    assert attention_cost("self", m, w).matrix_bytes == 3 * 2 * m * m * 4
    # Doubling M doubles cross-attention's work and (eventually) quadruples self-attention's.
    cross = [attention_cost("cross", s, w).flops for s in (m, 2 * m)]
    self_ = [attention_cost("self", s, w).flops for s in (m, 2 * m)]
    assert 1.9 < cross[1] / cross[0] < 2.01
    assert 3.9 < self_[1] / self_[0] < 4.01
    # The matmul FLOPs of self-attention, written out: QKV, scores, weights x V, output.
    c = w.input_dim
    assert attention_cost("self", m, w).flops == 3 * (2 * m * c * 3 * c + 4 * m * m * c + 2 * m * c * c)
    # ImageNet pixels: one 50,176 x 50,176 fp32 matrix is about 10 GB.
    assert attention_cost("self", 224 * 224, AttentionWorkload()).matrix_bytes == 224 ** 4 * 4


def test_fit_power_law_recovers_exponents():
    sizes = [2 ** k for k in range(6, 14)]
    for exponent, prefactor in ((1.0, 3e-6), (2.0, 7.5), (1.5, 0.2)):
        slope, fitted = fit_power_law(sizes, [prefactor * s ** exponent for s in sizes])
        assert slope == pytest.approx(exponent, abs=1e-9)
        assert fitted == pytest.approx(prefactor, rel=1e-9)
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1, 2], [0, 1])
    with pytest.raises(ValueError, match="two"):
        fit_power_law([1], [1])


def test_size_at_budget_inverts_the_fit():
    assert size_at_budget(2.0, 4.0, 4.0 * 1000 ** 2) == pytest.approx(1000)
    assert size_at_budget(1.0, 2.0, 10.0) == pytest.approx(5)


def test_device_memory_and_formatting():
    assert device_memory_bytes("cpu") > 2 ** 28
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(24 * 2 ** 30) == "24.0 GiB"
    assert format_bytes(12) == "12 B"
    assert format_bytes(115_523_584, significant=3) == "110 MiB"
    assert format_bytes(26.2 * 2 ** 30, significant=3) == "26.2 GiB"
    assert format_bytes(1.5 * 2 ** 20, significant=2) == "1.5 MiB"
    assert format_bytes(3 * 2 ** 40, significant=3) == "3.00 TiB"


def test_round_significant():
    assert round_significant(11_551_283) == 11_600_000
    assert round_significant(11_551_283) == round_significant(11_551_279)  # digits a fit does not know
    assert round_significant(47_492) == 47_500
    assert round_significant(0.012345, 2) == 0.012
    assert round_significant(-98_765) == -98_800
    assert round_significant(0) == 0
    with pytest.raises(ValueError, match="digits"):
        round_significant(1.0, 0)


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="choose one of"):
        attention_step("linear", 64)
    with pytest.raises(ValueError, match="num_inputs"):
        attention_step("self", 0)
    with pytest.raises(ValueError, match="divisible"):
        AttentionWorkload(input_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="repeats"):
        time_call(lambda: None, repeats=0)
    assert math.isfinite(attention_cost("cross", 1, SMALL).flops)
