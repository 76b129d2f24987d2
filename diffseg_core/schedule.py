"""Noise schedules, the forward process and the DDPM posterior (book/decisions.md; chapter 03).

Time indexing (book/decisions.md, decision D13)
--------------------------------------------
We keep the official code's indexing, which is off by one from the paper:

* there are T+1 noise **levels** k = 0..T; level 0 is (almost) clean data, level T (almost) pure noise;
* a training/sampling **code time** ``t`` is an integer in 0..T-1 and names the pair
  (x at level t, x at level t+1). In the paper's notation that pair is (x_{t-1}, x_t) with
  **paper t = code_t + 1**;
* the generator and the discriminator both receive the integer code_t as their time input;
* sampling runs code_t = T-1, ..., 0, turning level t+1 into level t.

Equations and where the papers number them
------------------------------------------
cDAL (MICCAI 2024) numbers four equations: (1) the reverse joint, (2) p_theta(x_{t-1} | x_t) defined
through the posterior q(x_{t-1} | x_t, x_0 = G(x_t, t, I, z)), (3) the marginal of that step over the
latent z, (4) the MSE objective. It states the forward process **without a number**; the closed forms
below are DDPM's (Ho et al. 2020, Eq. 2, 4 and 6-7). TextDiff numbers the forward step as its Eq. 1.

* forward step (DDPM Eq. 2, TextDiff Eq. 1): q(x_k | x_{k-1}) = N( sqrt(1 - beta_k) x_{k-1}, beta_k I ).
* marginal (DDPM Eq. 4; unnumbered in cDAL): q(x_k | x_0) = N( sqrt(abar_k) x_0, (1 - abar_k) I ),
  abar_k = prod_{j<=k} (1 - beta_j). cDAL prints the noise coefficient as (1 - abar); that is a typo (D11):
  the standard deviation is sqrt(1 - abar), which is what the code and this module use.
* posterior (DDPM Eq. 6-7; inside cDAL Eq. 2): q(x_{k-1} | x_k, x_0) = N( c1 x_0 + c2 x_k, beta~_k I ) with
  c1 = beta_k sqrt(abar_{k-1}) / (1 - abar_k),  c2 = (1 - abar_{k-1}) sqrt(1 - beta_k) / (1 - abar_k),
  beta~_k = beta_k (1 - abar_{k-1}) / (1 - abar_k).
  In code time the posterior for ``t`` is that of level k = t + 1, so c1(t=0) = 1, c2(t=0) = 0 and
  beta~(t=0) = 0: the last sampling step returns the generator's x0 prediction exactly.

Schedules
---------
* :func:`vp_schedule`: the discretised VP-SDE of DDGAN that cDAL uses for every dataset (D12):
  tau_k = eps + (1 - eps) k / T, abar(tau) = exp(-0.5 tau^2 (beta_max - beta_min) - tau beta_min),
  beta_k = 1 - abar(tau_k) / abar(tau_{k-1}); a dummy beta_0 = 1e-8 is prepended, so level 0 is x0 up to
  a 1e-8 variance.
* :func:`ddpm_linear_schedule`: the DDPM linear schedule (SegDiff: T = 100, beta 1e-3 -> 0.2), used only for
  the many-step sampling comparison (``benchmarks/sampling.py``).

All tables are float32 tensors on the CPU; :meth:`Schedule.to` moves them. Every function here is pure.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

__all__ = [
    "Schedule", "vp_schedule", "linear_betas", "ddpm_linear_schedule", "extract", "q_sample", "q_sample_pairs",
    "posterior_mean_variance", "sample_posterior",
]

DUMMY_BETA0 = 1e-8


@dataclass(frozen=True)
class Schedule:
    """Precomputed tables of a T-step schedule.

    Over the T+1 levels 0..T (index = level):

    * ``betas`` (T+1,): beta_k, with the dummy beta_0 = 1e-8;
    * ``alphas_cumprod`` (T+1,): abar_k = prod_{j<=k} (1 - beta_j) (the marginal, DDPM Eq. 4);
    * ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod`` (T+1,): the marginal's mean factor and std.

    Over the T code times 0..T-1 (index = code_t, i.e. level code_t + 1 -> level code_t; the posterior):

    * ``posterior_coef_x0`` (T,) c1, ``posterior_coef_xt`` (T,) c2;
    * ``posterior_variance`` (T,) beta~ and ``posterior_log_variance_clipped`` (T,) log(max(beta~, 1e-20)).
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    posterior_coef_x0: torch.Tensor
    posterior_coef_xt: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    name: str = "vp"

    @property
    def T(self) -> int:
        """Number of diffusion steps (levels 1..T)."""
        return int(self.betas.shape[0]) - 1

    def to(self, device: torch.device | str) -> "Schedule":
        """A copy with every table on ``device``."""
        return Schedule(**{f.name: (getattr(self, f.name).to(device) if torch.is_tensor(getattr(self, f.name))
                                    else getattr(self, f.name)) for f in fields(self)})

    def table(self) -> list[dict[str, float]]:
        """The schedule as rows (one per code time), handy for printing in the notebooks."""
        return [{"code_t": t, "paper_t": t + 1, "beta": float(self.betas[t + 1]),
                 "abar_less_noisy": float(self.alphas_cumprod[t]), "abar_more_noisy": float(self.alphas_cumprod[t + 1]),
                 "posterior_var": float(self.posterior_variance[t]), "coef_x0": float(self.posterior_coef_x0[t]),
                 "coef_xt": float(self.posterior_coef_xt[t])} for t in range(self.T)]


