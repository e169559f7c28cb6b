"""The Perceiver: cross-attend from a small latent array to a large input array, then think in latent space.

Paper, Sec. 3.1 ("Overview"): "We build our architecture from two components: (i) a cross-attention
module that maps a byte array (e.g. an pixel array) and a latent array to a latent array, and (ii) a
Transformer tower that maps a latent array to a latent array." And, same paragraph: "Because we
optionally share weights between each instance of the Transformer tower (and between all instances of
the cross-attention module but the first), our model can be interpreted as a recurrent neural network
(RNN), but unrolled in depth using the same input, rather than in time."
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import CrossAttentionBlock, SelfAttentionBlock
from .config import PerceiverConfig
from .positional import FourierPositionEncoding, LearnedPositionEncoding, truncated_normal
from .registry import register


def fixed_pixel_order(height: int, width: int, seed: int) -> torch.Tensor:
    """One fixed random order of the H*W pixels (paper Table 2's "permuted ImageNet").

    Drawn on the CPU from its own generator, so a seed gives the same order on every device.
    Entry j is the original (row-major) index of the pixel that goes to place j.
    """
    return torch.randperm(height * width, generator=torch.Generator().manual_seed(seed))


def permute_pixels(images: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W) with pixel j of the result taken from place order[j]."""
    return images.flatten(2)[:, :, order].view_as(images)


def _sharing_plan(count: int, share: bool) -> list:
    """Which stored module each repetition uses: [0, 1, 1, ...] when shared after the first."""
    return [min(i, 1) for i in range(count)] if share else list(range(count))


class LatentBlock(nn.Sequential):
    """`self_attends_per_block` self-attention layers: the paper's "latent Transformer"."""

    def __init__(self, config: PerceiverConfig):
        super().__init__(*[SelfAttentionBlock(config.latent_dim, config.latent_heads, config.latent_widening,
                                              config.dropout) for _ in range(config.self_attends_per_block)])


class Perceiver(nn.Module):
    def __init__(self, config: PerceiverConfig):
        super().__init__()
        self.config = config
        if config.modality == "image":
            self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, -1, 1, 1), persistent=False)
        if config.pixel_permutation is not None:
            self.register_buffer("pixel_order", fixed_pixel_order(*config.input_axes, config.pixel_permutation),
                                 persistent=False)
        if config.position_encoding == "fourier":
            self.position = FourierPositionEncoding(config.grid, config.num_bands, config.max_resolution)
        elif config.position_encoding == "learned":
            self.position = LearnedPositionEncoding(config.num_inputs, config.learned_position_dim,
                                                    config.learned_position_scale)
        else:
            self.position = None

        self.latents = nn.Parameter(truncated_normal((config.num_latents, config.latent_dim)))  # (N, D)

        sharing = config.weight_sharing
        self.cross_plan = _sharing_plan(config.num_cross_attends, sharing in ("paper", "after_first"))
        self.block_plan = ([0] * config.depth if sharing == "paper"
                           else _sharing_plan(config.depth, sharing == "after_first"))
        self.cross_attends = nn.ModuleList(
            CrossAttentionBlock(config.latent_dim, config.input_dim, config.cross_heads, config.cross_widening,
                                qk_dim=config.cross_qk_dim, dropout=config.dropout)
            for _ in range(max(self.cross_plan) + 1))
        self.latent_blocks = nn.ModuleList(LatentBlock(config) for _ in range(max(self.block_plan) + 1))

        if config.decoder in ("mean", "none"):
            self.decoder_query = self.decoder_attention = None
        else:
            self.decoder_query = nn.Parameter(truncated_normal((1, config.latent_dim)))  # (1, D)
            self.decoder_attention = CrossAttentionBlock(config.latent_dim, config.latent_dim, num_heads=1,
                                                         widening=1, dropout=config.dropout)
        # DeepMind's ClassificationDecoder goes straight from its cross-attend to the final linear
        # layer; the mean decoder keeps a LayerNorm on the pooled latents (a pre-LN tower's last norm).
        self.norm_out = nn.Identity() if config.decoder == "query" else nn.LayerNorm(config.latent_dim)
        self.classifier = nn.Linear(config.latent_dim, config.num_classes)
        if config.decoder == "none":  # an encoder only: Perceiver IO (perceiver_edu.io) decodes encode()
            self.norm_out = self.classifier = None

    # The input array -----------------------------------------------------------------------
    def input_array(self, x: torch.Tensor) -> torch.Tensor:
        """Turn a batch into the (B, M, C) array the latents attend to: values + position features."""
        config = self.config
        if config.modality == "image":
            x = self._check_image(x)
            if config.pixel_permutation is not None:
                # After augmentation (the trainer's, in image space), before space-to-depth: with
                # patches, a patch is built from scattered pixels; the locality prior is gone.
                x = permute_pixels(x, self.pixel_order)
            values = self._patches(x)  # (B, M, C_values)
        else:
            values = self._check_array(x).flatten(1, -2)  # (B, M, C_values)
        if self.position is None:
            return values
        position = self.position()  # (M, C_pos), row-major over the grid
        if config.pixel_permutation is not None and config.patch_size == 1:
            position = position[self.pixel_order]  # each pixel keeps the features of its original place
        position = position.to(values.dtype).expand(values.shape[0], -1, -1)  # (B, M, C_pos)
        return torch.cat([values, position], dim=-1)  # (B, M, C)

    def _check_image(self, x: torch.Tensor) -> torch.Tensor:
        config = self.config
        expected = (config.input_channels, *config.input_axes)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"Perceiver {config.name!r} expects images of shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}. Resize the images, or build a config with "
                f"input_axes={tuple(x.shape[-2:])} and input_channels={x.shape[1] if x.dim() == 4 else '?'}.")
        if not x.is_floating_point():
            raise TypeError(f"images must be floats in [0, 1], got dtype {x.dtype}; use x.float() / 255")
        return (x - self.pixel_mean) / self.pixel_std

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        p = self.config.patch_size
        x = x.view(batch, channels, height // p, p, width // p, p)
        x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p): one row per patch, grid row-major
        return x.reshape(batch, (height // p) * (width // p), channels * p * p)

    def _check_array(self, x: torch.Tensor) -> torch.Tensor:
        config = self.config
        expected = (*config.input_axes, config.input_channels)
        if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"Perceiver {config.name!r} expects arrays of shape (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}. Build a config whose input_axes and input_channels match.")
        return x

    # The Perceiver proper --------------------------------------------------------------------
    def perceive(self, inputs: torch.Tensor, return_attention: bool = False):
        """inputs: the (B, M, C) input array. Returns logits (B, num_classes) [, attention record].

        The record is a dict of lists: "cross" and "cross_logits" hold one (B, heads, N, M) tensor per
        cross-attend, "self" one (B, heads, N, N) per latent layer run, "decoder" the (B, 1, 1, N)
        query weights for the Perceiver IO decoder.
        """
        record = {"cross": [], "cross_logits": [], "self": [], "decoder": []}
        latents = self.encode(inputs, record, return_attention)
        logits = self.decode(latents, record, return_attention)
        return (logits, record) if return_attention else logits

    def encode(self, inputs: torch.Tensor, record: dict | None = None, return_attention: bool = False):
        """The (B, M, C) input array -> the final latent array (B, N, D): cross-attends and latent blocks."""
        if inputs.dim() != 3 or inputs.shape[-1] != self.config.input_dim:
            raise ValueError(f"the input array must be (B, M, {self.config.input_dim}), got {tuple(inputs.shape)}")
        latents = self.latents.expand(inputs.shape[0], -1, -1)  # (B, N, D)
        for step, block_index in enumerate(self.block_plan):
            if step < len(self.cross_plan):
                cross_attend = self.cross_attends[self.cross_plan[step]]
                latents = self._run(cross_attend, record, "cross", return_attention, latents, inputs)
            for layer in self.latent_blocks[block_index]:
                latents = self._run(layer, record, "self", return_attention, latents)
        return latents

    @staticmethod
    def _run(module, record, key, return_attention, *args):
        if not return_attention:
            return module(*args)
        latents, maps = module(*args, return_attention=True)
        record[key].append(maps.weights)
        if key == "cross":
            record["cross_logits"].append(maps.logits)
        return latents

    def decode(self, latents: torch.Tensor, record: dict | None = None, return_attention: bool = False):
        """latents (B, N, D) -> logits (B, num_classes)."""
        if self.classifier is None:
            raise ValueError(f"Perceiver {self.config.name!r} has decoder='none': it has no classifier. "
                             f"Use encode() for its latents, or build it with decoder='mean' or 'query'.")
        if self.decoder_attention is None:
            pooled = latents.mean(dim=1)  # (B, D): the paper's average over the latent index
        else:
            query = self.decoder_query.expand(latents.shape[0], -1, -1)  # (B, 1, D)
            pooled = self._run(self.decoder_attention, record, "decoder", return_attention, query, latents)
            pooled = pooled[:, 0]  # (B, D)
        return self.classifier(self.norm_out(pooled))

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Images (B, C, H, W) in [0, 1], or arrays (B, *axes, C) -> logits (B, num_classes)."""
        return self.perceive(self.input_array(x), return_attention)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_count(config: PerceiverConfig) -> int:
    """Parameters of a Perceiver built on the meta device: no memory, so ImageNet sizes are free."""
    with torch.device("meta"):
        return count_parameters(Perceiver(config))


register("perceiver", PerceiverConfig, Perceiver)
