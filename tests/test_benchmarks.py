"""The throughput benchmark's arithmetic: its FLOP counts must match the architecture, or its
speed-up bound means nothing. No timing here; benchmarks/throughput.py prints the times."""
import importlib.util
from pathlib import Path

import pytest
import torch

from perceiver_edu import Perceiver, PerceiverConfig

spec = importlib.util.spec_from_file_location(
    "throughput", Path(__file__).resolve().parent.parent / "benchmarks" / "throughput.py")
throughput = importlib.util.module_from_spec(spec)
spec.loader.exec_module(throughput)


def tower_flops_by_hand(config: PerceiverConfig) -> int:
    """Matmul FLOPs per image of the latent layers, forward + backward (backward = 2x forward)."""
    n, d, widening = config.num_latents, config.latent_dim, config.latent_widening
    projections = n * (4 * d * d + 2 * d * widening * d)  # Q, K, V, output; the MLP's two layers
    attention = 2 * n * n * d  # QK^T and (weights)V, summed over heads
    return 3 * 2 * (projections + attention) * config.self_attends_per_block


@pytest.fixture(scope="module")
def seed_counts():
    torch.manual_seed(0)
    config = PerceiverConfig.preset("seed")
    batch = (torch.rand(2, 3, *config.input_axes), torch.tensor([0, 1]))
    reference = throughput.NaivePerceiver(config)
    return {"config": config,
            "ours": throughput.train_step_flops(Perceiver(config), batch),
            "naive": throughput.train_step_flops(reference, batch),
            "tower": throughput.latent_tower_flops(reference, 2)}


def test_latent_tower_count_matches_the_formula(seed_counts):
    assert seed_counts["tower"] == tower_flops_by_hand(seed_counts["config"])


def test_tower_is_a_lower_bound_and_ours_is_cheaper_than_the_reference(seed_counts):
    assert seed_counts["tower"] < seed_counts["ours"] < seed_counts["naive"]


def test_reference_lifts_pixels_to_the_latent_width(seed_counts):
    """The reference's extra cost is exactly its pixel-level work at width D instead of C:
    the lift C->D and the K, V projections D->D, against our fused K/V C->2C, per pixel."""
    config = seed_counts["config"]
    m, c, d, n = config.num_inputs, config.input_dim, config.latent_dim, config.num_latents
    # Matmul FLOPs that depend on the key/value width. Backward costs 2x forward, except for the
    # reference's lift, whose input is data and needs no gradient: 1x. Both K/V projections read a
    # LayerNorm output, whose affine weights do need the gradient.
    lift = 2 * m * c * d
    naive = 2 * lift + 3 * 2 * (2 * m * d * d + n * d * d + 2 * n * m * d + n * d * d)  # K,V; Q; QK^T, AV; out
    ours = 3 * 2 * (m * c * 2 * c + n * d * c + 2 * n * m * c + n * c * d)  # fused K/V; Q; QK^T, AV; out
    assert seed_counts["naive"] - seed_counts["ours"] == naive - ours
