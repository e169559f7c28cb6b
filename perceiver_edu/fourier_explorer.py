"""Fourier bands on a sampled grid: aliasing, the similarity kernel, and chapter 1's static explorer.

The grid is `linspace(-1, 1, n)` along each axis, both ends included (as in `fourier_features` and
DeepMind's code), so neighbouring samples are 2/(n-1) apart. A band sin(pi f x) has f/2 cycles per
unit of x, so the grid carries it faithfully only when f < (n-1)/2, the grid's Nyquist band
(`nyquist_band`). A band above that limit takes, at every sample, the values of a band below it,
up to a sign: `alias_band` says which band and which signs. The paper reads mu/2 as "the Nyquist
frequency ... corresponding to a target sampling rate of mu" (Sec. 3.2), exact for samples 2/mu
apart; with both ends included, mu = n puts the top band n/2 half a band above the limit, where
it aliases onto n/2 - 1.

`fourier_explorer` draws one picture per (K, mu) choice and ties them to browser-side controls
with `explorer.static_choice`, so the published page switches pictures with no kernel.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image as PILImage

from .explorer import Control, static_choice, widget_bundle
from .positional import fourier_features
from .visualize import SIGNED_CMAP, STYLE

FOURIER_EXPLORER_CLASS = "perceiver-fourier-explorer"  # how the browser test finds it
ALIASED_COLOR = "#d1495b"
SAMPLE_COLOR = "#1f77b4"
PALETTE_COLORS = 96  # the pictures are flat plots: a palette keeps each PNG small


class Alias(NamedTuple):
    """On the grid, sin(pi f x) == sin_sign * sin(pi band x), cos(pi f x) == cos_sign * cos(pi band x)."""
    band: float
    sin_sign: int
    cos_sign: int


def nyquist_band(n: int) -> float:
    """(n - 1) / 2: bands below it are carried faithfully by linspace(-1, 1, n); above, they alias."""
    if n < 2:
        raise ValueError(f"a grid axis needs at least 2 samples to have a spacing, got n={n}")
    return (n - 1) / 2


def alias_band(frequency: float, n: int) -> Alias:
    """The band in [0, (n-1)/2] whose samples on linspace(-1, 1, n) a band `frequency` reproduces.

    With P = n - 1 and x_j = -1 + 2j/P: adding P to f adds -P*pi + 2*pi*j to the angle pi f x_j, a
    factor (-1)^P on both sin and cos; and f = P - g gives pi f x_j = -P*pi + 2*pi*j - pi g x_j, so
    sin(pi f x_j) = -(-1)^P sin(pi g x_j) and cos(pi f x_j) = (-1)^P cos(pi g x_j). For even n (odd P)
    that is sin equal, cos negated. A band exactly at (n-1)/2 is its own alias: there one of its sin
    or cos is zero at every sample.
    """
    if frequency < 0:
        raise ValueError(f"bands are non-negative, got {frequency}")
    period = n - 1
    nyquist = nyquist_band(n)
    wraps = math.floor(frequency / period)
    rest = frequency - wraps * period                     # in [0, P)
    sign = -1 if (wraps * period) % 2 else 1              # (-1)^(wraps * P)
    if rest <= nyquist:
        return Alias(rest, sign, sign)
    flip = -1 if period % 2 else 1                        # (-1)^P
    return Alias(period - rest, -sign * flip, sign * flip)


def feature_rank(shape: Sequence[int], num_bands: int, max_resolution=None) -> int:
    """Rank of the (prod(shape), d(2K+1)) features in float64: less than the width when bands alias onto each other."""
    features = fourier_features(shape, num_bands, max_resolution, dtype=torch.float64)
    return int(torch.linalg.matrix_rank(features))


def position_kernel(features: torch.Tensor, index: int, num_axes: int, num_bands: int) -> torch.Tensor:
    """(M,) dot products of every position's sin/cos features with position `index`'s, divided by d*K (peak 1)."""
    waves = features[:, num_axes:]                        # drop the raw coordinates
    return waves @ waves[index] / (num_axes * num_bands)


# Pictures --------------------------------------------------------------------------------------
def _png(fig, dpi: int) -> bytes:
    """Palette PNG of a figure at a fixed size (no tight bbox: every picture has the same size)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    rgb = PILImage.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    small = rgb.quantize(colors=PALETTE_COLORS, method=PILImage.Quantize.MEDIANCUT,
                         dither=PILImage.Dither.NONE)
    out = io.BytesIO()
    small.save(out, format="png", optimize=True)
    return out.getvalue()


