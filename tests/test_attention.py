import pytest
import torch

from perceiver_edu import Attention, CrossAttentionBlock, SelfAttentionBlock


def naive_attention(attention: Attention, x, context=None):
    """softmax(Q K^T / sqrt(d)) V written out, sharing the module's weights."""
    h = attention.num_heads
    if context is None:
        q, k, v = attention.to_qkv(x).split([attention.qk_dim, attention.qk_dim, attention.v_dim], -1)
    else:
        q = attention.to_q(x)
        k, v = attention.to_kv(context).split([attention.qk_dim, attention.v_dim], -1)
    heads = lambda t: t.reshape(t.shape[0], t.shape[1], h, -1).permute(0, 2, 1, 3)
    q, k, v = heads(q), heads(k), heads(v)
    weights = torch.softmax(torch.einsum("bhnd,bhmd->bhnm", q, k) / q.shape[-1] ** 0.5, dim=-1)
    out = torch.einsum("bhnm,bhmd->bhnd", weights, v).permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], -1)
    return attention.to_out(out), weights


@pytest.mark.parametrize("heads,context_dim", [(1, 69), (4, 32), (8, None)])
def test_sdpa_matches_naive_softmax_attention(heads, context_dim):
    torch.manual_seed(0)
    attention = Attention(64, context_dim, num_heads=heads, qk_dim=64 if context_dim else None)
    x = torch.randn(3, 16, 64)
    context = torch.randn(3, 50, context_dim) if context_dim else None
    expected, expected_weights = naive_attention(attention, x, context)
    torch.testing.assert_close(attention(x, context), expected, atol=1e-5, rtol=0)
    out, maps = attention(x, context, return_attention=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(maps.weights, expected_weights, atol=1e-6, rtol=0)
    torch.testing.assert_close(maps.logits.softmax(-1), maps.weights)
    assert maps.weights.shape == (3, heads, 16, 50 if context_dim else 16)


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        Attention(60, num_heads=7)


def test_blocks_keep_latent_shape_and_cross_attention_reads_raw_channels():
    block = CrossAttentionBlock(latent_dim=32, input_dim=13)
    assert block.attention.to_kv.in_features == 13 and block.attention.qk_dim == 13
    latents, inputs = torch.randn(2, 8, 32), torch.randn(2, 100, 13)
    out, maps = block(latents, inputs, return_attention=True)
    assert out.shape == latents.shape and maps.weights.shape == (2, 1, 8, 100)
    torch.testing.assert_close(maps.weights.sum(-1), torch.ones(2, 1, 8))
    assert SelfAttentionBlock(32, num_heads=4)(latents).shape == latents.shape
