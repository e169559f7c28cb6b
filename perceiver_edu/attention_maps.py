"""Collect a Perceiver's attention weights and turn them into maps over the image.

Paper, Sec. 2: the cross-attention's queries are the N latents and its keys are the M input
elements, so each latent holds one softmax distribution over the M pixels (or patches). Laid back
on the input grid, that distribution is an attention map: "where latent n looks".

Shapes: weights (B, heads, N, M) with M = H * W in row-major order over `config.grid`;
maps (B, heads, N, H, W). Everything returned here lives on the CPU, detached.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .model import Perceiver


@dataclass
class AttentionRecord:
    """What one batch of images made the model attend to.

    images: (B, 3, H_img, W_img) floats in [0, 1].  logits: (B, classes).
    cross: one (B, heads, N, M) tensor per cross-attend.  latent_self: one (B, heads, N, N) tensor
    per latent self-attention layer (empty unless asked for).  grid: (H, W) with H * W = M.
    """
    images: torch.Tensor
    logits: torch.Tensor
    cross: list
    grid: tuple
    latent_self: list = field(default_factory=list)

    @property
    def probabilities(self) -> torch.Tensor:
        return self.logits.softmax(dim=-1)  # (B, classes)

    def maps(self, cross_attend: int = 0) -> torch.Tensor:
        """(B, heads, N, H, W): the cross-attend's weights laid out on the input grid."""
        return to_grid(self.cross[cross_attend], self.grid)


@torch.no_grad()
def collect_attention(model: Perceiver, images: torch.Tensor, include_self: bool = False,
                      batch_size: int = 64) -> AttentionRecord:
    """Run `model` on images (B, 3, H, W) in [0, 1] and keep every cross-attention weight.

    The model runs in eval mode (no dropout) on its own device, in batches of `batch_size` so a few
    hundred images fit in memory (B x N x M floats each); its training mode is restored afterwards.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, cross, latent_self = [], [], []
    try:
        for first in range(0, len(images), batch_size):
            batch = images[first:first + batch_size].to(device)
            out, record = model(batch, return_attention=True)
            logits.append(out.float().cpu())
            cross.append([w.float().cpu() for w in record["cross"]])
            if include_self:
                latent_self.append([w.float().cpu() for w in record["self"]])
    finally:
        model.train(was_training)
    return AttentionRecord(
        images=images.detach().float().cpu(), logits=torch.cat(logits),
        cross=[torch.cat(parts) for parts in zip(*cross)], grid=tuple(model.config.grid),
        latent_self=[torch.cat(parts) for parts in zip(*latent_self)] if include_self else [])


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
