"""Perceiver IO with a dense output: an image goes into the latents and comes back out, at any size.

Perceiver IO (Jaegle et al., ICLR 2022, arXiv 2107.14795v3), Sec. 3.2 "Decoding the latent
representation with a query array":

    "Our goal is to produce a final output array of size O x E, given a latent representation of
    size N x D. We produce an output of this size by querying the decoder with an array of index
    dimension O. To capture the structure of the output space, we use queries containing the
    appropriate information for each output point, e.g. its spatial position or its modality."
    ...
    "For outputs with a spatial or sequence structure, we include a position encoding (e.g. a
    learned positional encoding or a Fourier feature) representing the position to be decoded in
    the output."
    ...
    "Each output point depends only on its query and the latent array, allowing us to decode
    outputs in parallel."

Fig. 2's caption: "Perceiver IO maps arbitrary input arrays to arbitrary output arrays in a domain
agnostic process." Here the output array is the image itself (O = H * W pixels, E = 3 colours):

    encode   images (B, 3, 32, 32) -> input array (B, M, C) -> latents (B, N, D)   the package's
             Perceiver with decoder="none": cross-attend + latent Transformer, no classifier
    decode   queries (O, Q) = Fourier features of each output pixel's (y, x), shared by the batch,
             cross-attend to the latents -> (B, O, Q) -> linear -> (B, O, 3) -> (B, 3, H, W)

The decoder block is App. E.1's attention module (LayerNorm, QKV attention, MLP) without the query
residual: "In the context of decoder attention, we sometimes find it helpful to omit the second step
(X_QKV = X_QKV + X_Q), as it involves adding the model output with a query." Our queries are
position features, and a pixel's colour should not start from its coordinates.

The queries' frequencies belong to the trained decoder
--------------------------------------------------------
A query is gamma(x) = [x, sin(pi f_k x), cos(pi f_k x)] with f_k = linspace(1, mu / 2, K) per axis.
The decoder learns what these numbers mean, so every decode must use the K and mu it was trained
with; only the positions x change. `fourier_features(shape, K)` defaults mu to the grid size, so on
a 64 x 64 grid it would silently double every frequency and hand the decoder features it never saw.
`PerceiverIO` therefore stores `query_resolution` (mu) and passes it explicitly on every grid.

Which mu makes the positions *between* the pixels meaningful? Training shows the decoder only the 32
positions per axis of linspace(-1, 1, 32), 2/31 apart. A band near that grid's highest alias-free
frequency (31/2 = 15.5, chapter 1) swings between neighbouring pixels: at f = 15.5, cos(pi f x) is 0
at every training pixel and +-1 halfway between, a value no training query had. With bands up to
mu / 2 = 8 (mu = 16, half the output grid: the default) each feature completes one period over at
least 31/8 ~ 3.9 pixel steps, so a query halfway between two pixels lies between their queries and
the decoder's answer there is an interpolation it has, in effect, been trained for. The price is less
fine detail at the training grid itself; chapter 5 measures both.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CrossAttentionBlock
from .config import PerceiverConfig
from .model import Perceiver
from .optim import LRSchedule, build_optimizer
from .positional import fourier_feature_dim, fourier_features

# The encoder of the chapter-5 demo: N * D = 32 * 64 = 2048 latent values for 32 * 32 * 3 = 3072
# pixel values, a real bottleneck. One cross-attend reads every pixel (patch_size=1).
AUTOENCODER_ENCODER = PerceiverConfig(
    name="io-autoencoder", patch_size=1, num_bands=8, num_latents=32, latent_dim=64,
    cross_widening=2, num_cross_attends=1, self_attends_per_block=4, latent_heads=4,
    latent_widening=2, decoder="none")


def fourier_features_at(positions: torch.Tensor, num_bands: int,
                        max_resolution: float | Sequence[float]) -> torch.Tensor:
    """Fourier features of explicit positions (P, d) in [-1, 1]: (P, d * (2K + 1)).

    The same formula and channel layout as `fourier_features`, which evaluates it on a grid;
    here the positions can be anywhere, e.g. between the pixels. max_resolution (mu) has no default
    on purpose: it must be the value the features were trained with (see the module docstring).
    """
    if positions.dim() != 2:
        raise ValueError(f"positions must be (P, d), got {tuple(positions.shape)}")
    num_axes = positions.shape[-1]
    if isinstance(max_resolution, (int, float)):
        max_resolution = (max_resolution,) * num_axes
    if len(max_resolution) != num_axes:
        raise ValueError(f"max_resolution needs one value per axis ({num_axes}), got {max_resolution}")
    bands = torch.stack([torch.linspace(1.0, mu / 2, num_bands, device=positions.device,
                                        dtype=positions.dtype) for mu in max_resolution])  # (d, K)
    scaled = (positions[:, :, None] * bands[None] * math.pi).flatten(1)  # (P, d*K)
    return torch.cat([positions, torch.sin(scaled), torch.cos(scaled)], dim=-1)  # (P, d*(2K+1))


class PerceiverIO(nn.Module):
    """Images (B, C, H, W) in [0, 1] -> latents (B, N, D) -> images decoded on any grid.

    encoder_config: a PerceiverConfig for images, normally with decoder="none" (no classifier).
    query_bands: K of the output queries. query_resolution: their mu, one per axis or one number;
    None = half the image size, so that every band stays well below the pixel grid's Nyquist limit.
    decoder_heads: heads of the decoding cross-attention (it must divide latent_dim).
    """

    def __init__(self, encoder_config: PerceiverConfig = AUTOENCODER_ENCODER, query_bands: int = 8,
                 query_resolution: float | Sequence[float] | None = None, decoder_heads: int = 1):
        super().__init__()
        if encoder_config.modality != "image":
            raise ValueError(f"PerceiverIO reconstructs images; config {encoder_config.name!r} has "
                             f"modality={encoder_config.modality!r}. Use modality='image'.")
        self.encoder = Perceiver(encoder_config)
        self.image_size = tuple(encoder_config.input_axes)  # (H, W): the grid the decoder trains on
        if query_resolution is None:
            query_resolution = tuple(n / 2 for n in self.image_size)
        elif isinstance(query_resolution, (int, float)):
            query_resolution = (query_resolution,) * len(self.image_size)
        self.query_bands, self.query_resolution = query_bands, tuple(float(mu) for mu in query_resolution)
        query_dim = fourier_feature_dim(len(self.image_size), query_bands)  # Q = 2 * (2K + 1)
        # Keys and values come from the latents at their own width D; the output has the queries' width.
        self.decoder = CrossAttentionBlock(query_dim, encoder_config.latent_dim, num_heads=decoder_heads,
                                           widening=1, use_query_residual=False)
        self.to_pixels = nn.Linear(query_dim, encoder_config.input_channels)
        self.register_buffer("queries", self.output_queries(self.image_size), persistent=False)  # (O, Q)

    @property
    def config(self) -> PerceiverConfig:
        return self.encoder.config

    def output_queries(self, grid: Sequence[int]) -> torch.Tensor:
        """The queries of every point of an output grid (H', W'), row-major: (H' * W', Q).

        The trained mu is passed explicitly: the frequencies stay those of training whatever the grid.
        """
        return fourier_features(grid, self.query_bands, self.query_resolution)

    # encode -> decode ---------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> latents (B, N, D)."""
        return self.encoder.encode(self.encoder.input_array(images))

    def decode_queries(self, latents: torch.Tensor, queries: torch.Tensor,
                       chunk_size: int | None = None) -> torch.Tensor:
        """latents (B, N, D), queries (O, Q) -> pixel values (B, O, C), in [0, 1] once trained.

        Each output depends only on its own query and the latents (Sec. 3.2), so decoding the queries
        in chunks of `chunk_size` gives the same values with less memory.
        """
        if queries.dim() != 2 or queries.shape[-1] != self.to_pixels.in_features:
            raise ValueError(f"queries must be (O, {self.to_pixels.in_features}), got {tuple(queries.shape)}")
        queries = queries.to(latents.dtype)
        chunks = queries.split(chunk_size) if chunk_size else (queries,)
        outputs = []
        for chunk in chunks:
            chunk = chunk.expand(latents.shape[0], -1, -1)  # (B, O_chunk, Q): the same for every image
            outputs.append(self.to_pixels(self.decoder(chunk, latents)))  # (B, O_chunk, C)
        normalised = torch.cat(outputs, dim=1)  # (B, O, C)
        # The decoder predicts normalised values, as the encoder reads them; undo the normalisation.
        mean, std = self.encoder.pixel_mean.view(1, 1, -1), self.encoder.pixel_std.view(1, 1, -1)
        return normalised * std + mean

    def decode_at(self, latents: torch.Tensor, positions: torch.Tensor,
                  chunk_size: int | None = None) -> torch.Tensor:
        """Decode at explicit (y, x) positions (P, 2) in [-1, 1]: pixel values (B, P, C)."""
        queries = fourier_features_at(positions.to(latents.device, latents.dtype), self.query_bands,
                                      self.query_resolution)
        return self.decode_queries(latents, queries, chunk_size)

    def decode(self, latents: torch.Tensor, grid: Sequence[int] | None = None,
               chunk_size: int | None = None) -> torch.Tensor:
        """latents (B, N, D) -> images (B, C, H', W') on the grid (H', W') (default: the input size).

        Every grid spans [-1, 1] on each axis, both ends included, like the input's positions, so
        (64, 64) samples the same square about twice as densely as (32, 32); the two grids share only
        their ends. (63, 63) holds the 32-grid's positions at even indices and the midpoints between
        them at odd ones.
        """
        grid = tuple(grid or self.image_size)
        queries = self.queries if grid == self.image_size else self.output_queries(grid).to(latents.device)
        pixels = self.decode_queries(latents, queries, chunk_size)  # (B, H'*W', C)
        return pixels.transpose(1, 2).unflatten(2, grid)  # (B, C, H', W')

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> their reconstructions (B, C, H, W) through the latents."""
        return self.decode(self.encode(images))

    def bottleneck(self) -> tuple[int, int]:
        """(values in the latents N * D, values in one image C * H * W)."""
        config = self.config
        return config.num_latents * config.latent_dim, config.input_channels * math.prod(self.image_size)


# Training -----------------------------------------------------------------------------------------
def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(255) if images.dtype == torch.uint8 else images.float()


def psnr(mse: float, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error on values in [0, peak]."""
    return 10 * math.log10(peak ** 2 / mse)


