"""Native 3-D cDAL: dimension-generic layers, G, D and A_D; the 2-D networks unchanged; a 3-D overfit test."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffseg_core.cdal import CDALConfig, CDALMethod, build_discriminator, build_generator, spatial_attention
from diffseg_core.cdal.discriminator import TimeConditionedDiscriminator
from diffseg_core.cdal.generator import ConditionalGenerator
from diffseg_core.cdal.labels import labels_to_x0, x0_to_probs
from diffseg_core.cdal.layers import avg_pool, conv_nd, fir_downsample, fir_kernel, fir_upsample
from diffseg_core.cdal.training import attention_map
from diffseg_core.data import DatasetInfo
from diffseg_core.data.synthetic import make_hippocampus_volume
from diffseg_core.methods import get_config
from diffseg_core.metrics import segmentation_scores
from diffseg_core.schedule import vp_schedule

HIPPO = DatasetInfo("synthetic-hippocampus", 1, 3, ("background", "anterior", "posterior"))


def tiny_g(spatial_dims: int, **kw) -> ConditionalGenerator:
    args = dict(label_channels=3, image_channels=1, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                image_size=16, nz=8, z_emb_dim=16, n_mlp=1, enc_blocks=1, resample="avg", spatial_dims=spatial_dims)
    args.update(kw)
    return ConditionalGenerator(**args)


def _perturb(net: torch.nn.Module, scale: float = 0.2) -> None:
    torch.manual_seed(123)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * scale)


# ---- layers -------------------------------------------------------------------------------------
def test_fir_kernel_3d_is_the_separable_product():
    k1 = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8.0
    k3 = fir_kernel(spatial_dims=3)
    assert k3.shape == (4, 4, 4)
    assert torch.allclose(k3, k1[:, None, None] * k1[None, :, None] * k1[None, None, :])
    assert torch.allclose(fir_kernel(), k1[:, None] * k1[None, :])        # 2-D unchanged
    assert conv_nd(2) is torch.nn.Conv2d and conv_nd(3) is torch.nn.Conv3d
    with pytest.raises(ValueError, match="spatial_dims"):
        conv_nd(4)


@pytest.mark.parametrize("fn", [fir_downsample, fir_upsample])
def test_fir_3d_on_a_volume_constant_along_depth_is_the_2d_filter(fn):
    """A volume constant along its first spatial axis: the 3-D separable filter acts as the 2-D filter on every
    slice (away from the padded ends of that axis)."""
    torch.manual_seed(0)
    img = torch.randn(1, 2, 8, 8)
    vol = img[:, :, None].expand(1, 2, 8, 8, 8).contiguous()
    out3, out2 = fn(vol), fn(img)
    mid = out3.shape[2] // 2
    assert out3.shape[3:] == out2.shape[2:]
    assert torch.allclose(out3[:, :, mid], out2, atol=1e-5)


def test_down_and_up_shapes_3d():
    x = torch.randn(2, 3, 8, 12, 16)
    assert fir_downsample(x).shape == (2, 3, 4, 6, 8) and avg_pool(x).shape == (2, 3, 4, 6, 8)
    assert fir_upsample(x).shape == (2, 3, 16, 24, 32)
    assert torch.allclose(avg_pool(x)[0, 0, 0, 0, 0], x[0, 0, :2, :2, :2].mean())


# ---- the 2-D networks keep their names; the 3-D ones are the same networks with one more axis -------
@pytest.mark.parametrize("dataset", ["monuseg", "cxr", "hippocampus"])
def test_3d_networks_have_the_2d_parameter_names_with_one_more_kernel_axis(dataset):
    cfg = CDALConfig.for_preset("smoke", dataset)
    cfg3 = CDALConfig.for_preset("smoke", dataset)
    cfg3.spatial_dims = 3
    for build in (lambda c: build_generator(c, 3, 1), lambda c: build_discriminator(c, 3)):
        s2, s3 = build(cfg).state_dict(), build(cfg3).state_dict()
        assert list(s2) == list(s3)
        for name in s2:
            a, b = tuple(s2[name].shape), tuple(s3[name].shape)
            if len(a) == 4:                                   # a conv kernel: (Cout, Cin, k, k) -> (..., k, k, k)
                assert b == a + (a[-1],), name
            else:
                assert a == b, name


def test_paper_parameter_counts_are_exact():
    """The 2-D parameter counts are unchanged by the generic layers (the authors' checkpoints load by name)."""
    counts = {}
    for ds, lc, ic in (("monuseg", 1, 3), ("cxr", 1, 1), ("hippocampus", 3, 1)):
        cfg = CDALConfig.for_preset("paper", ds)
        counts[ds] = (build_generator(cfg, lc, ic).num_parameters(), build_discriminator(cfg, lc).num_parameters())
    assert counts == {"monuseg": (41_666_753, 27_736_705), "cxr": (8_843_777, 27_736_705),
                      "hippocampus": (3_682_275, 12_462_849)}


# ---- G, D and A_D in 3-D --------------------------------------------------------------------------
def test_generator_3d_shapes_range_and_conditioning():
    torch.manual_seed(0)
    g = tiny_g(3)
    _perturb(g, 0.5)
    x, img, t = torch.randn(2, 3, 8, 16, 8), torch.randn(2, 1, 8, 16, 8), torch.tensor([0, 1])
    z1, z2 = torch.randn(2, 8), torch.randn(2, 8)
    out = g(x, t, img, z1)
    assert out.shape == (2, 3, 8, 16, 8) and out.abs().max() <= 1.0
    assert (g(x, t, img, z2) - out).abs().max() > 1e-3            # z matters
    assert (g(x, t, img + 1, z1) - out).abs().max() > 1e-3        # the image matters
    feats = g.encode(img)                                          # the encoder once, then reused
    assert feats.shape == (2, 8, 8, 16, 8)
    assert torch.allclose(g(x, t, image_features=feats, z=z1), out, atol=1e-6)


def test_generator_3d_errors_name_the_shape():
    g = tiny_g(3)
    with pytest.raises(ValueError, match="3 spatial axes"):
        g(torch.randn(1, 3, 16, 16), torch.tensor([0]), torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="divisible by 2"):
        g(torch.randn(1, 3, 8, 8, 9), torch.tensor([0]), torch.randn(1, 1, 8, 8, 9))
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        g.encode(torch.randn(1, 1, 8, 8))


def test_discriminator_3d_logits_stages_and_attention():
    torch.manual_seed(0)
    d = TimeConditionedDiscriminator(in_channels=6, ngf=4, channel_mults=(2, 4), t_emb_dim=16, resample="avg",
                                     spatial_dims=3)
    a, b = torch.randn(4, 3, 16, 16, 16), torch.randn(4, 3, 16, 16, 16)
    logits = d(a, b, torch.tensor([0, 1, 0, 1]))
    assert logits.shape == (4,)
    assert [tuple(f.shape[2:]) for f in d.feature_maps] == [(16, 16, 16), (8, 8, 8), (4, 4, 4)]
    assert d.stage_for_scale(4) == 2
    att = spatial_attention(d.feature_maps, 2, (16, 16, 16), "minmax")
    assert att.shape == (4, 1, 16, 16, 16) and float(att.min()) == 0.0 and abs(float(att.max()) - 1.0) < 1e-6
    # R1 needs a gradient w.r.t. the less-noisy volume
    a.requires_grad_(True)
    (g,) = torch.autograd.grad(d(a, b, torch.tensor([0, 1, 0, 1])).sum(), a)
    assert g.shape == a.shape and float(g.abs().sum()) > 0


def test_spatial_attention_3d_of_a_known_feature_map():
    """Channel mean of a known (1, 2, 2, 2, 2) map, up-sampled trilinearly (align_corners=False) to 4^3."""
    f = torch.zeros(1, 2, 2, 2, 2)
    f[0, 0, 1] = 4.0                                  # channel 0: 4 on the second depth plane
    f[0, 1, 1] = 2.0                                  # channel 1: 2 there -> mean 3 on that plane, 0 elsewhere
    a = spatial_attention([f], 0, (4, 4, 4), "raw")
    # along depth, align_corners=False maps output 0..3 to input -0.25, 0.25, 0.75, 1.25 (clamped): 0, .75, 2.25, 3
    assert torch.allclose(a[0, 0, :, 1, 2], torch.tensor([0.0, 0.75, 2.25, 3.0]))
    assert torch.allclose(a[0, 0, 2], torch.full((4, 4), 2.25))
    with pytest.raises(ValueError, match="does not match"):
        spatial_attention([f], 0, (4, 4), "raw")


def test_attention_map_and_labels_for_volumes():
    cfg = CDALConfig.for_preset("smoke", "hippocampus")
    cfg.spatial_dims = 3
    d = build_discriminator(cfg, 3)
    label = torch.randint(0, 3, (2, 16, 16, 16))
    x0 = labels_to_x0(label, 3)
    assert x0.shape == (2, 3, 16, 16, 16) and torch.equal(x0.argmax(1), label)
    att = attention_map(d, vp_schedule(2), x0, torch.tensor([0, 1]), cfg)
    assert att.shape == (2, 1, 16, 16, 16)
    probs = x0_to_probs(x0)
    assert probs.shape == (2, 3, 16, 16, 16) and torch.allclose(probs.sum(1), torch.ones(2, 16, 16, 16))


# ---- the method in 3-D --------------------------------------------------------------------------
def test_cli_options_and_presets_for_3d_and_ema():
    flags = {o.flag: o.field for o in CDALMethod.cli_options}
    assert flags["--spatial-dims"] == "spatial_dims" and flags["--ema-decay"] == "ema_decay"
    assert get_config("cdal", "hippocampus", "smoke", ema_decay=0.0).model["ema_decay"] == 0.0
    cfg = get_config("cdal", "hippocampus", "cpu", spatial_dims=3)
    assert cfg.model["spatial_dims"] == 3 and cfg.data.batch_size == 2       # patches, not slices
    assert get_config("cdal", "hippocampus", "cpu").data.batch_size == 32
    with pytest.raises(ValueError, match="spatial_dims"):
        get_config("cdal", "hippocampus", "smoke", spatial_dims=1)


def test_3d_method_refuses_2d_datasets():
    from diffseg_core.data import Case, DataError

    cfg = get_config("cdal", "cxr", "smoke", spatial_dims=3)
    m = CDALMethod(cfg, DatasetInfo("cxr", 1, 2, ("background", "lung")), torch.device("cpu"))
    cases = [Case("a", np.zeros((1, 32, 32), np.float32), np.zeros((32, 32), np.int64))]
    with pytest.raises(DataError, match="volume dataset"):
        next(iter(m.train_batches(cases, 0)))


def _two_patches(side: int = 16) -> dict[str, torch.Tensor]:
    imgs, labs = [], []
    for i in range(2):
        im, lb = make_hippocampus_volume(np.random.default_rng(i), shape=(20, 28, 20))
        centre = [int(np.clip(np.mean(a), side // 2, s - side // 2)) for a, s in zip(np.nonzero(lb), lb.shape)]
        sl = tuple(slice(c - side // 2, c + side // 2) for c in centre)
        imgs.append(im[sl][None])
        labs.append(lb[sl])
        assert set(np.unique(lb[sl])) == {0, 1, 2}
    return {"image": torch.from_numpy(np.stack(imgs)), "label": torch.from_numpy(np.stack(labs))}


def test_3d_cdal_overfits_two_patches():
    """Algorithm 1 in 3-D (D real + R1 + D fake, attention from D, G's MSE, the EMA) fits two 16^3 patches of
    synthetic volumes; Algorithm 2 (ensemble of T = 2 chains, EMA generator) then segments both classes."""
    torch.manual_seed(0)
    batch = _two_patches()
    cfg = get_config("cdal", "hippocampus", "smoke", seed=0, spatial_dims=3, ensemble=1, lr_g=2e-3, lr_d=1e-3)
    m = CDALMethod(cfg, HIPPO, torch.device("cpu"))
    assert "G_ema" in m.nets and m.model_cfg.ema_decay == 0.999
    mse = []
    for step in range(1, 81):
        m.train()
        logs = m.train_step(batch, step)
        mse.append(logs["mse"])
        assert ("r1" in logs) == (step % m.model_cfg.lazy_reg == 0)      # lazy R1 on the real volume pair
    assert np.mean(mse[-5:]) < 0.5 * np.mean(mse[:5])
    m.eval()
    probs = m.predict(batch["image"])
    assert probs.shape == (2, 3, 16, 16, 16) and torch.allclose(probs.sum(1), torch.ones(2, 16, 16, 16), atol=1e-5)
    s = segmentation_scores(list(probs.argmax(1).numpy()), list(batch["label"].numpy()), 3, HIPPO.class_names)
    dice = {k: v["dice_mean"] for k, v in s["per_class"].items()}
    assert min(dice.values()) >= 0.9, dice
