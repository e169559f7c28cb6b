"""Collect a Perceiver's attention weights and turn them into maps over the image.

Paper, Sec. 3.1: the cross-attention's queries are the N latents and its keys are the M input
elements, so each latent holds one softmax distribution over the M pixels (or patches). Laid back
on the input grid, that distribution is an attention map: "where latent n looks". The paper's
Fig. 3 draws the maps before the softmax, the logits QK^T / sqrt(d) ("We visualize attention maps
before the softmax, as the softmax outputs are very sparse and hard to interpret", Sec. 4.1):
`collect_attention(..., include_logits=True)` keeps those too.

`lattice_energy` measures the paper's "tartan": how much of a map's variance lies on the two axes
of its 2-D spectrum (a sum of a row profile and a column profile), and how much of that at high
spatial frequencies.

Shapes: weights and logits (B, heads, N, M) with M = H * W in row-major order over `config.grid`;
maps (B, heads, N, H, W). Everything returned here lives on the CPU, detached.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .model import Perceiver


@dataclass
class AttentionRecord:
    """What one batch of images made the model attend to.

    images: (B, 3, H_img, W_img) floats in [0, 1].  logits: (B, classes).
    cross: one (B, heads, N, M) tensor of softmax weights per cross-attend.  latent_self: one
    (B, heads, N, N) tensor per latent self-attention layer (empty unless asked for).
    grid: (H, W) with H * W = M.  cross_logits: like `cross`, the pre-softmax logits
    QK^T / sqrt(d) (empty unless asked for); softmax(cross_logits[i]) == cross[i].
    """
    images: torch.Tensor
    logits: torch.Tensor
    cross: list
    grid: tuple
    latent_self: list = field(default_factory=list)
    cross_logits: list = field(default_factory=list)

    @property
    def probabilities(self) -> torch.Tensor:
        return self.logits.softmax(dim=-1)  # (B, classes)

    def maps(self, cross_attend: int = 0) -> torch.Tensor:
        """(B, heads, N, H, W): the cross-attend's weights laid out on the input grid."""
        return to_grid(self.cross[cross_attend], self.grid)

    def logit_maps(self, cross_attend: int = 0) -> torch.Tensor:
        """(B, heads, N, H, W): the cross-attend's pre-softmax logits on the input grid."""
        if not self.cross_logits:
            raise ValueError("this record has no logits: collect it with include_logits=True")
        return to_grid(self.cross_logits[cross_attend], self.grid)


