"""Algorithms 1-2 of cDAL and the SegDiff-style baseline, pinned step by step.

Stub networks record what they are given; every check compares the recording with an expectation computed
here, independently, from the schedule's tables (DDPM Eq. 2, 4 and 6-7; cDAL Eq. 2-4). Each test names the
wrong algorithm it rules out. The last tests show that both methods *learn*: two small images are fitted to
Dice >= 0.9 in seconds (the 3-D variant's overfit test is in ``tests/test_cdal3d.py``).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffseg_core.cdal import CDALConfig, CDALMethod, d_step, g_step, labels_to_x0, sample_cdal
from diffseg_core.data import DatasetInfo
from diffseg_core.methods import get_config
from diffseg_core.metrics import segmentation_scores
from diffseg_core.schedule import ddpm_linear_schedule, vp_schedule
from diffseg_core.segdiff import SegDiffMethod, eps_loss, predict_x0_from_eps, sample_segdiff

SIZE = 32
#: a schedule with four clearly different noise levels (abar ~ 0.95, 0.87, 0.74, 0.58), so a check of "which
#: level, which x0" has signal at every code time (the paper's VP schedule is almost pure noise at t = 3)
SCHED = vp_schedule(4, beta_min=0.1, beta_max=1.0)
SA, SOM = SCHED.sqrt_alphas_cumprod, SCHED.sqrt_one_minus_alphas_cumprod     # marginal mean factor and std
CFG = dataclasses.replace(CDALConfig.for_preset("smoke", "monuseg"), timesteps=4, r1_gamma=2.0, lazy_reg=1)


class StubG(nn.Module):
    """x0_hat = tanh(v) (one learnable map, the same for every sample); records x, t, image and z of each call."""

    label_channels, nz = 1, 5

    def __init__(self, size: int = SIZE) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.v = nn.Parameter(torch.randn(1, 1, size, size) * 0.5)
        self.calls: list[dict] = []

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def forward(self, x, t, image=None, z=None, image_features=None):
        cond = image if image is not None else image_features
        self.calls.append({"x": x.detach().clone(), "t": t.clone(), "image": cond.detach().clone(),
                           "z": None if z is None else z.clone()})
        return torch.tanh(self.v).expand_as(x)


class StubD(nn.Module):
    """A linear discriminator, logit = <w_less, x_less> + <w_more, x_more> per sample, with a known feature map.

    Its only stage is a fixed (1, 2, 4, 4) map whose channel mean, bilinearly up-sampled, is A_D."""

    def __init__(self, size: int = SIZE) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.w_less = nn.Parameter(torch.randn(1, 1, size, size, generator=g) * 0.05)
        self.w_more = nn.Parameter(torch.randn(1, 1, size, size, generator=g) * 0.15)   # a different norm
        self.feat = 0.2 + 0.4 * torch.rand(1, 2, 4, 4, generator=g)                       # A_D in [0.2, 0.6]
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.feature_calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x_less, x_more, t):
        self.calls.append((x_less.detach().clone(), x_more.detach().clone(), t.clone()))
        return (self.w_less * x_less).sum((1, 2, 3)) + (self.w_more * x_more).sum((1, 2, 3))

    def features(self, x_less, x_more, t):
        self.feature_calls.append((x_less.clone(), x_more.clone(), t.clone()))
        return [self.feat.expand(x_less.shape[0], -1, -1, -1)]

    def stage_for_scale(self, scale: int) -> int:
        return 0

    def expected_attention(self, size: int = SIZE) -> torch.Tensor:
        return F.interpolate(self.feat.mean(1, keepdim=True), size=(size, size), mode="bilinear", align_corners=False)


def _labels(b: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return labels_to_x0(torch.randint(0, 2, (b, SIZE, SIZE), generator=g), 2)


def _image(b: int = 8) -> torch.Tensor:
    return torch.randn(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))


def _level_residual_ok(x: torch.Tensor, mean: torch.Tensor, std: float) -> bool:
    """x (C, H, W) looks like mean + std * N(0, I): the residual's std within 4 standard errors of ``std`` and
    its correlation with sign(mean) within 4 standard errors of 0 (a wrong mean leaves a correlated residual)."""
    r = x - mean
    if std < 1e-6:
        return bool(r.abs().max() < 1e-5)
    se = 1.0 / r.numel() ** 0.5
    ok_std = abs(float(r.std()) / std - 1.0) < 4 * se / 2**0.5
    return ok_std and abs(float((r / std * mean.sign()).mean())) < 4 * se


# ---- Algorithm 1, D step -------------------------------------------------------------------------
def test_d_step_real_pair_fake_pair_r1_and_update():
    """Rules out: a real pair not drawn from x0 at levels (t, t+1); G fed anything but the real x_{t+1};
    D's fake pair holding x0_hat instead of a posterior sample q(x_t | x_{t+1}, x0_hat); R1 taken on x_{t+1}
    (or not at all); a D update that is not the gradient of softplus(-real) + gamma/2 R1 + softplus(fake)."""
    G, D = StubG(), StubD()
    x0, img = _labels(), _image()
    torch.manual_seed(11)
    w_less0, w_more0 = D.w_less.detach().clone(), D.w_more.detach().clone()
    lr = 0.1
    logs = d_step(G, D, SCHED, x0, img, CFG, step=1, opt_d=torch.optim.SGD(D.parameters(), lr=lr))
    (x_t, x_tp1, t), (x_fake, x_cond, t_fake) = D.calls
    assert len(G.calls) == 1 and torch.equal(t_fake, t) and torch.equal(G.calls[0]["t"], t)
    assert len(set(t.tolist())) > 1 and (t > 0).any() and (t == 0).any(), t   # the fixed seed covers t = 0 and t > 0
    betas = SCHED.betas
    for b in range(x0.shape[0]):
        k = int(t[b])
        # real pair: x_t ~ q(x_t | x0) (DDPM Eq. 4), x_{t+1} = sqrt(1 - beta) x_t + sqrt(beta) eps' (DDPM Eq. 2)
        assert _level_residual_ok(x_t[b], SA[k] * x0[b], float(SOM[k])), (b, k)
        assert _level_residual_ok(x_tp1[b], (1 - betas[k + 1]).sqrt() * x_t[b], float(betas[k + 1].sqrt())), (b, k)
        # fake pair: x_t_hat ~ q(x_t | x_{t+1}, x0_hat) (cDAL Eq. 2), conditioned on the same x_{t+1}
        x0_hat = torch.tanh(G.v.detach())[0]
        mean = SCHED.posterior_coef_x0[k] * x0_hat + SCHED.posterior_coef_xt[k] * x_tp1[b]
        assert _level_residual_ok(x_fake[b], mean, float(SCHED.posterior_variance[k].sqrt())), (b, k)
        if k > 0:
            assert not torch.allclose(x_fake[b], x0_hat, atol=1e-2)
    assert torch.equal(x_cond, x_tp1) and torch.equal(G.calls[0]["x"], x_tp1) and torch.equal(G.calls[0]["image"], img)
    assert G.calls[0]["z"].shape == (8, StubG.nz)
    # R1 on the less-noisy real input: d logit / d x_t = w_less for every sample
    assert logs["r1"] == pytest.approx(CFG.r1_gamma / 2 * float((w_less0**2).sum()), rel=1e-5)
    # the update: one SGD step on the three terms, recomputed from the recorded inputs
    wl, wm = w_less0.clone().requires_grad_(True), w_more0.clone().requires_grad_(True)
    real = (wl * x_t).sum((1, 2, 3)) + (wm * x_tp1).sum((1, 2, 3))
    fake = (wl * x_fake).sum((1, 2, 3)) + (wm * x_tp1).sum((1, 2, 3))
    loss = F.softplus(-real).mean() + CFG.r1_gamma / 2 * (wl**2).sum() + F.softplus(fake).mean()
    gl, gm = torch.autograd.grad(loss, (wl, wm))
    assert torch.allclose(D.w_less.detach(), w_less0 - lr * gl, atol=1e-6)
    assert torch.allclose(D.w_more.detach(), w_more0 - lr * gm, atol=1e-6)
    assert logs["d_real"] == pytest.approx(float(F.softplus(-real).mean().detach()), rel=1e-5)
    assert logs["d_fake"] == pytest.approx(float(F.softplus(fake).mean().detach()), rel=1e-5)
    assert G.v.grad is None                                                    # G untouched by the D step


def test_lazy_r1_only_on_its_steps():
    G, D = StubG(), StubD()
    cfg = dataclasses.replace(CFG, lazy_reg=3)
    opt = torch.optim.SGD(D.parameters(), lr=0.0)
    assert ["r1" in d_step(G, D, SCHED, _labels(), _image(), cfg, step=s, opt_d=opt) for s in range(1, 7)] == \
        [False, False, True, False, False, True]


# ---- Algorithm 1, G step -------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["raw", "minmax"])
def test_g_step_input_is_noised_attention_weighted_label_and_target_is_x0(norm):
    """Rules out: A_D not the channel mean of D's features on a real pair from x0 at G's code time; G fed the
    noised x0 (or a level other than t+1) instead of the noised A_D * x0; the MSE target A_D * x0 instead of x0."""
    G, D = StubG(), StubD()
    x0, img = _labels(), _image()
    cfg = dataclasses.replace(CFG, attn_norm=norm)
    v0, lr = G.v.detach().clone(), 0.5
    torch.manual_seed(12)
    out = g_step(G, D, SCHED, x0, img, cfg, torch.optim.SGD(G.parameters(), lr=lr))
    (call,) = G.calls
    ((fx_less, fx_more, ft),) = D.feature_calls
    t, x_in = call["t"], call["x"]
    assert torch.equal(ft, t) and len(set(t.tolist())) >= 3
    att = D.expected_attention()
    if norm == "minmax":
        att = (att - att.amin()) / (att.amax() - att.amin())
    assert torch.allclose(out["attention"], att.expand(8, -1, -1, -1), atol=1e-6)
    x0_att = att * x0
    betas = SCHED.betas
    for b in range(8):
        k = int(t[b])
        # A_D's real pair is drawn from the plain x0 (not from A_D * x0)
        assert _level_residual_ok(fx_less[b], SA[k] * x0[b], float(SOM[k])), (b, k)
        # G's input: x_{t+1} of a pair drawn from A_D * x0, i.e. ~ N(sqrt(abar_{t+1}) A_D x0, 1 - abar_{t+1})
        assert _level_residual_ok(x_in[b], SA[k + 1] * x0_att[b], float(SOM[k + 1])), (b, k)
    assert call["z"].shape == (8, StubG.nz) and torch.equal(call["image"], img)
    # the loss is the MSE against the un-weighted x0 (cDAL Eq. 4): check the value and the SGD update
    pred = torch.tanh(v0)
    assert out["mse"] == pytest.approx(float(((pred - x0) ** 2).mean()), rel=1e-5)
    assert out["mse"] != pytest.approx(float(((pred - x0_att) ** 2).mean()), rel=1e-2)
    v = v0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(((torch.tanh(v) - x0) ** 2).mean(), v)
    assert torch.allclose(G.v.detach(), v0 - lr * grad, atol=1e-6)
    assert D.w_less.grad is None and D.w_more.grad is None                    # D untouched by the G step


def test_without_attention_g_sees_the_noised_x0():
    """The "w/o attention" ablation: A_D = 1, so G's input is the plain noised label (D is not consulted)."""
    G = StubG()
    x0 = _labels()
    torch.manual_seed(13)
    g_step(G, None, SCHED, x0, _image(), dataclasses.replace(CFG, use_attention=False), torch.optim.SGD(G.parameters(), lr=0.0))
    t, x_in = G.calls[0]["t"], G.calls[0]["x"]
    for b in range(8):
        k = int(t[b])
        assert _level_residual_ok(x_in[b], SA[k + 1] * x0[b],
                                  float(SOM[k + 1]))


