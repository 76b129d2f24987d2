"""Generator tests: shapes, tanh range, the role of z, AdaGN's initial state, FIR filters, parameter counts."""
from __future__ import annotations

import math

import pytest
import torch

from diffseg_core.cdal import CDALConfig, build_generator
from diffseg_core.cdal.generator import AdaptiveGroupNorm, ConditionalGenerator, ImageEncoder, MappingNetwork
from diffseg_core.cdal.layers import fir_downsample, fir_upsample, timestep_embedding


def tiny_g(**kw) -> ConditionalGenerator:
    args = dict(label_channels=1, image_channels=3, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                image_size=16, nz=8, z_emb_dim=16, n_mlp=1, enc_blocks=1, resample="avg")
    args.update(kw)
    return ConditionalGenerator(**args)


def _perturb(g: torch.nn.Module, scale: float = 0.2) -> None:
    """Move every weight away from its (near-zero) init so outputs depend on all inputs."""
    torch.manual_seed(123)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(torch.randn_like(p) * scale)


@pytest.mark.parametrize("resample", ["avg", "fir"])
def test_shapes_and_tanh_range(resample):
    torch.manual_seed(0)
    g = tiny_g(resample=resample, label_channels=3, image_channels=1)
    _perturb(g, 1.0)
    x = torch.randn(2, 3, 16, 16) * 5
    out = g(x, torch.tensor([0, 3]), torch.randn(2, 1, 16, 16), torch.randn(2, 8))
    assert out.shape == (2, 3, 16, 16)
    assert out.abs().max() <= 1.0 and out.abs().max() > 0.5  # tanh-bounded, not stuck at 0
    # a non-square window of another size works too (levels, not pixel sizes, carry the attention)
    assert g(torch.randn(1, 3, 8, 24), torch.tensor([1]), torch.randn(1, 1, 8, 24)).shape == (1, 3, 8, 24)


def test_latent_changes_output_only_when_used():
    torch.manual_seed(0)
    g = tiny_g()
    _perturb(g)
    x, img, t = torch.randn(2, 1, 16, 16), torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    a = g(x, t, img, torch.randn(2, 8))
    b = g(x, t, img, torch.randn(2, 8))
    assert (a - b).abs().max() > 1e-3                       # z matters
    assert torch.equal(g(x, t, img, None), g(x, t, img, None))  # z = None is z = 0: deterministic
    assert torch.allclose(g(x, t, img, None), g(x, t, img, torch.zeros(2, 8)))


def test_image_and_time_condition_the_output():
    torch.manual_seed(0)
    g = tiny_g()
    _perturb(g)
    x, img, z = torch.randn(1, 1, 16, 16), torch.randn(1, 3, 16, 16), torch.randn(1, 8)
    base = g(x, torch.tensor([0]), img, z)
    assert (g(x, torch.tensor([0]), img + 1, z) - base).abs().max() > 1e-3
    assert (g(x, torch.tensor([2]), img, z) - base).abs().max() > 1e-3


def test_adagn_starts_as_plain_groupnorm():
    torch.manual_seed(0)
    norm = AdaptiveGroupNorm(2, 4, style_dim=6)
    assert torch.equal(norm.style.bias[:4], torch.ones(4)) and torch.equal(norm.style.bias[4:], torch.zeros(4))
    h = torch.randn(3, 4, 5, 5)
    out = norm(h, torch.zeros(3, 6))                # zero style -> gamma = 1, beta = 0
    # independent GroupNorm: groups of 2 channels, biased variance, eps 1e-6
    g = h.reshape(3, 2, -1)
    ref = ((g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-6)).reshape_as(h)
    assert torch.allclose(out, ref, atol=1e-5)


def test_mapping_network_pixelnorm_and_shape():
    m = MappingNetwork(nz=5, z_emb_dim=7, n_mlp=2)
    z = torch.randn(4, 5)
    assert m(z).shape == (4, 7)
    assert torch.allclose(m(z), m(z * 3.0), atol=1e-5)     # PixelNorm makes the style scale-invariant in z
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        m(torch.randn(4, 6))


