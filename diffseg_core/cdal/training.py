"""Algorithm 1 of cDAL: one discriminator update and one generator update.

For one batch of labels x0 in {-1, 1} and images I (code time ``t`` as in :mod:`diffseg_core.schedule`):

1. **D, real**: draw code_t ~ U{0..T-1} and a real pair (x_t, x_{t+1}) from x0; loss softplus(-D(x_t, x_{t+1}, t)),
   plus the R1 penalty gamma/2 ||dD/dx_t||^2 on steps divisible by ``lazy_reg`` (not rescaled, decision D10).
2. **D, fake**: x0_hat = G(x_{t+1}, t, I, z); x_t_hat ~ q(x_t | x_{t+1}, x0_hat) (cDAL Eq. 2); loss
   softplus(D(x_t_hat, x_{t+1}, t)); one Adam step on D. *Choice*: G runs under ``no_grad`` here; the official
   code builds G's graph and then discards its gradient (``zero_grad`` before the G step), so the result is
   identical and cheaper.
3. **G**: new code_t and z; A_D = up(channel-mean(D stage features of the real pair)) (no gradient, D8);
   x0_att = A_D * x0; draw (., x_{t+1}^att) from x0_att; x0_hat = G(x_{t+1}^att, t, I, z);
   loss = MSE(x0_hat, x0) against the **un-weighted** x0 (cDAL Eq. 4). No adversarial term (faithful, D1),
   unless ``adv_weight > 0`` adds DDGAN's non-saturating term softplus(-D(x_t_hat, x_{t+1}^att, t)) as a
   clearly labelled **extension**.

``use_attention=False`` (the "w/o attention" ablation, D18) sets A_D = 1; D then has no influence on G at
all, so the method skips D entirely. ``use_latent=False`` sets z = 0 (D18).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..schedule import Schedule, q_sample_pairs, sample_posterior
from .config import CDALConfig
from .discriminator import TimeConditionedDiscriminator, d_logistic_loss, r1_penalty, spatial_attention
from .generator import ConditionalGenerator, draw_latent

__all__ = ["attention_map", "d_step", "g_step"]


def _randint_t(sched: Schedule, batch: int, device: torch.device) -> torch.Tensor:
    return torch.randint(0, sched.T, (batch,), device=device)


@torch.no_grad()
def attention_map(D: TimeConditionedDiscriminator | None, sched: Schedule, x0: torch.Tensor, t: torch.Tensor,
                  cfg: CDALConfig) -> torch.Tensor:
    """A_D (B, 1, H, W) for labels x0 (B, Cl, H, W) at code times t (B,) (unnumbered in cDAL; book/decisions.md, D8).

    A_D shapes the generator's training input of cDAL Eq. 4 (x_{t+1} is drawn from A_D * x0).

    Volumes (3-D cDAL) alike: x0 (B, Cl, D, H, W) -> A_D (B, 1, D, H, W).

    D's features of a freshly drawn **real** pair (x_t, x_{t+1}) at stage ``D.stage_for_scale(cfg.attn_scale)``,
    averaged over channels and bilinearly up-sampled; ``cfg.attn_norm`` 'raw' or 'minmax'. Without
    attention (``cfg.use_attention=False``) A_D = 1.
    """
    if not cfg.use_attention or D is None:
        return torch.ones_like(x0[:, :1])
    x_t, x_tp1 = q_sample_pairs(sched, x0, t)
    feats = D.features(x_t, x_tp1, t)
    return spatial_attention(feats, D.stage_for_scale(cfg.attn_scale), tuple(x0.shape[2:]), cfg.attn_norm)


def _r1_due(cfg: CDALConfig, step: int) -> bool:
    return cfg.r1_gamma > 0 and (not cfg.lazy_reg or cfg.lazy_reg <= 1 or step % cfg.lazy_reg == 0)


def d_step(G: ConditionalGenerator, D: TimeConditionedDiscriminator, sched: Schedule, x0: torch.Tensor,
           image: torch.Tensor, cfg: CDALConfig, step: int, opt_d: torch.optim.Optimizer) -> dict[str, float]:
    """One discriminator update (Algorithm 1, steps 1-2).

    Args: x0 (B, Cl, H, W) in {-1, 1}; image (B, Ci, H, W) normalised; ``step`` decides the lazy R1.
    Returns floats ``d_real``, ``d_fake`` (logistic losses), ``d_loss`` and, when applied, ``r1``
    (gamma/2 * mean ||grad||^2), plus ``d_real_logit``/``d_fake_logit`` batch means.
    """
    opt_d.zero_grad(set_to_none=True)
    b = x0.shape[0]
    t = _randint_t(sched, b, x0.device)
    x_t, x_tp1 = q_sample_pairs(sched, x0, t)
    x_t = x_t.detach().requires_grad_(True)           # R1 is taken w.r.t. the less-noisy real input only
    real = D(x_t, x_tp1, t)
    loss_real = d_logistic_loss(real, real=True)       # softplus(-D(real))
    out: dict[str, float] = {}
    if _r1_due(cfg, step):
        r1 = cfg.r1_gamma / 2.0 * r1_penalty(real, x_t).mean()   # not rescaled by the lazy interval (official)
        (loss_real + r1).backward()
        out["r1"] = float(r1.detach())
    else:
        loss_real.backward()
    with torch.no_grad():                               # G's gradient from this pass is discarded anyway
        x0_hat = G(x_tp1, t, image, draw_latent(G, b, cfg.use_latent, x0))
        x_fake = sample_posterior(sched, x0_hat, x_tp1, t)
    fake = D(x_fake, x_tp1, t)
    loss_fake = d_logistic_loss(fake, real=False)      # softplus(D(fake))
    loss_fake.backward()
    opt_d.step()
    out.update(d_real=float(loss_real.detach()), d_fake=float(loss_fake.detach()),
               d_loss=float(loss_real.detach() + loss_fake.detach()),
               d_real_logit=float(real.detach().mean()), d_fake_logit=float(fake.detach().mean()))
    return out


def g_step(G: ConditionalGenerator, D: TimeConditionedDiscriminator | None, sched: Schedule, x0: torch.Tensor,
           image: torch.Tensor, cfg: CDALConfig, opt_g: torch.optim.Optimizer) -> dict[str, Any]:
    """One generator update (Algorithm 1, step 3; Eq. 4).

    A_D from D's real-pair features -> x0_att = A_D * x0 -> noised pair from x0_att -> G predicts x0 from the
    more-noisy member -> MSE against the un-weighted x0 (+ ``adv_weight`` x DDGAN's adversarial term, an
    extension). Returns floats ``g_loss``, ``mse``, ``adv`` (0 when off), ``attn_mean``, ``attn_std`` and, for
    plotting, tensors ``attention`` (B, 1, H, W), ``x0_att`` (B, Cl, H, W), ``x_in`` (G's noisy input) and
    ``x0_hat`` (G's prediction), all detached.
    """
    opt_g.zero_grad(set_to_none=True)
    b = x0.shape[0]
    t = _randint_t(sched, b, x0.device)
    att = attention_map(D, sched, x0, t, cfg)                  # (B, 1, H, W), no gradient
    x0_att = att * x0                                          # shared across label channels
    _, x_tp1_att = q_sample_pairs(sched, x0_att, t)
    x0_hat = G(x_tp1_att, t, image, draw_latent(G, b, cfg.use_latent, x0))
    mse = F.mse_loss(x0_hat, x0)                               # mean over C, H, W and batch
    loss = mse
    adv = torch.zeros((), device=x0.device)
    if cfg.adv_weight > 0 and D is not None:                   # EXTENSION (not in cDAL): DDGAN's G term
        D.requires_grad_(False)
        try:
            x_fake = sample_posterior(sched, x0_hat, x_tp1_att, t)
            adv = d_logistic_loss(D(x_fake, x_tp1_att, t), real=True)   # softplus(-D(fake))
        finally:
            D.requires_grad_(True)
        loss = loss + cfg.adv_weight * adv
    loss.backward()
    opt_g.step()
    return {"g_loss": float(loss.detach()), "mse": float(mse.detach()), "adv": float(adv.detach()),
            "attn_mean": float(att.mean()), "attn_std": float(att.std()) if att.numel() > 1 else 0.0,
            "attention": att, "x0_att": x0_att.detach(), "x_in": x_tp1_att.detach(), "x0_hat": x0_hat.detach()}