def test_fresh_latent_for_every_forward_pass_in_training():
    """A new z ~ N(0, I) for the D step's fake and for the G step; none (z = 0) in the "w/o latent" ablation."""
    G, D = StubG(), StubD()
    x0, img = _labels(), _image()
    d_step(G, D, SCHED, x0, img, CFG, 1, torch.optim.SGD(D.parameters(), lr=0.0))
    g_step(G, D, SCHED, x0, img, CFG, torch.optim.SGD(G.parameters(), lr=0.0))
    z1, z2 = G.calls[0]["z"], G.calls[1]["z"]
    assert not torch.allclose(z1, z2) and len(torch.unique(z1[:, 0])) == 8
    nolat = dataclasses.replace(CFG, use_latent=False)
    d_step(G, D, SCHED, x0, img, nolat, 1, torch.optim.SGD(D.parameters(), lr=0.0))
    g_step(G, D, SCHED, x0, img, nolat, torch.optim.SGD(G.parameters(), lr=0.0))
    assert G.calls[2]["z"] is None and G.calls[3]["z"] is None


# ---- Algorithm 2 ----------------------------------------------------------------------------------
def test_sampler_chain_posterior_steps_and_a_latent_per_step():
    """Rules out: steps in the wrong order; a reverse step other than the posterior q(x_t | x_{t+1}, G(.)) with
    no noise at t = 0; one z per chain (or per batch) instead of a fresh z per step and member (cDAL Eq. 3)."""
    G = StubG(32)
    n, b = 4, 2
    img = torch.randn(b, 3, 32, 32)
    r = sample_cdal(G, SCHED, img, n_samples=n)
    assert [int(c["t"][0]) for c in G.calls] == [3, 2, 1, 0] and all(len(set(c["t"].tolist())) == 1 for c in G.calls)
    assert r["nfe"] == n * 4
    x0_hat = torch.tanh(G.v.detach())[0]
    first = G.calls[0]["x"]
    assert first.shape == (n * b, 1, 32, 32) and abs(float(first.std()) - 1.0) < 0.1 and abs(float(first.mean())) < 0.1
    for prev, nxt in zip(G.calls[:-1], G.calls[1:]):
        k = int(prev["t"][0])
        for i in range(n * b):
            mean = SCHED.posterior_coef_x0[k] * x0_hat + SCHED.posterior_coef_xt[k] * prev["x"][i]
            assert _level_residual_ok(nxt["x"][i], mean, float(SCHED.posterior_variance[k].sqrt())), (k, i)
    # the output is the last x0 prediction (no noise at code time 0), mapped to [0, 1]
    assert torch.allclose(r["samples"], ((x0_hat + 1) / 2).expand(n, b, 1, 32, 32), atol=1e-6)
    # conditioning: every member sees its own image (member-major repeat)
    assert all(torch.equal(c["image"], img.repeat(n, 1, 1, 1)) for c in G.calls)
    # a fresh z per step and per member
    zs = torch.stack([c["z"] for c in G.calls])                               # (T, N*B, nz)
    assert zs.shape == (4, n * b, StubG.nz)
    flat = zs.reshape(-1, StubG.nz)
    assert len(torch.unique(flat[:, 0])) == flat.shape[0]
    assert abs(float(flat.std()) - 1.0) < 0.25
    G.calls.clear()
    sample_cdal(G, SCHED, img, n_samples=n, use_latent=False)
    assert all(c["z"] is None for c in G.calls)