def test_timestep_embedding_hand_values():
    e = timestep_embedding(torch.tensor([0, 1]), 4)       # freqs: 1, 1/10000
    assert torch.allclose(e[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.allclose(e[1], torch.tensor([math.sin(1), math.sin(1e-4), math.cos(1), math.cos(1e-4)]), atol=1e-6)


def test_fir_filters_preserve_constants_and_sizes():
    x = torch.full((1, 2, 8, 8), 3.0)
    d, u = fir_downsample(x), fir_upsample(x)
    assert d.shape == (1, 2, 4, 4) and u.shape == (1, 2, 16, 16)
    assert torch.allclose(d[..., 1:-1, 1:-1], torch.full_like(d[..., 1:-1, 1:-1], 3.0))   # interior: unit gain
    assert torch.allclose(u[..., 2:-2, 2:-2], torch.full_like(u[..., 2:-2, 2:-2], 3.0))
    # hand-computed 1-D: [1,3,3,1]/8 on an impulse at position 2 of 8, down by 2 (pad 1): taps at outputs 0..2
    imp = torch.zeros(1, 1, 8, 8)
    imp[0, 0, 2, 2] = 1.0
    dd = fir_downsample(imp)[0, 0]
    k = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8
    # output i covers padded inputs 2i..2i+3, i.e. original 2i-1..2i+2; impulse at 2 -> i=0 gets k[3], i=1 gets k[1]
    assert dd[1, 1].item() == pytest.approx((k[1] * k[1]).item())
    assert dd[0, 0].item() == pytest.approx((k[3] * k[3]).item())


def test_bad_inputs_raise():
    g = tiny_g()
    with pytest.raises(ValueError, match="divisible"):
        g(torch.randn(1, 1, 15, 16), torch.tensor([0]), torch.randn(1, 3, 15, 16))
    with pytest.raises(ValueError, match="channels"):
        g(torch.randn(1, 2, 16, 16), torch.tensor([0]), torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="image"):
        g(torch.randn(1, 1, 16, 16), torch.tensor([0]), torch.randn(1, 1, 16, 16))


# book/decisions.md, measured from the official model classes
PAPER_COUNTS = {"monuseg": (41_666_753, 372_352, 3, 1), "cxr": (8_843_777, 112_064, 1, 1),
                "hippocampus": (3_682_275, 112_064, 1, 3)}


@pytest.mark.parametrize("dataset", ["monuseg", "cxr", "hippocampus"])
def test_paper_generator_parameter_counts(dataset):
    want_g, want_enc, image_ch, label_ch = PAPER_COUNTS[dataset]
    g = build_generator(CDALConfig.for_preset("paper", dataset), label_ch, image_ch)
    assert g.num_parameters() == want_g                 # exact: the official classes give these counts
    assert sum(p.numel() for p in g.encoder.parameters()) == want_enc
    assert isinstance(g.encoder, ImageEncoder)
    want_map = 56_064 if dataset == "hippocampus" else 223_232
    assert sum(p.numel() for p in g.mapping.parameters()) == want_map


def test_out_activation_none_is_the_same_network_without_tanh():
    """The SegDiff-style baseline predicts noise: the same parameters (names, shapes, values), an unbounded head."""
    torch.manual_seed(0)
    a = tiny_g()
    _perturb(a, 1.0)
    b = tiny_g(out_activation="none")
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]
    b.load_state_dict(a.state_dict())
    x, img, t = torch.randn(2, 1, 16, 16) * 5, torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    with torch.no_grad():
        raw = b(x, t, img)
        assert torch.allclose(a(x, t, img), torch.tanh(raw), atol=1e-6)
    assert raw.abs().max() > 1.0                              # not bounded
    with pytest.raises(ValueError, match="out_activation"):
        tiny_g(out_activation="sigmoid")


def test_precomputed_image_features_give_the_same_prediction():
    """A sampler may encode the image once (it depends on nothing else) and reuse it for every step and member."""
    G = tiny_g()
    x, img, z = torch.randn(2, 1, 16, 16), torch.randn(2, 3, 16, 16), torch.randn(2, 8)
    t = torch.tensor([0, 1])
    with torch.no_grad():
        whole = G(x, t, img, z)
        feats = G.encode(img)
        assert feats.shape == (2, 8, 16, 16)
        assert torch.equal(G(x, t, z=z, image_features=feats), whole)
    with pytest.raises(ValueError, match="exactly one"):
        G(x, t, img, z, image_features=feats)
    with pytest.raises(ValueError, match="image_features must be"):
        G(x, t, z=z, image_features=feats[:, :4])


def test_inference_path_equals_the_autograd_path_and_leaves_inputs_alone():
    """Without autograd the residual blocks write in place (fewer passes over memory): the prediction must equal
    the one computed with autograd on, and no input tensor may change."""
    G = tiny_g()
    _perturb(G)
    x, img, z = torch.randn(2, 1, 16, 16), torch.randn(2, 3, 16, 16), torch.randn(2, 8)
    t = torch.tensor([0, 1])
    copies = [a.clone() for a in (x, img, z)]
    with_grad = G(x, t, img, z)
    assert with_grad.requires_grad
    with torch.inference_mode():
        fast = G(x, t, img, z)
    torch.testing.assert_close(fast, with_grad.detach(), rtol=0, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip((x, img, z), copies))
    with_grad.square().mean().backward()                # the autograd path still trains
    assert all(p.grad is not None for p in G.parameters() if p.requires_grad)
