"""Discriminator tests: logits, kept feature maps, attention reduction, R1 and the paper's parameter counts."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from diffseg_core.cdal import CDALConfig, build_discriminator
from diffseg_core.cdal.discriminator import TimeConditionedDiscriminator, d_logistic_loss, r1_penalty, spatial_attention


def tiny_d(**kw) -> TimeConditionedDiscriminator:
    args = dict(in_channels=2, ngf=4, channel_mults=(2, 4, 4), t_emb_dim=16, resample="avg")
    args.update(kw)
    return TimeConditionedDiscriminator(**args)


@pytest.mark.parametrize("resample", ["avg", "fir"])
def test_logits_and_feature_maps(resample):
    torch.manual_seed(0)
    d = tiny_d(resample=resample)
    x = torch.randn(6, 1, 32, 32)     # batch 6: the stddev group falls back to 3 (a divisor of 6)
    out = d(x, torch.randn_like(x), torch.tensor([0, 1, 2, 3, 0, 1]))
    assert out.shape == (6,) and torch.isfinite(out).all()
    shapes = [tuple(f.shape) for f in d.feature_maps]
    assert shapes == [(6, 8, 32, 32), (6, 8, 16, 16), (6, 16, 8, 8), (6, 16, 4, 4)]
    feats = d.features(x, x, torch.zeros(6, dtype=torch.long))
    assert [tuple(f.shape) for f in feats] == shapes and not feats[2].requires_grad


def test_stage_for_scale_is_a_depth():
    d = tiny_d()
    assert [d.stage_for_scale(s) for s in (2, 4, 8)] == [1, 2, 3]
    large = TimeConditionedDiscriminator(ngf=1, channel_mults=(4, 8, 8, 8, 8, 8), t_emb_dim=8)
    assert [large.stage_for_scale(s) for s in (4, 8, 16)] == [2, 3, 4]   # 64/32/16 px at 256 (book/decisions.md)
    small = TimeConditionedDiscriminator(in_channels=6, ngf=1, channel_mults=(2, 4, 8, 8),
                                         downsample=(False, True, True, True), t_emb_dim=8)
    assert small.stage_for_scale(2) == 2
    with pytest.raises(ValueError, match="attention scale 16"):
        d.stage_for_scale(16)


def test_spatial_attention_is_channel_mean_of_known_features():
    f = torch.zeros(1, 3, 2, 2)
    f[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    f[0, 1] = torch.tensor([[-1.0, 0.0], [0.0, 5.0]])
    f[0, 2] = torch.tensor([[3.0, 1.0], [0.0, 3.0]])
    a = spatial_attention([torch.zeros(1, 1, 4, 4), f], index=1, size=(2, 2))
    assert torch.allclose(a[0, 0], torch.tensor([[1.0, 1.0], [1.0, 4.0]]))   # (1-1+3)/3, (2+0+1)/3, ...
    # bilinear up-sampling (align_corners=False) of a 1x2 map [0, 3] to 1x4: 0, 0.75, 2.25, 3
    g = torch.tensor([[[[0.0, 3.0]]]])
    up = spatial_attention([g], 0, size=(1, 4))
    assert torch.allclose(up[0, 0, 0], torch.tensor([0.0, 0.75, 2.25, 3.0]))


def test_spatial_attention_minmax_in_unit_interval():
    torch.manual_seed(0)
    f = torch.randn(3, 5, 4, 4) * 0.01 - 0.02
    a = spatial_attention([f], 0, size=(16, 16), norm="minmax")
    assert a.shape == (3, 1, 16, 16)
    assert a.min() >= 0 and a.max() <= 1
    for i in range(3):   # per sample: the extremes are reached
        assert a[i].min().item() == pytest.approx(0.0, abs=1e-6) and a[i].max().item() == pytest.approx(1.0, abs=1e-6)
    raw = spatial_attention([f], 0, size=(16, 16))
    assert raw.abs().max() < 0.1        # raw keeps the (small, signed) scale of the features
    with pytest.raises(ValueError, match="norm"):
        spatial_attention([f], 0, size=(4, 4), norm="softmax")


def test_r1_penalty_hand_computed_on_linear_case():
    # D(x) = sum_i w_i x_i per sample -> d D / d x = w for every sample, ||w||^2 = 1 + 4 + 9 + 16 = 30
    w = torch.tensor([1.0, -2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    x = torch.randn(3, 1, 2, 2, requires_grad=True)
    logits = (x * w).sum(dim=(1, 2, 3))
    r1 = r1_penalty(logits, x)
    assert r1.shape == (3,)
    assert torch.allclose(r1, torch.full((3,), 30.0))
    # quadratic case: D(x) = sum x^2 -> grad 2x, ||2x||^2 = 4 sum x^2
    y = torch.tensor([[[[1.0, 2.0]]]], requires_grad=True)
    assert r1_penalty((y**2).sum(dim=(1, 2, 3)), y).item() == pytest.approx(4 * 5)
    with pytest.raises(ValueError, match="requires grad|require grad"):
        r1_penalty(logits, torch.zeros(3, 1, 2, 2))


def test_logistic_loss_values():
    logits = torch.tensor([0.0, 2.0])
    assert d_logistic_loss(logits, real=True).item() == pytest.approx(
        (torch.log1p(torch.exp(torch.tensor(0.0))) + torch.log1p(torch.exp(torch.tensor(-2.0)))).item() / 2)
    assert d_logistic_loss(logits, real=False).item() == pytest.approx(
        (torch.log(torch.tensor(2.0)) + torch.log1p(torch.exp(torch.tensor(2.0)))).item() / 2)


def test_normal_init_of_convs():
    torch.manual_seed(0)
    d = TimeConditionedDiscriminator(ngf=16, channel_mults=(4, 8), t_emb_dim=16, init="normal")
    w = torch.cat([m.weight.flatten() for m in d.modules() if isinstance(m, nn.Conv2d)])
    assert w.std().item() == pytest.approx(0.02, rel=0.05) and abs(w.mean().item()) < 1e-3


# book/decisions.md (official classes): large D 27,736,705 (MoNuSeg, CXR), small D with ngf 64 12,462,849 (Hippocampus)
@pytest.mark.parametrize("dataset,label_ch,want", [("monuseg", 1, 27_736_705),  # CXR uses the same large D
                                                   ("hippocampus", 3, 12_462_849)])
def test_paper_discriminator_parameter_counts(dataset, label_ch, want):
    d = build_discriminator(CDALConfig.for_preset("paper", dataset), label_ch)
    assert d.num_parameters() == want                  # exact: the official classes give these counts