def _draw_top_band(ax, top: float, size: int):
    x_fine = np.linspace(-1, 1, 1500)
    x_grid = np.linspace(-1, 1, size)
    alias = alias_band(top, size)
    ax.plot(x_fine, np.sin(np.pi * top * x_fine), color="0.72", linewidth=0.8,
            label=f"band f = {top:g}")
    if top > nyquist_band(size):
        ax.plot(x_fine, alias.sin_sign * np.sin(np.pi * alias.band * x_fine), "--", color=ALIASED_COLOR,
                linewidth=1.2, label=f"{'-' if alias.sin_sign < 0 else ''}sin({alias.band:g} pi x):\n"
                                     f"the same samples")
        title = (f"top band f = {top:g} is above the limit {nyquist_band(size):g}: "
                 f"on {size} pixels it is f = {alias.band:g}")
    else:
        # an empty entry keeps the legend, and so the plot, the same width in every picture
        ax.plot([], [], " ", label="no slower band\nfits the samples")
        if top == nyquist_band(size):
            vanishes = "cosine" if (size - 1) % 2 else "sine"
            title = f"top band f = {top:g} is at the limit: its {vanishes} is 0 on every pixel"
        else:
            title = f"top band f = {top:g}, below the limit {nyquist_band(size):g}: sampled faithfully"
    ax.plot(x_grid, np.sin(np.pi * top * x_grid), "o", color=SAMPLE_COLOR, markersize=3,
            label=f"the {size} pixels")
    ax.set_title(title)
    ax.set_xlim(-1.02, 1.02)
    ax.set_ylim(-1.25, 1.25)
    ax.set_yticks([-1, 1])
    ax.set_xlabel("position x along one row")
    ax.legend(loc="center left", frameon=False, fontsize=7.5, bbox_to_anchor=(1.0, 0.5))


