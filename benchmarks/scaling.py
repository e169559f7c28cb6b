"""Time and peak memory of Perceiver cross-attention vs full self-attention as the input size M grows.

    python benchmarks/scaling.py [--device cpu] [--max-cross 262144] [--max-self 16384] [--repeats 3]

The same measurement as chapter 8 (`perceiver_edu.scaling`), at larger sizes: one attention layer,
forward + backward, for each M = min-size, 2 min-size, ... up to the cap of its kind:

* cross:      N latents attend to the M inputs (the Perceiver), explicit softmax;
* self:       the M inputs attend to each other, explicit softmax (stores the M x M matrix);
* self_fused: the same through scaled_dot_product_attention (memory-efficient kernel).

Explicit self-attention sizes whose M x M matrices would need more than --memory-fraction of the
device's memory are skipped, not run: the script prints the estimate instead of running out of
memory. Slopes are least-squares fits in log-log space over M >= --fit-from, where the per-call
overhead no longer dominates. Figures vary from run to run by a few percent; slopes by ~0.1.
"""
from __future__ import annotations

import argparse
import time

import torch

from perceiver_edu import describe_device, pick_device
from perceiver_edu.scaling import (KINDS, AttentionWorkload, attention_cost, attention_step, device_memory_bytes,
                                   fit_power_law, format_bytes, memory_method, peak_memory, size_at_budget,
                                   time_call)

# Explicit self-attention's measured peak is about three fp32 M x M matrices (scores, softmax and the
# gradient of the softmax); four leaves a margin when deciding what is safe to run.
MATRICES_AT_PEAK = 4


def powers_of_two(low: int, high: int) -> list:
    sizes, m = [], low
    while m <= high:
        sizes.append(m)
        m *= 2
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: pick_device())")
    parser.add_argument("--min-size", type=int, default=256)
    parser.add_argument("--max-cross", type=int, default=2 ** 18, help="largest M for cross-attention")
    parser.add_argument("--max-self", type=int, default=2 ** 14, help="largest M for self-attention")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per size (median reported)")
    parser.add_argument("--fit-from", type=int, default=1024, help="fit slopes over M >= this")
    parser.add_argument("--latents", type=int, default=128, help="N")
    parser.add_argument("--input-dim", type=int, default=64, help="C, also the attention width")
    parser.add_argument("--latent-dim", type=int, default=128, help="D")
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--forward-only", action="store_true", help="no backward pass (inference)")
    parser.add_argument("--memory-fraction", type=float, default=0.5,
                        help="skip explicit self-attention sizes estimated to need more than this share "
                             "of the device's memory")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    args = parser.parse_args()

    device = pick_device(args.device)
    workload = AttentionWorkload(num_latents=args.latents, input_dim=args.input_dim, latent_dim=args.latent_dim,
                                 num_heads=args.heads, batch_size=args.batch, backward=not args.forward_only)
    total_memory = device_memory_bytes(device)
    print(f"device: {describe_device(device)}, memory {format_bytes(total_memory)}; torch {torch.__version__}")
    print(f"memory measured with {memory_method(device)}")
    print(f"workload: {workload}")
    print(f"pass: {'forward' if args.forward_only else 'forward + backward'}, median of {args.repeats}\n")
    passes = 1 if args.forward_only else 3  # a backward pass costs about two forward passes

    fits = {}
    for kind in args.kinds:
        cap = args.max_cross if kind == "cross" else args.max_self
        print(f"{kind}:")
        print(f"{'M':>8} {'time':>10} {'peak memory':>12} {'score matrix':>13} {'GFLOP/s':>8}")
        rows = []
        for m in powers_of_two(args.min_size, cap):
            cost = attention_cost(kind, m, workload)
            if kind != "self_fused" and MATRICES_AT_PEAK * cost.matrix_bytes > args.memory_fraction * total_memory:
                print(f"{m:>8} skipped: ~{format_bytes(MATRICES_AT_PEAK * cost.matrix_bytes)} estimated, over "
                      f"{args.memory_fraction:.0%} of {format_bytes(total_memory)}")
                continue
            step = attention_step(kind, m, workload, device)
            peak = peak_memory(step, device)  # doubles as the warm-up run
            seconds = time_call(step, device, args.repeats, warmup=0)
            rows.append((m, seconds, peak))
            print(f"{m:>8} {seconds * 1e3:>8.2f} ms {format_bytes(peak):>12} {format_bytes(cost.matrix_bytes):>13} "
                  f"{passes * cost.flops / seconds / 1e9:>8.1f}")
            del step
        fitted = [row for row in rows if row[0] >= args.fit_from]
        if len(fitted) >= 2:
            time_slope, _ = fit_power_law([r[0] for r in fitted], [r[1] for r in fitted])
            memory_slope, memory_prefactor = fit_power_law([r[0] for r in fitted], [r[2] for r in fitted])
            fits[kind] = (memory_slope, memory_prefactor)
            print(f"  slopes over M >= {args.fit_from}: time {time_slope:.2f}, memory {memory_slope:.2f}")
        print()

    print(f"where the fitted memory curve reaches the device's {format_bytes(total_memory)}:")
    for kind, (slope, prefactor) in fits.items():
        print(f"  {kind:>10}: M ~ {size_at_budget(slope, prefactor, total_memory):,.0f}")
    image_net = 224 * 224
    print(f"for scale: a 224 x 224 image has M = {image_net:,} pixels; one fp32 M x M matrix per head is "
          f"{format_bytes(attention_cost('self', image_net, AttentionWorkload(num_heads=1)).matrix_bytes)}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
