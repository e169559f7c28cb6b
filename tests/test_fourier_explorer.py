"""Aliasing of Fourier bands on linspace(-1, 1, n), and chapter 1's static explorer (no browser here:
tests/test_browser.py drives the built page)."""
import math

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from perceiver_edu import PerceiverConfig, fourier_features  # noqa: E402
from perceiver_edu.explorer import HAS_STACK, PNG_SIGNATURE  # noqa: E402
from perceiver_edu.fourier_explorer import (  # noqa: E402
    FOURIER_EXPLORER_CLASS, Alias, alias_band, band_summary, distinct_bands, feature_rank, fourier_explorer,
    nyquist_band, position_kernel)


def grid(n):
    return torch.linspace(-1, 1, n, dtype=torch.float64)


@pytest.mark.parametrize("n", [2, 3, 5, 16, 31, 32, 224])
def test_alias_band_reproduces_the_samples_of_every_band(n):
    x = grid(n)
    limit = nyquist_band(n)
    for f in [0.0, 0.5, 1.0, 2.3, limit - 0.25, limit, limit + 0.25, n / 2, n - 1.0, n + 0.7, 2.0 * n, 3.5 * n + 0.1]:
        alias = alias_band(f, n)
        assert 0.0 <= alias.band <= limit + 1e-12, (f, n, alias)
        assert alias.sin_sign in (-1, 1) and alias.cos_sign in (-1, 1)
        torch.testing.assert_close(torch.sin(math.pi * f * x), alias.sin_sign * torch.sin(math.pi * alias.band * x),
                                   atol=1e-9, rtol=0, msg=f"sin, f={f}, n={n}, {alias}")
        torch.testing.assert_close(torch.cos(math.pi * f * x), alias.cos_sign * torch.cos(math.pi * alias.band * x),
                                   atol=1e-9, rtol=0, msg=f"cos, f={f}, n={n}, {alias}")
        if f < limit:
            assert alias == Alias(f, 1, 1), "a band below the limit is its own alias"


def test_the_top_band_of_mu_equal_to_the_grid_is_the_band_below():
    assert nyquist_band(32) == 15.5 and nyquist_band(224) == 111.5
    assert alias_band(16, 32) == Alias(15, 1, -1)       # sin equal, cos negated (issue 10, item 1)
    assert alias_band(112, 224) == Alias(111, 1, -1)    # ImageNet: mu = 224 on 224-pixel crops
    assert alias_band(32, 32) == Alias(1, -1, -1)       # the chapter's mu = 64 example: -sin(pi x)
    assert alias_band(31, 32) == Alias(0, -1, -1)       # a whole period per sample: a constant
    assert alias_band(8, 15) == Alias(6, -1, 1)         # odd n: sines negated, cosines equal
    # exactly at the limit, one of the pair vanishes on the grid
    assert torch.cos(15.5 * math.pi * grid(32)).abs().max() < 1e-12


def test_aliased_bands_duplicate_channels_of_the_presets():
    for name, expected in [("cpu", 30), ("seed", 62)]:
        config = PerceiverConfig.preset(name)
        assert config.max_resolution is None  # mu = grid size: bands 1 .. n/2, integers when K = n/2
        width = 2 * (2 * config.num_bands + 1)
        assert feature_rank(config.grid, config.num_bands) == expected == width - 4, name
    # below the limit nothing is lost: bands 1 .. 7 on 16 pixels, all 30 channels independent
    assert feature_rank((16, 16), 7, 14) == 2 * (2 * 7 + 1)


def test_distinct_bands_counts_aliases_once():
    assert distinct_bands([1, 2, 3], 32) == 3
    assert distinct_bands([15, 16], 32) == 1           # 16 shows as 15
    assert distinct_bands([1, 32], 32) == 1            # 32 shows as 1
    assert distinct_bands(torch.linspace(1, 16, 16).tolist(), 32) == 15
    assert "1 above the limit 15.5" in band_summary(8, 32) and "8 different bands" in band_summary(8, 32)
    assert "the top one at it" in band_summary(4, 31)


def test_position_kernel_is_the_cosine_kernel_and_peaks_at_one():
    features = fourier_features((12, 12), 5, 12, dtype=torch.float64)
    kernel = position_kernel(features, 40, 2, 5)
    assert kernel[40] == pytest.approx(1.0) and kernel.max() == pytest.approx(1.0)
    positions = features[:, :2]
    offsets = positions - positions[40]
    bands = torch.linspace(1, 6, 5, dtype=torch.float64)
    expected = torch.cos(math.pi * offsets[..., None] * bands).sum((-1, -2)) / 10
    torch.testing.assert_close(kernel, expected)


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="at least 2 samples"):
        nyquist_band(1)
    with pytest.raises(ValueError, match="non-negative"):
        alias_band(-1.0, 32)
    with pytest.raises(ValueError, match="K must be at least 2"):
        fourier_explorer(band_choices=(1, 4), resolution_choices=(8,))
    with pytest.raises(ValueError, match="mu must be at least 2"):
        fourier_explorer(band_choices=(2,), resolution_choices=(1,))


@pytest.fixture(scope="module")
def small_explorer():
    return fourier_explorer(band_choices=(2, 8), resolution_choices=(8, 31, 64), size=16, dpi=40)


def test_explorer_has_one_distinct_picture_per_choice(small_explorer):
    explorer = small_explorer
    pictures = {(k, mu): explorer.picture(k, mu) for k in (2, 8) for mu in (8, 31, 64)}
    assert all(png.startswith(PNG_SIGNATURE) for png in pictures.values())
    assert len(set(pictures.values())) == 6, "every (K, mu) must draw its own picture"
    assert explorer.payload_bytes == sum(map(len, pictures.values()))
    assert explorer.payload_bytes < 6 * 60_000
    text = explorer.describe()
    assert "K in (2, 8)" in text and "mu in (8, 31, 64)" in text and "6 precomputed pictures" in text
    assert "KB" not in text and "bytes" not in text  # nbval compares it: no version-dependent sizes
    assert FOURIER_EXPLORER_CLASS in explorer.widget._dom_classes


@pytest.mark.skipif(not HAS_STACK, reason="ipywidgets 7 has no Stack: the static choice uses tabs there")
def test_explorer_controls_are_linked_in_the_browser(small_explorer):
    choice = small_explorer.choice
    band_picker, resolution_picker = choice.controls
    assert isinstance(band_picker, widgets.ToggleButtons) and isinstance(resolution_picker, widgets.SelectionSlider)
    assert list(band_picker.options) == ["2", "8"] and list(resolution_picker.options) == ["8", "31", "64"]
    # one jslink for the outer stack, one per inner stack: the browser switches pictures alone
    assert len(choice.links) == 1 + 2
    captions = [choice.page(i, j).children[1].value for i in range(2) for j in range(3)]
    assert "mu = 64" not in captions[2] and "&mu; = 64" in captions[2]
    assert "6 above the limit 7.5" in captions[5]  # K = 8, mu = 64, 16 pixels: 1, 5.4, 9.9, ..., 32
