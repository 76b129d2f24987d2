"""Schedule tests against the table on the book's decisions page and independent closed forms."""
from __future__ import annotations

import math

import pytest
import torch

from diffseg_core.schedule import (ddpm_linear_schedule, posterior_mean_variance, q_sample, q_sample_pairs,
                                   sample_posterior, vp_schedule)

# book/decisions.md (reference numbers), measured from the official code, 4 significant digits
TABLE = {
    4: dict(betas="0.4783 0.8492 0.9564 0.9874", abar="0.5217 0.07868 0.003429 4.32e-5",
            post_var="0 0.4408 0.8842 0.9841", c1="1 0.6658 0.2692 0.0578", c2="0 0.2016 0.1930 0.1119"),
    2: dict(betas="0.9213 0.9995", abar="0.07868 4.32e-5", post_var="0 0.9209", c1="1 0.2804", c2="0 0.0216"),
}


def _close_printed(got, printed: str):
    """Equal to the numbers as printed on the book's decisions page: within half a unit of the last printed digit."""
    for g, text in zip(got, printed.split()):
        mant, _, exp = text.partition("e")
        decimals = len(mant.partition(".")[2])
        tol = 0.5 * 10 ** (-decimals + (int(exp) if exp else 0)) if "." in mant else 1e-6  # "0", "1": exact
        assert abs(g - float(text)) <= tol + 1e-12, (got, printed)


@pytest.mark.parametrize("T", [4, 2])
def test_vp_schedule_matches_official_table(T):
    s = vp_schedule(T)
    want = TABLE[T]
    assert s.T == T and s.betas.shape == (T + 1,) and s.posterior_variance.shape == (T,)
    assert s.betas[0].item() == pytest.approx(1e-8)
    _close_printed(s.betas[1:].tolist(), want["betas"])
    _close_printed(s.alphas_cumprod[1:].tolist(), want["abar"])
    _close_printed(s.posterior_variance.tolist(), want["post_var"])
    _close_printed(s.posterior_coef_x0.tolist(), want["c1"])
    _close_printed(s.posterior_coef_xt.tolist(), want["c2"])
    assert s.posterior_log_variance_clipped[0].item() == pytest.approx(math.log(1e-20))


def test_vp_closed_form_abar():
    # abar_k = abar(tau_k) / abar(tau_0) with abar(tau) = exp(-0.5 tau^2 (20 - 0.1) - 0.1 tau)
    s = vp_schedule(4)
    f = lambda tau: math.exp(-0.5 * tau**2 * 19.9 - 0.1 * tau)  # noqa: E731
    taus = [1e-3 + (1 - 1e-3) * k / 4 for k in range(5)]
    for k in range(1, 5):
        assert s.alphas_cumprod[k].item() == pytest.approx(f(taus[k]) / f(taus[0]) * (1 - 1e-8), rel=1e-4)


def test_ddpm_linear_schedule_segdiff_defaults():
    s = ddpm_linear_schedule(100)
    assert s.betas[1].item() == pytest.approx(1e-3) and s.betas[-1].item() == pytest.approx(0.2)
    assert s.alphas_cumprod[-1].item() < 1e-3  # nearly pure noise at the end


def test_posterior_at_code_time_zero_returns_x0():
    s = vp_schedule(4)
    x0 = torch.rand(3, 1, 5, 5) * 2 - 1
    x1 = torch.randn(3, 1, 5, 5)
    t = torch.zeros(3, dtype=torch.long)
    out = sample_posterior(s, x0, x1, t, noise=torch.randn_like(x0) * 100)
    assert torch.allclose(out, x0, atol=1e-6)


def test_q_sample_mean_and_variance_monte_carlo():
    torch.manual_seed(0)
    s = vp_schedule(4)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.7)
    for level in (1, 2, 4):
        x = q_sample(s, x0, torch.full((n,), level, dtype=torch.long))
        abar = s.alphas_cumprod[level].item()
        assert x.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=0.01)   # sqrt(abar) x0 (closed-form forward process, unnumbered in cDAL)
        assert x.var().item() == pytest.approx(1 - abar, abs=0.01)                  # 1 - abar, not (1-abar)^2


def test_q_sample_pairs_marginal_of_more_noisy_member():
    torch.manual_seed(1)
    s = vp_schedule(4)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), -0.5)
    t = torch.full((n,), 1, dtype=torch.long)
    x_t, x_tp1 = q_sample_pairs(s, x0, t)
    a2 = s.alphas_cumprod[2].item()
    assert x_tp1.mean().item() == pytest.approx(math.sqrt(a2) * -0.5, abs=0.01)
    assert x_tp1.var().item() == pytest.approx(1 - a2, abs=0.01)
    # correlation of the pair: cov(x_t, x_tp1) = sqrt(1 - beta_2) var(x_t)
    cov = ((x_t - x_t.mean()) * (x_tp1 - x_tp1.mean())).mean().item()
    assert cov == pytest.approx(math.sqrt(1 - s.betas[2].item()) * (1 - s.alphas_cumprod[1].item()), abs=0.01)


@pytest.mark.parametrize("T,t", [(4, 1), (4, 3), (2, 1)])
def test_posterior_matches_gaussian_product(T, t):
    """q(x_t | x_{t+1}, x0) ∝ q(x_{t+1} | x_t) q(x_t | x0): product of two Gaussians in x_t, computed here."""
    s = vp_schedule(T)
    betas = s.betas.double()
    abar_prev = torch.prod(1 - betas[1:t + 1]).item()          # level t, betas 1..t (no dummy)
    beta = betas[t + 1].item()
    x0, x1 = 0.3, -1.2
    # prior q(x_t|x0) = N(sqrt(abar_prev) x0, 1 - abar_prev); likelihood in x_t: N(x1 / sqrt(1-beta), beta/(1-beta))
    p_mean, p_var = math.sqrt(abar_prev) * x0, 1 - abar_prev
    l_mean, l_var = x1 / math.sqrt(1 - beta), beta / (1 - beta)
    var = 1 / (1 / p_var + 1 / l_var)
    mean = var * (p_mean / p_var + l_mean / l_var)
    m, v, _ = posterior_mean_variance(s, torch.tensor([[[[x0]]]]), torch.tensor([[[[x1]]]]), torch.tensor([t]))
    assert m.item() == pytest.approx(mean, rel=1e-4, abs=1e-5)
    assert v.item() == pytest.approx(var, rel=1e-4)


def test_bad_inputs_raise_clear_errors():
    s = vp_schedule(2)
    with pytest.raises(ValueError, match="code time"):
        q_sample_pairs(s, torch.zeros(1, 1, 2, 2), torch.tensor([2]))
    with pytest.raises(TypeError, match="integers"):
        q_sample(s, torch.zeros(1, 1, 2, 2), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="T must be"):
        vp_schedule(0)
