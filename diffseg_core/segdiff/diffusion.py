"""The SegDiff-style objective and sampler: epsilon prediction on DDPM's linear schedule (T = 100).

Code times follow :mod:`diffseg_core.schedule` (book/decisions.md, D13): code time ``t`` in 0..T-1 names the
step from level t+1 to level t, and the network receives ``t``.

* **training** (DDPM Eq. 14, "L_simple"; SegDiff's loss): level k = t + 1 with t ~ U{0..T-1},
  x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps (DDPM Eq. 4), loss = || eps - eps_theta(x_k, t, I) ||^2 averaged
  over pixels and batch (:func:`eps_loss`);
* **sampling** (DDPM Algorithm 2 written through x0): x_T ~ N(0, I); at each step the predicted noise gives
  x0_hat = (x_k - sqrt(1 - abar_k) eps_theta) / sqrt(abar_k) (DDPM Eq. 4 solved for x0; :func:`predict_x0_from_eps`),
  clipped to [-1, 1], and x_{k-1} ~ q(x_{k-1} | x_k, x0_hat) (DDPM Eq. 6-7, :func:`diffseg_core.schedule.sample_posterior`).
  Without clipping this is exactly DDPM's mean 1/sqrt(alpha_k) (x_k - beta_k / sqrt(1 - abar_k) eps_theta) with
  variance beta~_k. No noise is added at the last step, so the output is the last x0_hat.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..cdal.generator import ConditionalGenerator
from ..cdal.sampling import summarise_samples
from ..schedule import Schedule, extract, q_sample, sample_posterior

__all__ = ["eps_loss", "predict_x0_from_eps", "sample_segdiff"]


def predict_x0_from_eps(sched: Schedule, x_k: torch.Tensor, level: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x0 implied by noise ``eps`` at noise level ``level`` (B,) (DDPM Eq. 4 solved for x0): (x_k - sqrt(1-abar) eps) / sqrt(abar).

    ``x_k``, ``eps`` (B, C, *S) -> (B, C, *S)."""
    return (x_k - extract(sched.sqrt_one_minus_alphas_cumprod, level, x_k) * eps) / extract(sched.sqrt_alphas_cumprod, level, x_k)


def eps_loss(G: ConditionalGenerator, sched: Schedule, x0: torch.Tensor, image: torch.Tensor,
             t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The epsilon objective (DDPM Eq. 14) for labels x0 (B, Cl, H, W) in {-1, 1} and normalised images (B, Ci, H, W).

    ``t`` (B,) code times (default: uniform in 0..T-1), ``noise`` like x0 (default: fresh N(0, I)). G sees
    x at level t + 1 and code time t, with z = 0. Returns ``loss`` (scalar, with graph), ``t``, ``noise``,
    ``x_in`` (G's input) and ``eps_hat``.
    """
    b = x0.shape[0]
    t = torch.randint(0, sched.T, (b,), device=x0.device) if t is None else t
    noise = torch.randn_like(x0) if noise is None else noise
    x_in = q_sample(sched, x0, t + 1, noise)
    eps_hat = G(x_in, t, image, None)
    return {"loss": F.mse_loss(eps_hat, noise), "t": t, "noise": noise, "x_in": x_in, "eps_hat": eps_hat}


@torch.no_grad()
def sample_segdiff(G: ConditionalGenerator, sched: Schedule, image: torch.Tensor, n_samples: int = 5,
                   clip_x0: bool = True, generator: torch.Generator | None = None) -> dict[str, Any]:
    """T-step ancestral sampling with predicted noise; ``n_samples`` chains per image, summarised as cDAL's.

    Args:
        image: normalised conditioning image (B, Ci, H, W); it is encoded once (the image encoder does not
            depend on the step) and reused at every step and member.
        generator: optional ``torch.Generator`` on ``image``'s device for reproducible noise.
    Returns the keys of :func:`diffseg_core.cdal.sampling.summarise_samples` (``mean``, ``variance``, ``mask``,
    ``samples``) and ``nfe`` = n_samples * T network evaluations per image.
    """
    if n_samples < 1:
        raise ValueError(f"sample_segdiff: n_samples must be >= 1, got {n_samples}")
    b, spatial = image.shape[0], tuple(image.shape[2:])
    n = n_samples
    feats = G.encode(image.repeat(n, *([1] * (image.ndim - 1))))        # (N*B, nf, H, W), member-major
    x = torch.randn(n * b, G.label_channels, *spatial, device=image.device, dtype=image.dtype, generator=generator)
    for code_t in reversed(range(sched.T)):
        t = torch.full((n * b,), code_t, dtype=torch.long, device=image.device)
        eps = G(x, t, None, None, image_features=feats)
        x0_hat = predict_x0_from_eps(sched, x, t + 1, eps)
        if clip_x0:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        x = sample_posterior(sched, x0_hat, x, t, noise)                 # no noise at code_t = 0
    out: dict[str, Any] = summarise_samples(x.reshape(n, b, *x.shape[1:]))
    out["nfe"] = n * sched.T
    return out
