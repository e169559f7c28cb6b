"""Position encodings: the Perceiver's only source of spatial structure.

The Perceiver's attention is permutation invariant, so "where" a pixel is must be written into its
features. Paper, Sec. 3.2 ("Scalable Fourier features"): "We parametrize the frequency encoding to
take the values [sin(f_k pi x_d), cos(f_k pi x_d)], where the frequency f_k is the k^th band of a bank
of frequencies spaced equally between 1 and mu/2. mu/2 can be naturally interpreted as the Nyquist
frequency (Nyquist, 1928) corresponding to a target sampling rate of mu. ... x_d is the value of the
input position along the d^th dimension (e.g. for images d=2 and for video d=3). x_d takes values in
[-1,1] for each dimension. We concatenate the raw position value x_d to produce the final
representation of position. This results in a position encoding of size d(2K+1)."

On the grid used here (and in DeepMind's code), linspace(-1, 1, n) with both ends, samples are
2/(n-1) apart, so the highest band that is not aliased is f < (n-1)/2. With mu = n the top band
f = n/2 lies just above it and aliases: for even n, on the grid, sin(pi (n/2) x) = sin(pi (n/2 - 1) x)
and cos(pi (n/2) x) = -cos(pi (n/2 - 1) x).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def _as_per_axis(value: int | float | Sequence[int | float] | None, shape: Sequence[int], name: str):
    if value is None:
        return tuple(float(n) for n in shape)
    if isinstance(value, (int, float)):
        return tuple(float(value) for _ in shape)
    value = tuple(float(v) for v in value)
    if len(value) != len(shape):
        raise ValueError(f"{name} has {len(value)} entries but the input has {len(shape)} axes {tuple(shape)}")
    return value


def linear_positions(shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Positions on a grid, each axis spanning [-1, 1] including both ends. Returns (*shape, d)."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def fourier_features(shape: Sequence[int], num_bands: int, max_resolution=None,
                     device=None, dtype=torch.float32) -> torch.Tensor:
    """The paper's Fourier position features for a grid of any number of axes.

    shape: the grid, e.g. (H, W) for images, (T,) for audio, (T, H, W) for video.
    num_bands: K, frequencies per axis. max_resolution: mu, an int or one per axis (default: shape).

    Returns a **flattened** tensor of shape (prod(shape), d * (2K + 1)), rows in row-major grid order
    (the order of `x.flatten()` over the grid), with DeepMind's channel layout:
    [x_1..x_d, sin(pi f x) for every (axis, band), cos(pi f x) for every (axis, band)],
    where axis varies slowest and f_k = linspace(1, mu_d / 2, K).
    """
    shape = tuple(int(n) for n in shape)
    if not shape or any(n < 1 for n in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape}")
    if num_bands < 1:
        raise ValueError(f"num_bands must be >= 1, got {num_bands}")
    resolution = _as_per_axis(max_resolution, shape, "max_resolution")
    pos = linear_positions(shape, device, dtype).reshape(-1, len(shape))  # (M, d)
    bands = torch.stack([torch.linspace(1.0, mu / 2, num_bands, device=device, dtype=dtype)
                         for mu in resolution])  # (d, K)
    scaled = (pos[:, :, None] * bands[None] * math.pi).reshape(pos.shape[0], -1)  # (M, d*K)
    return torch.cat([pos, torch.sin(scaled), torch.cos(scaled)], dim=-1)  # (M, d*(2K+1))


def truncated_normal(shape: Sequence[int], std: float = 0.02) -> torch.Tensor:
    """N(0, std^2) cut at two standard deviations, as in DeepMind's code.

    `nn.init.trunc_normal_`'s bounds are absolute values, not multiples of std: its defaults
    (-2, 2) would not truncate a std-0.02 normal at all.
    """
    return nn.init.trunc_normal_(torch.empty(*shape), std=std, a=-2 * std, b=2 * std)


def fourier_feature_dim(num_axes: int, num_bands: int) -> int:
    return num_axes * (2 * num_bands + 1)


class FourierPositionEncoding(nn.Module):
    """Fixed Fourier features for one grid, kept as a buffer so they are computed once."""

    def __init__(self, shape: Sequence[int], num_bands: int, max_resolution=None):
        super().__init__()
        self.register_buffer("features", fourier_features(shape, num_bands, max_resolution), persistent=False)

    @property
    def dim(self) -> int:
        return self.features.shape[-1]

    def forward(self) -> torch.Tensor:
        return self.features  # (M, d*(2K+1))


class LearnedPositionEncoding(nn.Module):
    """One trainable vector per input position, initialised by `truncated_normal` (std `init_scale`).

    The paper's learned-position model (Table 2, row "(Learned pos.)") uses "a fully learned,
    128-dimensional position encoding" (Sec. 4.1, "Permuted ImageNet"), initialised like the latent
    array (a truncated normal, App. C) at scale 1.0: "We found that a scale of 1.0 worked best for
    initializing the position encoding: this value is used for the model reported in Tab. 2."
    (App. B). Here the width is `dim` (`PerceiverConfig.learned_position_dim`) and the scale
    `init_scale` (`PerceiverConfig.learned_position_scale`; DeepMind's code defaults to 0.02).
    """

    def __init__(self, num_positions: int, dim: int, init_scale: float = 0.02):
        super().__init__()
        self.features = nn.Parameter(truncated_normal((num_positions, dim), std=init_scale))

    @property
    def dim(self) -> int:
        return self.features.shape[-1]

    def forward(self) -> torch.Tensor:
        return self.features  # (M, dim)