def _from_betas(betas_1_to_T: torch.Tensor, name: str) -> Schedule:
    """Build every table from beta_1..beta_T (float64 in, float32 out)."""
    b = betas_1_to_T.double()
    if b.ndim != 1 or b.numel() < 1:
        raise ValueError(f"schedule {name}: need a 1-D tensor of T >= 1 betas, got shape {tuple(b.shape)}")
    if not bool(((b > 0) & (b < 1)).all()):
        raise ValueError(f"schedule {name}: every beta must lie in (0, 1), got {b.tolist()}")
    betas = torch.cat([torch.tensor([DUMMY_BETA0], dtype=torch.float64), b])        # (T+1,)
    abar = torch.cumprod(1.0 - betas, 0)                                              # abar_k (marginal)
    # posterior of level k = t+1 given level k and x0 (posterior); official code builds it on betas 1..T only
    abar_post = torch.cumprod(1.0 - b, 0)                                             # abar over betas 1..T
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar_post[:-1]])
    var = b * (1.0 - abar_prev) / (1.0 - abar_post)                                   # beta~ = beta (1-abar_prev)/(1-abar)
    c1 = b * torch.sqrt(abar_prev) / (1.0 - abar_post)                                # coefficient on x0
    c2 = (1.0 - abar_prev) * torch.sqrt(1.0 - b) / (1.0 - abar_post)                  # coefficient on x_k
    f = lambda x: x.float()  # noqa: E731
    return Schedule(
        betas=f(betas), alphas_cumprod=f(abar), sqrt_alphas_cumprod=f(abar.sqrt()),
        sqrt_one_minus_alphas_cumprod=f((1.0 - abar).clamp_min(0).sqrt()),
        posterior_coef_x0=f(c1), posterior_coef_xt=f(c2), posterior_variance=f(var),
        posterior_log_variance_clipped=f(torch.log(var.clamp(min=1e-20))), name=name,
    )


def vp_schedule(T: int, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-3) -> Schedule:
    """The discretised VP-SDE schedule of DDGAN/cDAL (book/decisions.md).

    ``tau_k = eps + (1 - eps) k / T`` for k = 0..T,
    ``abar(tau) = exp(-0.5 tau^2 (beta_max - beta_min) - tau beta_min)``,
    ``beta_k = 1 - abar(tau_k) / abar(tau_{k-1})``. With T = 4 the betas are 0.4783, 0.8492, 0.9564, 0.9874.
    """
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"vp_schedule: T must be a positive integer, got {T!r}")
    if not 0 < beta_min < beta_max:
        raise ValueError(f"vp_schedule: need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
    tau = eps + (1.0 - eps) * torch.arange(T + 1, dtype=torch.float64) / T
    log_abar = -0.5 * tau**2 * (beta_max - beta_min) - tau * beta_min               # log abar(tau)
    betas = 1.0 - torch.exp(log_abar[1:] - log_abar[:-1])                              # beta_k, k = 1..T
    return _from_betas(betas, name=f"vp(T={T})")


def linear_betas(T: int, beta_start: float | None = None, beta_end: float | None = None) -> torch.Tensor:
    """DDPM's linear betas ``linspace(beta_start, beta_end, T)`` (float64, ``(T,)``: beta_1..beta_T).

    Defaults follow improved-diffusion/SegDiff: the 1000-step 1e-4 -> 0.02 schedule rescaled by 1000/T, i.e.
    exactly 1e-4 -> 0.02 at T = 1000 (ADM, TextDiff) and 1e-3 -> 0.2 at T = 100 (SegDiff). Betas are clipped
    at 0.999 (as improved-diffusion does), so a short schedule (e.g. T = 10 in tests) stays valid.
    """
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"linear_betas: T must be a positive integer, got {T!r}")
    scale = 1000.0 / T
    beta_start = 1e-4 * scale if beta_start is None else beta_start
    beta_end = 0.02 * scale if beta_end is None else beta_end
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64).clamp(max=0.999)