def test_ensemble_members_differ_with_a_latent_dependent_generator():
    """With G's output driven by z, the members differ by O(1) (not 1e-11): the ensemble variance is a real spread."""

    class ZG(StubG):
        def forward(self, x, t, image=None, z=None, image_features=None):
            super().forward(x, t, image, z, image_features)
            return torch.tanh(z[:, :1, None, None].expand_as(x) * 3)

    r = sample_cdal(ZG(8), SCHED, torch.randn(2, 3, 8, 8), n_samples=5)
    assert float(r["variance"].mean()) > 0.05


# ---- SegDiff-style baseline -------------------------------------------------------------------------
def test_segdiff_eps_objective_pins_input_and_target():
    """G sees x at level t+1 = sqrt(abar) x0 + sqrt(1 - abar) eps (DDPM Eq. 4) with code time t and z = 0, and
    the loss is the MSE to eps itself (DDPM Eq. 14)."""
    sched = ddpm_linear_schedule(100)
    G = StubG()
    x0 = _labels(4)
    t = torch.tensor([0, 17, 58, 99])
    eps = torch.randn_like(x0)
    out = eps_loss(G, sched, x0, _image(4), t=t, noise=eps)
    (call,) = G.calls
    want = sched.alphas_cumprod[t + 1].sqrt().view(-1, 1, 1, 1) * x0 + (1 - sched.alphas_cumprod[t + 1]).sqrt().view(-1, 1, 1, 1) * eps
    assert torch.allclose(call["x"], want, atol=1e-6) and torch.equal(call["t"], t) and call["z"] is None
    assert float(out["loss"].detach()) == pytest.approx(float(((torch.tanh(G.v.detach()) - eps) ** 2).mean()), rel=1e-5)
    # predict_x0_from_eps inverts the forward marginal exactly
    assert torch.allclose(predict_x0_from_eps(sched, want, t + 1, eps), x0, atol=1e-4)


