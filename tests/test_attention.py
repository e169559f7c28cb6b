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
    with pytest.raises(ValueError, match="^qk_dim=60 is not divisible by num_heads=7;"):
        Attention(60, num_heads=7)
    with pytest.raises(ValueError, match="^v_dim=6 is not divisible by num_heads=4;"):
        Attention(16, num_heads=4, v_dim=6)
    assert Attention(16).num_heads == 1  # one head unless asked


def test_blocks_keep_latent_shape_and_cross_attention_reads_raw_channels():
    block = CrossAttentionBlock(latent_dim=32, input_dim=13)
    assert block.attention.to_kv.in_features == 13 and block.attention.qk_dim == 13
    latents, inputs = torch.randn(2, 8, 32), torch.randn(2, 100, 13)
    out, maps = block(latents, inputs, return_attention=True)
    assert out.shape == latents.shape and maps.weights.shape == (2, 1, 8, 100)
    torch.testing.assert_close(maps.weights.sum(-1), torch.ones(2, 1, 8))
    assert SelfAttentionBlock(32, num_heads=4)(latents).shape == latents.shape


def test_mlp_widening_and_dropout():
    from perceiver_edu.attention import MLP
    default = MLP(8)
    assert default[0].out_features == 32 and default[2].in_features == 32  # hidden width 4 * dim
    torch.manual_seed(0)
    x = torch.randn(4, 16, 8)
    assert torch.equal(default.train()(x), default.eval()(x))  # no dropout by default, even in training
    dropped = MLP(8, widening=2, dropout=0.5).train()
    assert dropped[0].out_features == 16
    out = dropped(x)
    assert (out == 0).float().mean() > 0.3  # about half the outputs dropped
    assert torch.equal(dropped.eval()(x), dropped(x))


def test_cross_attention_block_defaults_and_what_it_passes_on():
    block = CrossAttentionBlock(latent_dim=32, input_dim=13)
    assert block.mlp[0].out_features == 32  # widening 1, as in the paper's cross-attend
    assert block.attention.dropout == 0.0 and block.mlp[-1].p == 0.0
    assert block.attention.num_heads == 1
    wide = CrossAttentionBlock(latent_dim=32, input_dim=13, num_heads=4, widening=2, qk_dim=16, v_dim=8,
                               dropout=0.25)
    assert wide.attention.num_heads == 4 and wide.attention.qk_dim == 16 and wide.attention.v_dim == 8
    assert wide.attention.to_out.in_features == 8 and wide.attention.to_out.out_features == 32
    assert wide.mlp[0].out_features == 64
    assert wide.attention.dropout == 0.25 and wide.mlp[-1].p == 0.25


def test_cross_attention_block_query_residual_is_on_by_default():
    latents, inputs = torch.randn(2, 8, 32), torch.randn(2, 50, 13)
    outputs = {}
    for residual in (None, True, False):
        torch.manual_seed(0)
        kwargs = {} if residual is None else {"use_query_residual": residual}
        outputs[residual] = CrossAttentionBlock(32, 13, **kwargs)(latents, inputs)
    torch.testing.assert_close(outputs[None], outputs[True])
    assert not torch.allclose(outputs[None], outputs[False])


def test_self_attention_block_defaults_and_what_it_passes_on():
    block = SelfAttentionBlock(32)
    assert block.attention.num_heads == 8 and block.mlp[0].out_features == 128  # 8 heads, widening 4
    assert block.attention.dropout == 0.0 and block.mlp[-1].p == 0.0
    custom = SelfAttentionBlock(32, num_heads=2, widening=3, dropout=0.25)
    assert custom.attention.num_heads == 2 and custom.mlp[0].out_features == 96
    assert custom.attention.dropout == 0.25 and custom.mlp[-1].p == 0.25


def test_blocks_are_pre_norm_residual_layers():
    """x + Attn(LN(x)), then x + MLP(LN(x)): the Transformer layer of the paper (pre-LayerNorm),
    written out with the block's own sub-modules."""
    torch.manual_seed(0)
    latents, inputs = torch.randn(2, 8, 32), torch.randn(2, 50, 13)
    cross = CrossAttentionBlock(32, 13, widening=2)
    expected = latents + cross.attention(cross.norm_latents(latents), cross.norm_inputs(inputs))
    expected = expected + cross.mlp(cross.norm_mlp(expected))
    torch.testing.assert_close(cross(latents, inputs), expected)
    no_residual = CrossAttentionBlock(32, 13, use_query_residual=False)
    expected = no_residual.attention(no_residual.norm_latents(latents), no_residual.norm_inputs(inputs))
    expected = expected + no_residual.mlp(no_residual.norm_mlp(expected))
    torch.testing.assert_close(no_residual(latents, inputs), expected)
    layer = SelfAttentionBlock(32, num_heads=4)
    expected = latents + layer.attention(layer.norm_attention(latents))
    expected = expected + layer.mlp(layer.norm_mlp(expected))
    torch.testing.assert_close(layer(latents), expected)


def test_cross_attention_without_context_says_so():
    with pytest.raises(ValueError, match="^cross-attention needs a context tensor$"):
        Attention(16, 8)(torch.randn(1, 4, 16))


@pytest.mark.parametrize("return_attention", [False, True])
def test_attention_dropout_only_while_training(return_attention):
    torch.manual_seed(0)
    attention = Attention(16, 12, num_heads=2, dropout=0.5)
    x, context = torch.randn(2, 6, 16), torch.randn(2, 40, 12)
    expected, _ = naive_attention(attention, x, context)

    def run():
        out = attention(x, context, return_attention=return_attention)
        return out[0] if return_attention else out

    attention.eval()
    torch.testing.assert_close(run(), expected, atol=1e-5, rtol=0)  # no dropout at evaluation
    attention.train()
    assert not torch.allclose(run(), expected, atol=1e-3)  # half the attention weights dropped