@torch.no_grad()
def reconstruction_error(model: PerceiverIO, images: torch.Tensor, batch_size: int = 500) -> float:
    """Mean squared error per value (pixels in [0, 1], reconstructions clipped to [0, 1])."""
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    for first in range(0, len(images), batch_size):
        batch = _as_float(images[first:first + batch_size].to(device))
        total += F.mse_loss(model(batch).clamp(0, 1), batch, reduction="sum").item()
    return total / images.numel()


def _reconstruction_loss(model: PerceiverIO, batch: torch.Tensor, points: int | None,
                         generator: torch.Generator) -> torch.Tensor:
    """MSE on every pixel, or on `points` random pixels (one draw shared by the batch)."""
    if not points:
        return F.mse_loss(model(batch), batch)
    chosen = torch.randperm(model.queries.shape[0], generator=generator)[:points].to(batch.device)  # (P,)
    predicted = model.decode_queries(model.encode(batch), model.queries[chosen])  # (B, P, C)
    target = batch.flatten(2)[:, :, chosen].transpose(1, 2)  # (B, P, C): row-major, like the queries
    return F.mse_loss(predicted, target)


def train_autoencoder(model: PerceiverIO, images: torch.Tensor, steps: int, batch_size: int = 64,
                      lr: float = 2e-3, weight_decay: float = 0.01, warmup_steps: int = 20,
                      seed: int = 0, device=None, clip_norm: float | None = 1.0,
                      points: int | None = None) -> list[float]:
    """Train `model` to reconstruct `images` (N, C, H, W), uint8 or floats in [0, 1], for `steps` steps.

    AdamW with a linear warmup and a cosine decay to 0, MSE in pixel space. points: decode and score
    only that many random pixels per step (Sec. 3.2: "we subsample the output array at training time
    and compute the loss on an affordable subset of points"); None = every pixel. Batches and points
    are drawn by a generator seeded with `seed`, so on a CPU the same seed and the same starting
    weights give the same loss history, bit for bit. Returns the loss of every step.
    Raises FloatingPointError at the first NaN/inf loss, before that step changes the weights.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got steps={steps}, batch_size={batch_size}")
    if points is not None and not 0 < points <= model.queries.shape[0]:
        raise ValueError(f"points must be between 1 and {model.queries.shape[0]} pixels, got {points}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).train()
    optimizer = build_optimizer(model, "adamw", lr, weight_decay)
    schedule = LRSchedule(optimizer, lr, warmup_steps, "cosine")
    generator = torch.Generator().manual_seed(seed)
    order, cursor, history = torch.randperm(len(images), generator=generator), 0, []
    for step in range(steps):
        if cursor + batch_size > len(order):  # a new shuffled pass over the images
            order, cursor = torch.randperm(len(images), generator=generator), 0
        batch = _as_float(images[order[cursor:cursor + batch_size]].to(device))  # (B, C, H, W)
        cursor += batch_size
        loss = _reconstruction_loss(model, batch, points, generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the reconstruction loss became {loss.item()} at step {step + 1} "
                                     f"(learning rate {schedule.lr:.3g}); the weights are those of step "
                                     f"{step}. Lower lr or keep clip_norm on.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm:
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        schedule.step((step + 1) / steps)
        history.append(loss.item())
    model.eval()
    return history