def band_picture(num_bands: int, max_resolution: float, size: int = 32, max_band_axis: float | None = None,
                 dpi: int = 80) -> bytes:
    """PNG: the top band sampled by `size` pixels (and its alias), all K bands along x, the bands
    each one looks like on the grid, and the dot-product kernel around the centre pixel."""
    bands = torch.linspace(1, max_resolution / 2, num_bands, dtype=torch.float64)
    nyquist = nyquist_band(size)
    seen = [alias_band(float(f), size).band for f in bands]
    above = [float(f) > nyquist for f in bands]
    features = fourier_features((size, size), num_bands, max_resolution, dtype=torch.float64)
    centre = (size // 2) * size + size // 2
    kernel = position_kernel(features, centre, 2, num_bands).reshape(size, size)
    x_grid = torch.linspace(-1, 1, size, dtype=torch.float64)
    sines = torch.sin(math.pi * bands[:, None] * x_grid[None])      # (K, size)

    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=(8.0, 4.6), layout="constrained")
        top_row, bottom_row = fig.subfigures(2, 1, height_ratios=[1.0, 1.55])
        _draw_top_band(top_row.subplots(), float(bands[-1]), size)
        axes = bottom_row.subplots(1, 3)

        ax = axes[0]
        ax.imshow(sines.numpy(), cmap=SIGNED_CMAP, vmin=-1, vmax=1, aspect="auto")
        step = max(1, num_bands // 8)
        ticks = list(range(num_bands - 1, -1, -step))[::-1]
        ax.set_yticks(ticks, [f"{float(bands[k]):.4g}" for k in ticks])
        for label, k in zip(ax.get_yticklabels(), ticks):
            label.set_color(ALIASED_COLOR if above[k] else "black")
        ax.set_xticks([0, size - 1])
        ax.set_xlabel("pixel along x")
        ax.set_ylabel("band f")
        ax.set_title(f"the {num_bands} sine bands, sampled")

        ax = axes[1]
        top_axis = max_band_axis or float(bands[-1])
        ax.plot([0, nyquist], [0, nyquist], color="0.75", linewidth=0.8)
        ax.axhline(nyquist, color="0.5", linestyle=":", linewidth=0.8)
        ax.text(0.4, nyquist + 0.4, f"limit (n-1)/2 = {nyquist:g}", fontsize=7.5, color="0.35")
        colors = [ALIASED_COLOR if a else SAMPLE_COLOR for a in above]
        ax.scatter(bands.numpy(), seen, c=colors, s=14, zorder=3)
        ax.set_xlim(0, top_axis * 1.04 + 0.5)
        ax.set_ylim(0, nyquist + 2.5)
        ax.set_yticks(range(0, int(nyquist) + 1, 5))
        ax.set_xlabel("band asked for, f")
        ax.set_ylabel("band the pixels show")
        ax.set_title(f"{sum(above)} of {num_bands} bands aliased")

        ax = axes[2]
        image = ax.imshow(kernel.numpy(), cmap=SIGNED_CMAP, vmin=-1, vmax=1)
        ax.plot([size // 2], [size // 2], "+", color="black", markersize=6)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title("dot product with the centre")
        bottom_row.colorbar(image, ax=ax, shrink=0.8, ticks=[-1, 0, 1])
        return _png(fig, dpi)


def band_summary(num_bands: int, max_resolution: float, size: int = 32) -> str:
    """One line on a (K, mu) choice: its bands, how many alias, and how many the pixels tell apart."""
    bands = torch.linspace(1, max_resolution / 2, num_bands, dtype=torch.float64).tolist()
    nyquist = nyquist_band(size)
    aliased = sum(f > nyquist for f in bands)
    at_limit = " (the top one at it)" if bands[-1] == nyquist else ""
    distinct = distinct_bands(bands, size)
    return (f"K = {num_bands}, mu = {max_resolution:g}: bands {bands[0]:g} to {bands[-1]:.4g}; "
            f"{aliased} above the limit {nyquist:g}{at_limit}; the pixels show {distinct} "
            f"different bands")


def distinct_bands(bands: Sequence[float], size: int) -> int:
    """How many different bands the `size` pixels show for these bands (aliases counted once)."""
    seen = sorted(alias_band(float(f), size).band for f in bands)
    return 1 + sum(b - a > 1e-9 for a, b in zip(seen, seen[1:]))


# The static explorer ---------------------------------------------------------------------------
class FourierExplorer:
    """What `fourier_explorer` built: the static choice, and a plain-text form without byte counts
    (nbval compares it; PNG sizes depend on the zlib and Pillow versions)."""

    def __init__(self, choice, band_choices, resolution_choices, size):
        self.choice, self.widget = choice, choice.widget
        self.band_choices, self.resolution_choices, self.size = band_choices, resolution_choices, size

    @property
    def payload_bytes(self) -> int:
        return self.choice.payload_bytes

    def picture(self, num_bands: int, max_resolution: float) -> bytes:
        return self.choice.picture(self.band_choices.index(num_bands),
                                   self.resolution_choices.index(max_resolution))

    def describe(self) -> str:
        count = len(self.band_choices) * len(self.resolution_choices)
        return (f"Fourier explorer on a {self.size}-pixel axis: K in {tuple(self.band_choices)}, "
                f"mu in {tuple(self.resolution_choices)}: {count} precomputed pictures")

    def _repr_mimebundle_(self, **kwargs):
        return widget_bundle(self.widget, self.describe(), **kwargs)


def fourier_explorer(band_choices: Sequence[int] = (2, 4, 8, 16),
                     resolution_choices: Sequence[float] = (8, 16, 24, 31, 32, 48, 64),
                     size: int = 32, dpi: int = 80) -> FourierExplorer:
    """One `band_picture` per (K, mu), on a size x size grid, switched in the browser with no kernel.

    K is chosen with toggle buttons, mu with a slider; the caption under each picture is its
    `band_summary`. All pictures share one x axis for the "band asked for" plot, so switching mu
    moves the points rather than the axis.
    """
    band_choices = [int(k) for k in band_choices]
    resolution_choices = [float(mu) if not float(mu).is_integer() else int(mu) for mu in resolution_choices]
    if any(k < 2 for k in band_choices):
        raise ValueError(f"K must be at least 2 (bands spaced from 1 to mu/2), got {band_choices}")
    if any(mu < 2 for mu in resolution_choices):
        raise ValueError(f"mu must be at least 2 (the top band mu/2 >= 1), got {resolution_choices}")
    axis = max(resolution_choices) / 2
    pictures = [[band_picture(k, mu, size, axis, dpi) for mu in resolution_choices] for k in band_choices]
    captions = [[band_summary(k, mu, size).replace("mu =", "&mu; =") for mu in resolution_choices]
                for k in band_choices]
    choice = static_choice(
        pictures,
        [Control("K", [str(k) for k in band_choices], "toggle"),
         Control("\u03bc", [f"{mu:g}" for mu in resolution_choices], "slider", "420px")],
        captions,
        header=f"Bands on a {size}-pixel axis: pick the number of bands K and the maximum resolution "
               f"&mu;. Red marks bands above the grid's limit (n-1)/2 = {nyquist_band(size):g}.",
        css_class=FOURIER_EXPLORER_CLASS)
    return FourierExplorer(choice, band_choices, resolution_choices, size)
