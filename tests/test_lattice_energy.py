"""The pre-softmax logits in an attention record, and `lattice_energy`, the measure of the paper's
"tartan" (Sec. 4.1, Fig. 3) that chapter 7 applies to them."""
import math

import pytest
import torch

from perceiver_edu import Perceiver, PerceiverConfig
from perceiver_edu.attention_maps import (chance_lattice_energy, collect_attention, default_high_from,
                                          lattice_energy)

GRID = (16, 16)
ROWS, COLS = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")


def wave(cycles: float, along) -> torch.Tensor:
    return torch.cos(2 * math.pi * cycles * along / 16 + 0.3)


def test_stripes_along_rows_and_columns_are_all_axis_energy():
    tartan = wave(6, ROWS) + 0.5 * wave(7, COLS) + wave(1, COLS)
    energy = lattice_energy(tartan)
    assert energy.axis.item() == pytest.approx(1.0, abs=1e-6)
    # power 1 at 6 cycles, 0.25 at 7 (high), 1 at 1 cycle (low): high share = 1.25 / 2.25
    assert energy.high.item() == pytest.approx(1.25 / 2.25, abs=1e-6)


def test_a_checkerboard_of_products_has_no_axis_energy():
    product = wave(3, ROWS) * wave(5, COLS)  # tartan after a softmax is a product, not a sum
    energy = lattice_energy(product)
    assert energy.axis.item() == pytest.approx(0.0, abs=1e-6) and energy.high.item() == pytest.approx(0.0, abs=1e-6)


def test_axis_share_is_the_variance_a_row_plus_column_fit_explains():
    torch.manual_seed(0)
    maps = torch.randn(50, 16, 16) + 2 * wave(2, ROWS) + torch.linspace(0, 3, 16)  # (50, 16, 16)
    centered = maps - maps.mean(dim=(1, 2), keepdim=True)
    additive = centered.mean(dim=2, keepdim=True) + centered.mean(dim=1, keepdim=True)
    explained = 1 - (centered - additive).pow(2).sum(dim=(1, 2)) / centered.pow(2).sum(dim=(1, 2))
    torch.testing.assert_close(lattice_energy(maps).axis, explained.float(), atol=1e-5, rtol=0)


def test_white_noise_sits_at_the_chance_level():
    chance = chance_lattice_energy(GRID)
    assert chance.axis.item() == pytest.approx(30 / 255) and chance.high.item() == pytest.approx(18 / 255)
    assert default_high_from(GRID) == 4 and default_high_from((32, 32)) == 8
    torch.manual_seed(1)
    energy = lattice_energy(torch.randn(4000, 16, 16))
    assert energy.axis.mean().item() == pytest.approx(chance.axis.item(), abs=0.005)
    assert energy.high.mean().item() == pytest.approx(chance.high.item(), abs=0.005)


def test_shift_invariant_and_nan_for_a_flat_map():
    torch.manual_seed(2)
    maps = torch.randn(3, 16, 16)
    torch.testing.assert_close(lattice_energy(maps + 7.0).axis, lattice_energy(maps).axis)
    assert torch.isnan(lattice_energy(torch.ones(16, 16)).axis)


def test_collect_attention_keeps_the_logits_whose_softmax_is_the_weights():
    torch.manual_seed(0)
    config = PerceiverConfig.preset("cpu")
    model = Perceiver(config).eval()
    images = torch.rand(3, 3, 32, 32)
    record = collect_attention(model, images, include_logits=True, batch_size=2)
    assert len(record.cross_logits) == len(record.cross) == config.num_cross_attends
    logits = record.cross_logits[0]
    assert logits.shape == (3, config.cross_heads, config.num_latents, 256)
    torch.testing.assert_close(logits.softmax(dim=-1), record.cross[0])
    assert record.logit_maps(0).shape == (3, config.cross_heads, config.num_latents, 16, 16)
    with pytest.raises(ValueError, match="include_logits=True"):
        collect_attention(model, images).logit_maps(0)