def test_segdiff_posterior_through_x0_is_ddpm_mean():
    """Plugging x0(eps) into the posterior mean gives DDPM's 1/sqrt(alpha) (x_k - beta / sqrt(1 - abar) eps)."""
    sched = ddpm_linear_schedule(100)
    x_k, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([5, 40, 99])
    k = t + 1
    x0 = predict_x0_from_eps(sched, x_k, k, eps)
    mean = sched.posterior_coef_x0[t].view(-1, 1, 1, 1) * x0 + sched.posterior_coef_xt[t].view(-1, 1, 1, 1) * x_k
    beta, abar = sched.betas[k].view(-1, 1, 1, 1), sched.alphas_cumprod[k].view(-1, 1, 1, 1)
    assert torch.allclose(mean, (x_k - beta / (1 - abar).sqrt() * eps) / (1 - beta).sqrt(), atol=1e-4)


def test_segdiff_sampler_with_an_oracle_noise_predictor_returns_x0():
    """A network that returns the true noise of a known x0 makes every step's x0_hat = x0: after T = 100 steps
    (t = 99..0, one evaluation each per member, z = 0) the samples are x0 exactly."""
    sched = ddpm_linear_schedule(100)
    target = _labels(2)[:, :, :16, :16]

    class Oracle(StubG):
        def forward(self, x, t, image=None, z=None, image_features=None):
            super().forward(x, t, image, z, image_features)
            lv = t + 1
            x0 = target.repeat(x.shape[0] // target.shape[0], 1, 1, 1)
            a = sched.alphas_cumprod[lv].view(-1, 1, 1, 1)
            return (x - a.sqrt() * x0) / (1 - a).sqrt()

    G = Oracle(16)
    r = sample_segdiff(G, sched, torch.randn(2, 3, 16, 16), n_samples=3)
    assert r["nfe"] == 300 and [int(c["t"][0]) for c in G.calls] == list(range(99, -1, -1))
    assert all(c["z"] is None for c in G.calls)
    assert torch.allclose(r["samples"], ((target + 1) / 2).expand(3, 2, 1, 16, 16), atol=1e-4)
    assert torch.equal(r["mask"], (target[:, 0] > 0).long())


# ---- they learn: two images fitted in seconds ----------------------------------------------------------
def _two_images(size: int = 32) -> dict[str, torch.Tensor]:
    """Two RGB images with two discs each; the label is the discs (the image tells where they are)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = []
    for centres in (((9, 10), (22, 20)), ((20, 8), (10, 23))):
        m = torch.zeros(size, size, dtype=torch.long)
        for cy, cx in centres:
            m[(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = 1
        labels.append(m)
    label = torch.stack(labels)
    g = torch.Generator().manual_seed(0)
    image = (0.25 + 0.5 * label[:, None].float().expand(-1, 3, -1, -1) + 0.05 * torch.randn(2, 3, size, size, generator=g)).clamp(0, 1)
    return {"image": image, "label": label}


def _dice(method, batch) -> float:
    method.eval()
    pred = method.predict(batch["image"]).argmax(1)
    s = segmentation_scores(list(pred.numpy()), list(batch["label"].numpy()), 2, ("background", "disc"))
    return float(s["per_class"]["disc"]["dice_mean"])


INFO = DatasetInfo("synthetic", 3, 2, ("background", "disc"))


def test_cdal_fits_two_images():
    """Algorithm 1 (D with R1, A_D from D, G's MSE) then Algorithm 2 (T = 4, 2 members): Dice >= 0.9 on both."""
    torch.manual_seed(0)
    batch = _two_images()
    m = CDALMethod(get_config("cdal", "synthetic", "smoke", seed=0, lr_g=2e-3), INFO, torch.device("cpu"))
    mse = []
    for step in range(1, 121):
        m.train()
        mse.append(m.train_step(batch, step)["mse"])
    assert np.mean(mse[-5:]) < 0.3 * np.mean(mse[:5])
    assert _dice(m, batch) >= 0.9


def test_segdiff_fits_two_images():
    """Epsilon objective, then 100-step ancestral sampling (2 members): Dice >= 0.9 on both images."""
    torch.manual_seed(0)
    batch = _two_images()
    m = SegDiffMethod(get_config("segdiff", "synthetic", "smoke", seed=0, lr=2e-3), INFO, torch.device("cpu"))
    assert m.sched.T == 100 and m.nets["G"].out_activation == "none"
    for step in range(1, 201):
        m.train()
        m.train_step(batch, step)
    assert _dice(m, batch) >= 0.9
