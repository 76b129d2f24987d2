"""Cross-modal attention (TextDiff Eq. 3 and the official block), checked against hand-computed numbers."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffseg_core.textdiff.cross_attention import (CrossAttention, CrossModalBlock, MultiScaleCrossModalFusion,
                                          cross_attention, masked_mean)


def test_hand_computed_two_by_two():
    # Q = K = I (2 pixels, 2 tokens, d = 2): scores = I / sqrt(2), so each pixel puts
    # a = e^(1/sqrt2) / (e^(1/sqrt2) + 1) = 0.669761 on "its" token and 1 - a on the other.
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    k = q.clone()
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    out, w = cross_attention(q, k, v)
    a = 0.6697615
    assert w[0, 0].flatten().tolist() == pytest.approx([a, 1 - a, 1 - a, a], abs=1e-6)
    # row 0: a*[1,2] + (1-a)*[3,4] = [3-2a, 4-2a]; row 1: [1+2a, 2+2a]
    assert out[0, 0].flatten().tolist() == pytest.approx([3 - 2 * a, 4 - 2 * a, 1 + 2 * a, 2 + 2 * a], abs=1e-6)


def test_rows_sum_to_one_and_match_torch_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 4, generator=g), torch.randn(2, 3, 5, 4, generator=g),
               torch.randn(2, 3, 5, 6, generator=g))
    out, w = cross_attention(q, k, v)
    assert w.shape == (2, 3, 7, 5)
    assert torch.allclose(w.sum(-1), torch.ones(2, 3, 7), atol=1e-6)
    assert (w >= 0).all()
    ref = F.scaled_dot_product_attention(q, k, v)  # the library's softmax(QK^T/sqrt(d))V
    assert torch.allclose(out, ref, atol=1e-5)


def test_masked_padding_tokens_get_zero_weight():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(2, 2, 4, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g)
    mask = torch.tensor([[True, True, True, False, False], [True, True, True, True, True]])
    out, w = cross_attention(q, k, v, mask)
    assert (w[0, :, :, 3:] == 0).all()  # padding of sentence 0
    assert torch.allclose(w.sum(-1), torch.ones(2, 2, 4), atol=1e-6)
    # masking equals dropping the padded tokens
    out0, _ = cross_attention(q[:1], k[:1, :, :3], v[:1, :, :3])
    assert torch.allclose(out[:1], out0, atol=1e-6)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    assert torch.allclose(out, ref, atol=1e-5)


def test_bad_inputs_are_named():
    q = torch.zeros(1, 1, 2, 4)
    with pytest.raises(ValueError, match="hides every token"):
        cross_attention(q, q, q, torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_mask"):
        cross_attention(q, q, q, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="incompatible"):
        cross_attention(q, torch.zeros(1, 1, 2, 3), q)


def test_cross_attention_module_keeps_weights():
    attn = CrossAttention(query_dim=12, context_dim=6, heads=3, dim_head=4)
    x, ctx = torch.randn(2, 20, 12), torch.randn(2, 10, 6)
    y = attn(x, ctx)
    assert y.shape == (2, 20, 12)
    assert attn.attention_weights.shape == (2, 3, 20, 10)
    assert torch.allclose(attn.attention_weights.sum(-1), torch.ones(2, 3, 20), atol=1e-5)
    assert attn.to_q.bias is None and attn.to_k.bias is None and attn.to_v.bias is None  # bias-free as the code


def test_block_is_residual():
    block = CrossModalBlock(dim=8, context_dim=6, heads=2, dim_head=4)
    # zero every sub-layer's last affine map: the block must then be the identity (x + 0 + 0 + 0)
    with torch.no_grad():
        for attn in (block.attn1, block.attn2):
            attn.to_out[1].weight.zero_()
            attn.to_out[1].bias.zero_()
        block.ff[1].weight.zero_()
        block.ff[1].bias.zero_()
    x = torch.randn(1, 5, 8)
    assert torch.allclose(block(x, torch.randn(1, 10, 6)), x)
    assert block.attention_weights.shape == (1, 2, 5, 10)


def _feats(b=2):
    return [torch.randn(b, 12, 2, 2), torch.randn(b, 6, 4, 4), torch.randn(b, 6, 8, 8)]


def test_fusion_full_model_shapes_and_attention_maps():
    fusion = MultiScaleCrossModalFusion([12, 6, 6], dim=8, context_dim=5, heads=2, dim_head=4)
    tokens = torch.randn(2, 10, 5)
    y = fusion(_feats(), tokens, out_size=(16, 16))
    assert y.shape == (2, 3 * 8, 16, 16) and fusion.out_channels == 24
    assert [tuple(a.shape) for a in fusion.attention_maps] == [(2, 2, 4, 10), (2, 2, 16, 10), (2, 2, 64, 10)]
    maps = fusion.token_maps()
    assert [tuple(m.shape) for m in maps] == [(2, 10, 2, 2), (2, 10, 4, 4), (2, 10, 8, 8)]
    assert torch.allclose(maps[1].sum(1), torch.ones(2, 4, 4), atol=1e-5)
    # one block shared over the scales: its parameters are counted once
    n_block = sum(p.numel() for p in fusion.block.parameters())
    n_proj = sum(p.numel() for p in fusion.proj.parameters())
    assert sum(p.numel() for p in fusion.parameters()) == n_block + n_proj


def test_fusion_zeta1_ignores_text():
    fusion = MultiScaleCrossModalFusion([12, 6, 6], dim=8, context_dim=5, use_text=False)
    feats = _feats()
    y = fusion(feats, None, out_size=(8, 8))
    assert fusion.block is None and fusion.text_proj is None and fusion.attention_maps == []
    assert y.shape == (2, 24, 8, 8)
    # the finest scale (already 8x8) is just its 1x1 projection
    assert torch.allclose(y[:, 16:], fusion.proj[2](feats[2]), atol=1e-6)


def test_fusion_zeta2_broadcasts_pooled_text():
    fusion = MultiScaleCrossModalFusion([12, 6, 6], dim=8, context_dim=5, use_xattn=False)
    tokens = torch.randn(2, 10, 5)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    y = fusion(_feats(), tokens, mask, out_size=(8, 8))
    assert y.shape == (2, 32, 8, 8) and fusion.out_channels == 32
    text_part = y[:, 24:]
    assert torch.allclose(text_part, text_part[:, :, :1, :1].expand_as(text_part))  # constant over pixels
    expected = fusion.text_proj(tokens[0, :6].mean(0))  # mean over real tokens only
    assert torch.allclose(text_part[0, :, 0, 0], expected, atol=1e-6)
    assert torch.allclose(masked_mean(tokens, None), tokens.mean(1))


def test_fusion_errors():
    fusion = MultiScaleCrossModalFusion([12, 6], dim=8, context_dim=5)
    with pytest.raises(ValueError, match="expected 2 feature scales"):
        fusion(_feats(), torch.randn(2, 10, 5))
    with pytest.raises(ValueError, match="scale 1"):
        fusion([torch.randn(2, 12, 2, 2), torch.randn(2, 7, 4, 4)], torch.randn(2, 10, 5))
    with pytest.raises(ValueError, match="needs text"):
        fusion([torch.randn(2, 12, 2, 2), torch.randn(2, 6, 4, 4)], None)
