"""Algorithm 2 of cDAL: T-step ensemble sampling, and a many-step sampler on the same network.

x_T ~ N(0, I); for code_t = T-1..0 draw a fresh z, predict x0_hat = G(x_{t+1}, t, I, z) and draw x_t from
the posterior q(x_t | x_{t+1}, x0_hat) (cDAL Eq. 2; a fresh z per step samples the marginal over z, cDAL
Eq. 3). No noise is added at t = 0, so the output is the last x0 prediction. An ensemble of ``n_samples``
chains is mapped to [0, 1] by (x + 1)/2, averaged and thresholded at 0.5 (multiclass: argmax); the
per-pixel variance over the ensemble is the uncertainty map
(decision D9 for the ensemble size). Images larger than the training crop are tiled by the shared
sliding-window evaluation (:mod:`diffseg_core.evaluate`).
"""
from __future__ import annotations

from typing import Any

import torch

from ..schedule import Schedule, ddpm_linear_schedule, sample_posterior, vp_schedule
from .generator import ConditionalGenerator, draw_latent

__all__ = ["sample_cdal", "summarise_samples", "nearest_time_map", "ddpm_sample_same_net"]


def summarise_samples(samples: torch.Tensor) -> dict[str, torch.Tensor]:
    """samples (N, B, Cl, H, W) in [-1, 1] -> mean/variance in [0, 1] space and the thresholded mask."""
    p = ((samples + 1.0) / 2.0).clamp(0.0, 1.0)
    mean = p.mean(dim=0)
    var = p.var(dim=0, unbiased=False)
    mask = (mean[:, 0] > 0.5).long() if mean.shape[1] == 1 else mean.argmax(dim=1)
    return {"mean": mean, "variance": var, "mask": mask, "samples": p}


@torch.no_grad()
def sample_cdal(G: ConditionalGenerator, sched: Schedule, image: torch.Tensor, n_samples: int = 5,
                use_latent: bool = True, return_trajectory: bool = False,
                generator: torch.Generator | None = None) -> dict[str, Any]:
    """Algorithm 2: ``n_samples`` T-step reverse chains per image, summarised.

    Args:
        image: G's conditioning input (B, Ci, H, W), **already normalised** (:func:`normalize_image`);
            a 3-D generator takes volumes (B, Ci, D, H, W) and every output gains the same axis.
        n_samples: ensemble size (5 in the paper, D9); members are run as one batch of N*B.
        use_latent: draw a fresh z ~ N(0, I) at every step (False: z = 0).
        generator: optional ``torch.Generator`` on ``image``'s device for reproducible noise.
    Returns dict:
        ``mean`` (B, Cl, H, W) ensemble mean of (x + 1)/2 in [0, 1]; ``mask`` (B, H, W) int64 (binary: mean > 0.5,
        multiclass: argmax); ``variance`` (B, Cl, H, W) >= 0 per-pixel variance over members (uncertainty);
        ``samples`` (N, B, Cl, H, W) members in [0, 1]; ``nfe`` network evaluations per image (N * T);
        ``trajectory`` (when asked): list over steps code_t = T-1..0 of ``(x_in, x0_hat)`` tensors
        (N, B, Cl, H, W): G's noisy input at level t+1 and its x0 prediction.
    """
    if n_samples < 1:
        raise ValueError(f"sample_cdal: n_samples must be >= 1, got {n_samples}")
    b, spatial = image.shape[0], tuple(image.shape[2:])
    n = n_samples
    img = image.repeat(n, *([1] * (image.ndim - 1)))                   # (N*B, Ci, H, W), member-major
    x = torch.randn(n * b, G.label_channels, *spatial, device=image.device, dtype=image.dtype, generator=generator)
    traj = []
    x0_hat = x
    for code_t in reversed(range(sched.T)):
        t = torch.full((n * b,), code_t, dtype=torch.long, device=image.device)
        z = draw_latent(G, n * b, use_latent, image, generator)           # a fresh z at every step
        x0_hat = G(x, t, img, z)
        if return_trajectory:
            traj.append((x.reshape(n, b, *x.shape[1:]).clone(), x0_hat.reshape(n, b, *x.shape[1:]).clone()))
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        x = sample_posterior(sched, x0_hat, x, t, noise)               # no noise at code_t = 0
    out: dict[str, Any] = summarise_samples(x.reshape(n, b, *x.shape[1:]))
    out["nfe"] = n * sched.T
    if return_trajectory:
        out["trajectory"] = traj
    return out


def nearest_time_map(net_sched: Schedule, sched: Schedule) -> list[int]:
    """For each code time of ``sched``, the code time of ``net_sched`` whose more-noisy level has the closest
    signal level abar (used to feed a many-step sampler to a network trained on a T = 2-4 schedule)."""
    net_abar = net_sched.alphas_cumprod[1:].double()
    return [int(torch.argmin((net_abar - a).abs())) for a in sched.alphas_cumprod[1:].double()]


@torch.no_grad()
def ddpm_sample_same_net(G: ConditionalGenerator, image: torch.Tensor, T: int = 100, n_samples: int = 5,
                         net_sched: Schedule | None = None, use_latent: bool = True,
                         generator: torch.Generator | None = None) -> dict[str, Any]:
    """Many-step ancestral sampler with the **same** x0-predicting network (the speed comparison, D22).

    The T-step DDPM linear schedule (SegDiff: T = 100, beta 1e-3 -> 0.2) drives the chain; at each step G's
    x0 prediction is plugged into that schedule's posterior (DDPM Eq. 6-7). G only knows its own code times, so step
    t is given the network code time whose noise level is closest (:func:`nearest_time_map`). The point is
    the cost: T network evaluations per sample instead of cDAL's 2-4. Returns the keys of
    :func:`sample_cdal` (no trajectory).
    """
    sched = ddpm_linear_schedule(T)
    net_sched = net_sched or vp_schedule(4)
    tmap = nearest_time_map(net_sched, sched)
    b, _, h, w = image.shape
    n = n_samples
    img = image.repeat(n, 1, 1, 1)
    x = torch.randn(n * b, G.label_channels, h, w, device=image.device, dtype=image.dtype, generator=generator)
    for code_t in reversed(range(sched.T)):
        t = torch.full((n * b,), code_t, dtype=torch.long, device=image.device)
        t_net = torch.full_like(t, tmap[code_t])
        x0_hat = G(x, t_net, img, draw_latent(G, n * b, use_latent, image, generator))
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        x = sample_posterior(sched, x0_hat, x, t, noise)
    out: dict[str, Any] = summarise_samples(x.reshape(n, b, *x.shape[1:]))
    out["nfe"] = n * sched.T
    return out