@torch.no_grad()
def collect_attention(model: Perceiver, images: torch.Tensor, include_self: bool = False,
                      batch_size: int = 64, include_logits: bool = False) -> AttentionRecord:
    """Run `model` on images (B, 3, H, W) in [0, 1] and keep every cross-attention weight.

    include_self: also the latent self-attention weights; include_logits: also the cross-attends'
    pre-softmax logits. The model runs in eval mode (no dropout) on its own device, in batches of
    `batch_size` so a few hundred images fit in memory (B x N x M floats each); its training mode
    is restored afterwards.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, cross, latent_self, cross_logits = [], [], [], []
    try:
        for first in range(0, len(images), batch_size):
            batch = images[first:first + batch_size].to(device)
            out, record = model(batch, return_attention=True)
            logits.append(out.float().cpu())
            cross.append([w.float().cpu() for w in record["cross"]])
            if include_self:
                latent_self.append([w.float().cpu() for w in record["self"]])
            if include_logits:
                cross_logits.append([w.float().cpu() for w in record["cross_logits"]])
    finally:
        model.train(was_training)
    return AttentionRecord(
        images=images.detach().float().cpu(), logits=torch.cat(logits),
        cross=[torch.cat(parts) for parts in zip(*cross)], grid=tuple(model.config.grid),
        latent_self=[torch.cat(parts) for parts in zip(*latent_self)] if include_self else [],
        cross_logits=[torch.cat(parts) for parts in zip(*cross_logits)] if include_logits else [])


def to_grid(weights: torch.Tensor, grid) -> torch.Tensor:
    """(..., M) -> (..., H, W): undo the row-major flattening of the input grid."""
    height, width = grid
    if weights.shape[-1] != height * width:
        raise ValueError(f"the last axis has {weights.shape[-1]} entries but the grid {tuple(grid)} "
                         f"has {height * width}; pass the model's config.grid")
    return weights.reshape(*weights.shape[:-1], height, width)


def grid_cell(pixel, image_size, grid) -> tuple:
    """The grid cell (row, col) that holds image pixel (y, x); with 2x2 patches it is (y//2, x//2)."""
    return tuple(int(p) * g // s for p, s, g in zip(pixel, image_size, grid))


def latents_at_pixel(weights: torch.Tensor, pixel, image_size, grid) -> torch.Tensor:
    """(..., N, M) -> (..., N): how much of each latent's attention lands on image pixel (y, x)."""
    row, col = grid_cell(pixel, image_size, grid)
    return weights[..., row * grid[1] + col]


def effective_pixels(weights: torch.Tensor) -> torch.Tensor:
    """(..., M) -> (...): exp(entropy), the number of grid cells a map spreads over.

    It is M for uniform attention and 1 for attention on a single cell.
    """
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(dim=-1)
    return entropy.exp()


def rank_latents(weights: torch.Tensor, k: int, region: torch.Tensor | None = None):
    """The k latents with the most attention mass inside `region` (a (M,) or (H, W) boolean mask).

    weights: (N, M), one image and head. Without a region every latent's mass is 1 (softmax rows
    sum to 1), so latents are ranked by their peak weight instead: the most focused first.
    Returns (indices (k,), scores (k,)).
    """
    if weights.dim() != 2:
        raise ValueError(f"rank_latents takes one image and head, (N, M); got {tuple(weights.shape)}")
    if region is None:
        scores = weights.max(dim=-1).values
    else:
        scores = weights[:, region.reshape(-1).to(torch.bool)].sum(dim=-1)
    top = scores.topk(min(k, len(scores)))
    return top.indices, top.values


# The paper's "tartan", measured -------------------------------------------------------------------
class LatticeEnergy(NamedTuple):
    """Fractions of a map's variance (its 2-D spectrum's power without the mean), each (...).

    axis: on the two axes of the spectrum (k_y = 0 or k_x = 0), i.e. explained by a row profile
    plus a column profile: 1 for a perfect tartan of stripes, (H + W - 2) / (HW - 1) on average
    for white noise.  high: the part of `axis` at high frequencies, max(|k_y|, |k_x|) >= high_from
    cycles per grid: the "high-frequency plaid lattice" of the paper (Sec. 4.1).
    """
    axis: torch.Tensor
    high: torch.Tensor


def _frequencies(n: int) -> torch.Tensor:
    """|k| in cycles per grid of each DFT index along an axis of n cells: 0, 1, ..., n//2, ..., 1."""
    return (torch.fft.fftfreq(n) * n).abs().round()


def _lattice_masks(height: int, width: int, high_from: int) -> tuple[torch.Tensor, torch.Tensor]:
    ky, kx = _frequencies(height)[:, None], _frequencies(width)[None, :]
    axis = (ky == 0) ^ (kx == 0)                                    # (H, W), the DC term left out
    return axis, axis & (torch.maximum(ky, kx) >= high_from)


def default_high_from(grid) -> int:
    """Half the highest frequency the grid holds: 4 cycles per grid on 16 x 16."""
    return max(1, math.ceil(min(grid) / 4))


def lattice_energy(maps: torch.Tensor, high_from: int | None = None) -> LatticeEnergy:
    """(..., H, W) maps -> LatticeEnergy of (...) fractions; NaN for a constant map.

    By Parseval, `axis` equals the share of the map's variance that the two-way additive fit
    (row means + column means) explains. Use it on pre-softmax logits: the softmax turns a sum of
    row and column terms into a product, whose spectrum is not on the axes.
    """
    height, width = maps.shape[-2:]
    high_from = default_high_from((height, width)) if high_from is None else high_from
    values = maps.detach().double()
    values = values - values.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(values).abs().square()                  # (..., H, W)
    total = power.sum(dim=(-2, -1))
    axis_mask, high_mask = _lattice_masks(height, width, high_from)
    axis = (power * axis_mask).sum(dim=(-2, -1)) / total           # 0 / 0 = NaN for a flat map
    high = (power * high_mask).sum(dim=(-2, -1)) / total
    return LatticeEnergy(axis.float(), high.float())


def chance_lattice_energy(grid, high_from: int | None = None) -> LatticeEnergy:
    """What `lattice_energy` gives on average for white noise: the masks' share of the H*W - 1 terms."""
    height, width = grid
    high_from = default_high_from(grid) if high_from is None else high_from
    axis_mask, high_mask = _lattice_masks(height, width, high_from)
    cells = height * width - 1
    return LatticeEnergy(torch.tensor(axis_mask.sum().item() / cells), torch.tensor(high_mask.sum().item() / cells))
