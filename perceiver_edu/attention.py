"""Attention and the two Perceiver blocks: cross-attention to the input, self-attention among latents.

Paper, Fig. 1 caption: "The Perceiver uses a cross-attention module to project an high-dimensional
input byte array to a fixed-dimensional latent bottleneck (the number of input indices M is much
larger than the number of latent indices N) before processing it using a deep stack of
Transformer-style self-attention blocks in the latent space."
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class AttentionMaps(NamedTuple):
    weights: torch.Tensor  # (B, heads, N_queries, N_keys), rows sum to 1
    logits: torch.Tensor   # (B, heads, N_queries, N_keys), before the softmax


class Attention(nn.Module):
    """Multi-head scaled dot-product attention.

    Self-attention when `context_dim` is None (one fused Q/K/V projection); cross-attention
    otherwise (Q from the queries, one fused K/V projection straight from the context's own channels).
    Fusing turns three small matmuls into one larger one, which a CPU or GPU runs faster.
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, num_heads: int = 1,
                 qk_dim: int | None = None, v_dim: int | None = None, out_dim: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        qk_dim = qk_dim or query_dim
        v_dim = v_dim or qk_dim
        for name, width in (("qk_dim", qk_dim), ("v_dim", v_dim)):
            if width % num_heads:
                raise ValueError(f"{name}={width} is not divisible by num_heads={num_heads}; "
                                 f"choose a width that is a multiple of the number of heads")
        self.num_heads, self.qk_dim, self.v_dim = num_heads, qk_dim, v_dim
        self.is_self_attention = context_dim is None
        if self.is_self_attention:
            self.to_qkv = nn.Linear(query_dim, 2 * qk_dim + v_dim)
        else:
            self.to_q = nn.Linear(query_dim, qk_dim)
            self.to_kv = nn.Linear(context_dim, qk_dim + v_dim)
        self.to_out = nn.Linear(v_dim, out_dim or query_dim)
        self.dropout = dropout

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)  # (B, h, L, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, return_attention: bool = False):
        """x: (B, N, query_dim); context: (B, M, context_dim) for cross-attention.

        Returns (B, N, out_dim), and with `return_attention=True` also AttentionMaps. That path
        computes softmax(QK^T / sqrt(d)) explicitly; the default path uses the fused
        `scaled_dot_product_attention` kernel, which never materialises the (N, M) matrix.
        """
        if self.is_self_attention:
            q, k, v = self.to_qkv(x).split([self.qk_dim, self.qk_dim, self.v_dim], dim=-1)
        else:
            if context is None:
                raise ValueError("cross-attention needs a context tensor")
            q = self.to_q(x)
            k, v = self.to_kv(context).split([self.qk_dim, self.v_dim], dim=-1)
        q, k, v = map(self._split_heads, (q, k, v))  # (B, h, N|M, d)
        dropout = self.dropout if self.training else 0.0
        if return_attention:
            logits = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, h, N, M)
            weights = logits.softmax(dim=-1)
            out = F.dropout(weights, dropout, self.training) @ v  # (B, h, N, d_v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # (B, h, N, d_v)
        out = out.transpose(1, 2).flatten(2)  # (B, N, v_dim)
        out = self.to_out(out)
        return (out, AttentionMaps(weights, logits)) if return_attention else out


class MLP(nn.Sequential):
    """The Transformer's position-wise feed-forward layer, hidden width = widening * dim."""

    def __init__(self, dim: int, widening: int = 4, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, widening * dim), nn.GELU(), nn.Linear(widening * dim, dim),
                         nn.Dropout(dropout))


class CrossAttentionBlock(nn.Module):
    """Latents (queries) attend to the input array (keys and values); pre-LayerNorm on both.

    Keys and values are projected from the input's own channels (pixel values + position features),
    as in the paper, instead of first lifting every input element to the latent width.
    """

    def __init__(self, latent_dim: int, input_dim: int, num_heads: int = 1, widening: int = 1,
                 qk_dim: int | None = None, v_dim: int | None = None, dropout: float = 0.0,
                 use_query_residual: bool = True):
        super().__init__()
        self.norm_latents = nn.LayerNorm(latent_dim)
        self.norm_inputs = nn.LayerNorm(input_dim)
        # DeepMind's default (shape_for_attn="kv"): queries and keys live at the input's width.
        self.attention = Attention(latent_dim, input_dim, num_heads, qk_dim or input_dim, v_dim, latent_dim,
                                   dropout)
        self.norm_mlp = nn.LayerNorm(latent_dim)
        self.mlp = MLP(latent_dim, widening, dropout)
        self.use_query_residual = use_query_residual

    def forward(self, latents: torch.Tensor, inputs: torch.Tensor, return_attention: bool = False):
        """latents: (B, N, D); inputs: (B, M, C). Returns latents (B, N, D) [, AttentionMaps]."""
        attended = self.attention(self.norm_latents(latents), self.norm_inputs(inputs), return_attention)
        attended, maps = attended if return_attention else (attended, None)
        latents = latents + attended if self.use_query_residual else attended
        latents = latents + self.mlp(self.norm_mlp(latents))
        return (latents, maps) if return_attention else latents


class SelfAttentionBlock(nn.Module):
    """A standard pre-LayerNorm Transformer layer acting on the latent array only: cost O(N^2), not O(M^2)."""

    def __init__(self, dim: int, num_heads: int = 8, widening: int = 4, dropout: float = 0.0):
        super().__init__()
        self.norm_attention = nn.LayerNorm(dim)
        self.attention = Attention(dim, None, num_heads, dropout=dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, widening, dropout)

    def forward(self, latents: torch.Tensor, return_attention: bool = False):
        """latents: (B, N, D). Returns (B, N, D) [, AttentionMaps]."""
        attended = self.attention(self.norm_attention(latents), return_attention=return_attention)
        attended, maps = attended if return_attention else (attended, None)
        latents = latents + attended
        latents = latents + self.mlp(self.norm_mlp(latents))
        return (latents, maps) if return_attention else latents