def ddpm_linear_schedule(T: int, beta_start: float | None = None, beta_end: float | None = None) -> Schedule:
    """DDPM's linear schedule over :func:`linear_betas` (the SegDiff comparison; TextDiff's backbone at T = 1000)."""
    betas = linear_betas(T, beta_start, beta_end)
    return _from_betas(betas, name=f"ddpm_linear(T={T})")


def extract(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather ``table[t]`` for a batch of integer times ``t`` (B,) and shape it ``(B, 1, 1, ...)`` like ``like``."""
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"time tensor must be (B,) with B = {like.shape[0]}, got shape {tuple(t.shape)}")
    if t.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"time tensor must hold integers (code times), got {t.dtype}")
    if int(t.min()) < 0 or int(t.max()) >= table.shape[0]:
        raise ValueError(f"time index out of range 0..{table.shape[0] - 1}: got {t.tolist()}")
    out = table.to(like.device)[t.to(like.device)].to(like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(sched: Schedule, x0: torch.Tensor, level: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Draw x at noise level ``level`` from q(x_k | x0) (DDPM Eq. 4; unnumbered in cDAL; typo corrected, D11).

    ``x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps``. ``x0`` (B, C, H, W), ``level`` (B,) int in 0..T.
    Returns (B, C, H, W).
    """
    noise = torch.randn_like(x0) if noise is None else noise
    return extract(sched.sqrt_alphas_cumprod, level, x0) * x0 + extract(sched.sqrt_one_minus_alphas_cumprod, level, x0) * noise


def q_sample_pairs(sched: Schedule, x0: torch.Tensor, t: torch.Tensor,
                   noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A training pair (x at level t, x at level t+1) for code time ``t`` (book/decisions.md).

    x_t ~ q(x_t | x0) (the marginal), then one more forward step (DDPM Eq. 2, TextDiff Eq. 1):
    ``x_{t+1} = sqrt(1 - beta_{t+1}) x_t + sqrt(beta_{t+1}) eps'``, both noises fresh and independent.
    ``x0`` (B, C, H, W), ``t`` (B,) int in 0..T-1. Returns ``(x_t, x_tp1)``, both (B, C, H, W).
    """
    if int(t.max()) >= sched.T:
        raise ValueError(f"code time must be in 0..{sched.T - 1}, got {t.tolist()}")
    e1, e2 = noise if noise is not None else (torch.randn_like(x0), torch.randn_like(x0))
    x_t = q_sample(sched, x0, t, e1)
    beta = extract(sched.betas, t + 1, x0)
    x_tp1 = torch.sqrt(1.0 - beta) * x_t + torch.sqrt(beta) * e2                        # forward step
    return x_t, x_tp1


def posterior_mean_variance(sched: Schedule, x0: torch.Tensor, x_tp1: torch.Tensor,
                            t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and clipped log-variance of q(x_t | x_{t+1}, x0) (DDPM Eq. 6-7) at code time ``t``.

    ``mean = c1 x0 + c2 x_{t+1}`` (B, C, H, W); ``var`` and ``log_var`` are (B, 1, 1, 1).
    """
    mean = extract(sched.posterior_coef_x0, t, x0) * x0 + extract(sched.posterior_coef_xt, t, x0) * x_tp1
    var = extract(sched.posterior_variance, t, x0)
    log_var = extract(sched.posterior_log_variance_clipped, t, x0)
    return mean, var, log_var


def sample_posterior(sched: Schedule, x0: torch.Tensor, x_tp1: torch.Tensor, t: torch.Tensor,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_{t+1}, x0) (DDPM Eq. 6-7); **no noise is added at code time 0**.

    With x0 = G's prediction this is the reverse step of cDAL Eq. 2.

    ``x0``, ``x_tp1`` (B, C, H, W), ``t`` (B,) int in 0..T-1. Returns (B, C, H, W). At t = 0 this returns
    ``x0`` exactly (c1 = 1, c2 = 0), so the sampler's final output is the generator's last x0 prediction.
    """
    mean, _, log_var = posterior_mean_variance(sched, x0, x_tp1, t)
    noise = torch.randn_like(x_tp1) if noise is None else noise
    nonzero = (t != 0).to(x0.dtype).to(x0.device).reshape(-1, *([1] * (x0.ndim - 1)))
    return mean + nonzero * torch.exp(0.5 * log_var) * noise
