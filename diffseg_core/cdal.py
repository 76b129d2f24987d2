"""cDAL: conditional Diffusion with Attention-guided Latent (MICCAI 2024), Algorithms 1-2 and the method plug-in.

cDAL generates the segmentation map with a **T = 2-4 step** diffusion process whose reverse steps are
learnt by a GAN-style generator (DDGAN). The generator ``G`` (:mod:`diffseg_core.generator`) predicts the
clean label x0 from the noisy label, the image and a latent z; the discriminator ``D``
(:mod:`diffseg_core.discriminator`) judges pairs of consecutive noise levels. What is new in cDAL is how D
helps G: the channel mean of one of D's feature maps, computed on the real pair, is used as a spatial
attention map A_D that re-weights the clean label before it is noised for G's training step (Eq. 4).

Training step, Algorithm 1 (method.md §1.5), for one batch of labels x0 in {-1, 1} and images I:

1. **D, real**: draw code_t ~ U{0..T-1} and a real pair (x_t, x_{t+1}) from x0; loss softplus(-D(x_t, x_{t+1}, t)),
   plus the R1 penalty gamma/2 ||dD/dx_t||^2 on steps divisible by ``lazy_reg`` (not rescaled).
2. **D, fake**: x0_hat = G(x_{t+1}, t, I, z); x_t_hat ~ q(x_t | x_{t+1}, x0_hat); loss softplus(D(x_t_hat, x_{t+1}, t));
   one Adam step on D. *Choice*: G runs under ``no_grad`` here; the official code builds G's graph and then
   discards its gradient (``zero_grad`` before the G step), so the result is identical and cheaper.
3. **G**: new code_t and z; A_D = up(channel-mean(D stage features of the real pair)) (no gradient);
   x0_att = A_D * x0; draw (., x_{t+1}^att) from x0_att; x0_hat = G(x_{t+1}^att, t, I, z);
   loss = MSE(x0_hat, x0) against the **un-weighted** x0 (Eq. 4). No adversarial term (faithful, D1), unless
   ``adv_weight > 0`` adds DDGAN's non-saturating term softplus(-D(x_t_hat, x_{t+1}^att, t)) as a clearly
   labelled **extension**.

``use_attention=False`` (the "w/o attention" ablation) sets A_D = 1; D then has no influence on G at all,
so we **skip D entirely** (no D steps, faster; D stays at its initialisation). ``use_latent=False`` sets
z = 0 (D18).

Sampling, Algorithm 2 (method.md §1.2, §1.8): x_T ~ N(0, I); for code_t = T-1..0 draw a fresh z, predict
x0_hat = G(x_{t+1}, t, I, z) and draw x_t from the posterior (no noise at t = 0, so the output is the last
x0 prediction). An ensemble of ``n_samples`` runs is mapped to [0, 1] by (x + 1)/2, averaged and thresholded
at 0.5; the per-pixel variance over the ensemble is the uncertainty map. Images larger than the training
crop are tiled (:func:`sample_cdal_tiled`; the shared evaluation tiles with MONAI's sliding window instead).

Data conventions (method.md §1.7; D16): binary labels become one channel with foreground = +1 and
background = -1 (also for CXR, whose official code inverts them); multiclass labels become one-hot channels
mapped by 2*onehot - 1. Images: MoNuSeg is normalised per channel with the official mean/std in 0-255 units;
every other dataset is mapped to [-1, 1] by 2x - 1.

Choices against the official code (each also stated where it applies):

* model selection on a validation split, never on test (D15; the shared loop does this);
* constant learning rates (the official cosine schedule is stepped per *epoch* of a 7-188 iteration epoch and
  is periodic, method.md §1.6; at our run lengths it would be a no-op or noise);
* the ensemble RNG is a local generator re-seeded at each :meth:`CDALMethod.predict` call (the official code
  re-seeds before each image), so evaluation is deterministic and does not disturb the training stream;
* validation during training uses ``val_ensemble`` members (cheap); after training (when the loop reloads
  the best weights) and in any reloaded run, ``predict`` uses the full ``ensemble``;
* learning rates live in the model config (``lr_g``, ``lr_d``; the official values at ``paper``); the shared
  ``train.lr`` is not used by cDAL;
* multiclass (Hippocampus) probabilities are the per-class ensemble means normalised to sum to one, and the
  class is their argmax; the official code rounds each channel before the argmax (ties then break towards
  background). Binary tasks are identical to the official mean-then-threshold-at-0.5;
* ``cpu`` preset: smaller than method.md §6 suggests (nf 16 instead of 32, a 3-stage D with ngf 8 instead of
  4-5 stages) to approach the 0.25 s per step target on 2 cores; higher learning rates (1e-3 / 2e-4) because
  a run is ~1-5k steps instead of up to 84k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .config import model_config_from_dict
from .discriminator import TimeConditionedDiscriminator, d_logistic_loss, r1_penalty, spatial_attention
from .generator import ConditionalGenerator
from .methods.base import DatasetInfo, SegMethod
from .schedule import Schedule, ddpm_linear_schedule, q_sample_pairs, sample_posterior, vp_schedule

__all__ = [
    "CDALConfig", "labels_to_x0", "x0_to_probs", "normalize_image", "build_generator", "build_discriminator",
    "attention_map", "d_step", "g_step", "sample_cdal", "sample_cdal_tiled", "tile_starts", "ddpm_sample_same_net",
    "nearest_time_map", "CDALMethod", "MONUSEG_MEAN", "MONUSEG_STD",
]

# official MoNuSeg normalisation, in 0-255 units (method.md §1.7)
MONUSEG_MEAN = (142.07, 98.48, 132.96)
MONUSEG_STD = (65.78, 57.05, 57.78)


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
@dataclass
class CDALConfig:
    """Every cDAL hyper-parameter (method.md §1.2-1.6). ``for_preset`` gives the four presets.

    Diffusion: ``timesteps`` T (4 MoNuSeg, 2 CXR/Hippocampus), VP schedule ``beta_min``/``beta_max``.
    Inference: ``ensemble`` members (5, D9), ``val_ensemble`` members for the cheap validation in training.
    Attention: ``attn_scale`` = down-sampling factor of the D stage used (4/8/16 -> 1/4, 1/8, 1/16 of the
    input, D5), ``attn_norm`` 'raw' (faithful) or 'minmax' (D6), ``use_attention``, ``use_latent``.
    G: ``nf``, ``ch_mult``, ``num_res_blocks``, ``attn_resolutions`` (relative to ``image_size``),
    ``resample`` ('fir' | 'avg'), ``nz``, ``z_emb_dim``, ``n_mlp``, ``enc_blocks``, ``dropout``.
    D: ``d_ngf``, ``d_stages`` (width multipliers per block), ``d_downsample`` (per block, None = all),
    ``d_t_emb_dim``, ``d_init`` ('normal' = N(0, 0.02) convs, 'default'), ``d_resample``.
    Optimisation: Adam ``lr_g``, ``lr_d``, ``betas``; R1 ``r1_gamma`` every ``lazy_reg`` steps (1 = every
    step); ``adv_weight`` for the optional DDGAN adversarial G term (0 = faithful).
    ``image_norm``: 'monuseg' (official per-channel mean/std) or 'symmetric' (2x - 1).
    """

    timesteps: int = 4
    ensemble: int = 5
    val_ensemble: int = 5
    attn_scale: int = 8
    attn_norm: str = "raw"
    use_latent: bool = True
    use_attention: bool = True
    adv_weight: float = 0.0
    beta_min: float = 0.1
    beta_max: float = 20.0
    # generator
    nf: int = 64
    ch_mult: tuple[int, ...] = (1, 1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16, 8)
    image_size: int = 256
    resample: str = "fir"
    nz: int = 100
    z_emb_dim: int = 256
    n_mlp: int = 3
    enc_blocks: int = 5
    dropout: float = 0.0
    # discriminator
    d_ngf: int = 64
    d_stages: tuple[int, ...] = (4, 8, 8, 8, 8, 8)
    d_downsample: tuple[bool, ...] | None = None
    d_t_emb_dim: int = 256
    d_init: str = "normal"
    d_resample: str = "fir"
    # optimisation
    r1_gamma: float = 1.0
    lazy_reg: int = 10
    lr_g: float = 2e-4
    lr_d: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    image_norm: str = "monuseg"

    def __post_init__(self) -> None:
        for name in ("ch_mult", "attn_resolutions", "d_stages", "betas"):
            setattr(self, name, tuple(getattr(self, name)))
        if self.d_downsample is not None:
            self.d_downsample = tuple(bool(b) for b in self.d_downsample)
        if self.attn_norm not in ("raw", "minmax"):
            raise ValueError(f"cdal: attn_norm must be 'raw' or 'minmax', got {self.attn_norm!r}")
        if self.image_norm not in ("monuseg", "symmetric"):
            raise ValueError(f"cdal: image_norm must be 'monuseg' or 'symmetric', got {self.image_norm!r}")
        if self.timesteps < 1 or self.ensemble < 1 or self.val_ensemble < 1:
            raise ValueError("cdal: timesteps, ensemble and val_ensemble must be >= 1")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CDALConfig":
        """From ``RunConfig.model`` (unknown keys raise)."""
        return model_config_from_dict(cls, d, "cdal")

    @classmethod
    def for_preset(cls, preset: str, dataset: str) -> "CDALConfig":
        """The configuration of ``preset`` for ``dataset`` (qata behaves like cxr, synthetic like monuseg).

        * ``paper``: the official hyper-parameters (method.md §1.3-1.6; parameter counts §1.9). MoNuSeg
          attention at 1/8 (32 px, paper's best), CXR at 1/16 (16 px, the paper's best, D5; the code used
          1/4), Hippocampus at 1/2 (16 px of 32, as in the code) with T = 2 and 2 blocks per level (D3).
        * ``gpu``: one GPU, < 1 h: nf 32, 5 levels, FIR, attention at 16 px, a 5-stage D with ngf 32.
        * ``cpu``: engineered for 2 CPU cores (≤ 0.25 s per full step at batch 8 x 64 px, see
          ``benchmarks/train_step.py``): nf 16, 3 levels of 16/16/32 channels (64 -> 16 px; a wider level 1
          doubles the cost because NCSN++'s up-sampling block runs at the finer resolution with the coarser
          width), 1 block per level, no self-attention
          except the mandatory middle one, avg-pool re-sampling, a 3-stage D with ngf 8 (stage 3 = 1/8),
          1 image-encoder block, R1 every 10 steps, higher learning rates for a short run.
        * ``smoke``: a few seconds: nf 8, 2 levels, tiny D.
        """
        family = {"qata": "cxr", "synthetic": "monuseg"}.get(dataset, dataset)
        norm = "monuseg" if dataset == "monuseg" else "symmetric"
        if preset == "paper":
            if family == "cxr":
                return cls(timesteps=2, attn_scale=16, nf=32, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=1,
                           attn_resolutions=(16,), image_size=256, enc_blocks=6, lazy_reg=1, lr_g=2e-4, lr_d=1e-5,
                           image_norm=norm)
            if family == "hippocampus":
                return cls(timesteps=2, attn_scale=2, nf=32, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                           attn_resolutions=(16,), image_size=32, nz=50, z_emb_dim=128, enc_blocks=6,
                           d_ngf=64, d_stages=(2, 4, 8, 8), d_downsample=(False, True, True, True), d_t_emb_dim=128,
                           d_init="default", lazy_reg=10, lr_g=1.6e-4, lr_d=1.25e-4, image_norm=norm)
            return cls(image_norm=norm)  # MoNuSeg: the dataclass defaults are the official MoNuSeg values
        if preset == "gpu":
            small = family == "hippocampus"
            return cls(timesteps=2 if family in ("cxr", "hippocampus") else 4,
                       attn_scale=2 if small else (16 if family == "cxr" else 8), val_ensemble=3, nf=32,
                       ch_mult=(1, 2, 2, 2) if small else (1, 1, 2, 2, 4),
                       num_res_blocks=1 if not small else 2, attn_resolutions=(16,), image_size=32 if small else 256,
                       enc_blocks=3, nz=50 if small else 100, z_emb_dim=128,
                       d_ngf=32, d_stages=(2, 4, 8, 8) if small else (4, 8, 8, 8, 8),
                       d_downsample=(False, True, True, True) if small else None, d_t_emb_dim=128,
                       lr_g=2e-4, lr_d=1e-4, image_norm=norm)
        if preset == "cpu":
            return cls(timesteps=2 if family in ("cxr", "hippocampus") else 4,
                       attn_scale=4 if family == "hippocampus" else 8, val_ensemble=1,
                       nf=16, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(), image_size=64,
                       resample="avg", nz=32, z_emb_dim=64, n_mlp=2, enc_blocks=1,
                       d_ngf=8, d_stages=(2, 4, 4), d_t_emb_dim=64, d_resample="avg",
                       lazy_reg=10, lr_g=1e-3, lr_d=2e-4, image_norm=norm)
        if preset == "smoke":
            return cls(timesteps=2 if family in ("cxr", "hippocampus") else 4, attn_scale=4, ensemble=2, val_ensemble=1,
                       nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=32, resample="avg",
                       nz=8, z_emb_dim=16, n_mlp=1, enc_blocks=1, d_ngf=4, d_stages=(2, 4), d_t_emb_dim=16,
                       d_resample="avg", lazy_reg=2, lr_g=1e-3, lr_d=1e-3, image_norm=norm)
        raise ValueError(f"cdal: unknown preset {preset!r}; choose smoke, cpu, gpu or paper")


# ------------------------------------------------------------------------------------------------
# label and image conversions
# ------------------------------------------------------------------------------------------------
def label_channels(num_classes: int) -> int:
    """Channels of the diffused label: 1 for binary tasks, one per class otherwise."""
    if num_classes < 2:
        raise ValueError(f"cdal: need at least 2 classes, got {num_classes}")
    return 1 if num_classes == 2 else num_classes


def labels_to_x0(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices (B, H, W) int -> diffusion target x0 (B, Cl, H, W) in {-1, 1}.

    Binary: one channel, foreground = +1, background = -1 (D16). Multiclass: one-hot channels, 2*onehot - 1.
    """
    if label.ndim != 3:
        raise ValueError(f"labels_to_x0: label must be (B, H, W), got shape {tuple(label.shape)}")
    if label.dtype.is_floating_point:
        raise TypeError(f"labels_to_x0: label must hold integer class indices, got {label.dtype}")
    if int(label.min()) < 0 or int(label.max()) >= num_classes:
        raise ValueError(f"labels_to_x0: label values must be in 0..{num_classes - 1}, got {int(label.min())}..{int(label.max())}")
    if num_classes == 2:
        return (label[:, None].float() * 2.0 - 1.0)
    onehot = F.one_hot(label.long(), num_classes).permute(0, 3, 1, 2).float()
    return onehot * 2.0 - 1.0


def x0_to_probs(x: torch.Tensor) -> torch.Tensor:
    """Generated label map x (B, Cl, H, W) in [-1, 1] -> class probabilities (B, K, H, W) summing to 1.

    Each channel is mapped by clamp((x + 1)/2, 0, 1) (official). Binary (Cl = 1): [1 - p, p].
    Multiclass: the per-class values normalised to sum to one (uniform where all are 0).
    """
    if x.ndim != 4:
        raise ValueError(f"x0_to_probs: x must be (B, Cl, H, W), got shape {tuple(x.shape)}")
    p = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    if x.shape[1] == 1:
        return torch.cat([1.0 - p, p], dim=1)
    s = p.sum(dim=1, keepdim=True)
    uniform = torch.full_like(p, 1.0 / p.shape[1])
    return torch.where(s > 1e-8, p / s.clamp_min(1e-8), uniform)


def normalize_image(image: torch.Tensor, mode: str = "symmetric") -> torch.Tensor:
    """Image (B, C, H, W) in [0, 1] -> G's input. 'monuseg': (255 x - mean) / std per channel (official,
    3 channels); 'symmetric': 2x - 1."""
    if mode == "monuseg":
        if image.shape[1] != 3:
            raise ValueError(f"normalize_image: 'monuseg' needs 3 channels, got {image.shape[1]}")
        mean = image.new_tensor(MONUSEG_MEAN)[None, :, None, None]
        std = image.new_tensor(MONUSEG_STD)[None, :, None, None]
        return (image * 255.0 - mean) / std
    if mode == "symmetric":
        return image * 2.0 - 1.0
    raise ValueError(f"normalize_image: unknown mode {mode!r}")


# ------------------------------------------------------------------------------------------------
# networks
# ------------------------------------------------------------------------------------------------
def build_generator(cfg: CDALConfig, label_ch: int, image_ch: int) -> ConditionalGenerator:
    """The generator of ``cfg`` for ``label_ch`` label channels and ``image_ch`` image channels."""
    return ConditionalGenerator(label_channels=label_ch, image_channels=image_ch, nf=cfg.nf, ch_mult=cfg.ch_mult,
                                num_res_blocks=cfg.num_res_blocks, attn_resolutions=cfg.attn_resolutions,
                                image_size=cfg.image_size, nz=cfg.nz, z_emb_dim=cfg.z_emb_dim, n_mlp=cfg.n_mlp,
                                enc_blocks=cfg.enc_blocks, resample=cfg.resample, dropout=cfg.dropout)


def build_discriminator(cfg: CDALConfig, label_ch: int) -> TimeConditionedDiscriminator:
    """The discriminator of ``cfg`` for pairs of ``label_ch``-channel maps."""
    return TimeConditionedDiscriminator(in_channels=2 * label_ch, ngf=cfg.d_ngf, channel_mults=cfg.d_stages,
                                        downsample=cfg.d_downsample, t_emb_dim=cfg.d_t_emb_dim,
                                        resample=cfg.d_resample, init=cfg.d_init)


def _randint_t(sched: Schedule, batch: int, device: torch.device) -> torch.Tensor:
    return torch.randint(0, sched.T, (batch,), device=device)


def _latent(G: ConditionalGenerator, batch: int, use_latent: bool, like: torch.Tensor,
            generator: torch.Generator | None = None) -> torch.Tensor | None:
    if not use_latent:
        return None
    return torch.randn(batch, G.nz, device=like.device, dtype=like.dtype, generator=generator)


# ------------------------------------------------------------------------------------------------
# Algorithm 1: the training step
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def attention_map(D: TimeConditionedDiscriminator | None, sched: Schedule, x0: torch.Tensor, t: torch.Tensor,
                  cfg: CDALConfig) -> torch.Tensor:
    """A_D (B, 1, H, W) for labels x0 (B, Cl, H, W) at code times t (B,) (Eq. 4; method.md §1.4, D8).

    D's features of a freshly drawn **real** pair (x_t, x_{t+1}) at stage ``D.stage_for_scale(cfg.attn_scale)``,
    averaged over channels and bilinearly up-sampled; ``cfg.attn_norm`` 'raw' or 'minmax'. Without
    attention (``cfg.use_attention=False``) A_D = 1.
    """
    if not cfg.use_attention or D is None:
        return torch.ones_like(x0[:, :1])
    x_t, x_tp1 = q_sample_pairs(sched, x0, t)
    feats = D.features(x_t, x_tp1, t)
    return spatial_attention(feats, D.stage_for_scale(cfg.attn_scale), tuple(x0.shape[-2:]), cfg.attn_norm)


def _r1_due(cfg: CDALConfig, step: int) -> bool:
    return cfg.r1_gamma > 0 and (not cfg.lazy_reg or cfg.lazy_reg <= 1 or step % cfg.lazy_reg == 0)


def d_step(G: ConditionalGenerator, D: TimeConditionedDiscriminator, sched: Schedule, x0: torch.Tensor,
           image: torch.Tensor, cfg: CDALConfig, step: int, opt_d: torch.optim.Optimizer,
           grad_clip: float | None = None) -> dict[str, float]:
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
        x0_hat = G(x_tp1, t, image, _latent(G, b, cfg.use_latent, x0))
        x_fake = sample_posterior(sched, x0_hat, x_tp1, t)
    fake = D(x_fake, x_tp1, t)
    loss_fake = d_logistic_loss(fake, real=False)      # softplus(D(fake))
    loss_fake.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(D.parameters(), grad_clip)
    opt_d.step()
    out.update(d_real=float(loss_real.detach()), d_fake=float(loss_fake.detach()),
               d_loss=float(loss_real.detach() + loss_fake.detach()),
               d_real_logit=float(real.detach().mean()), d_fake_logit=float(fake.detach().mean()))
    return out


def g_step(G: ConditionalGenerator, D: TimeConditionedDiscriminator | None, sched: Schedule, x0: torch.Tensor,
           image: torch.Tensor, cfg: CDALConfig, opt_g: torch.optim.Optimizer,
           grad_clip: float | None = None) -> dict[str, Any]:
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
    x0_hat = G(x_tp1_att, t, image, _latent(G, b, cfg.use_latent, x0))
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
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(G.parameters(), grad_clip)
    opt_g.step()
    return {"g_loss": float(loss.detach()), "mse": float(mse.detach()), "adv": float(adv.detach()),
            "attn_mean": float(att.mean()), "attn_std": float(att.std()) if att.numel() > 1 else 0.0,
            "attention": att, "x0_att": x0_att.detach(), "x_in": x_tp1_att.detach(), "x0_hat": x0_hat.detach()}


# ------------------------------------------------------------------------------------------------
# Algorithm 2: sampling
# ------------------------------------------------------------------------------------------------
def _summarise(samples: torch.Tensor) -> dict[str, torch.Tensor]:
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
        image: G's conditioning input (B, Ci, H, W), **already normalised** (:func:`normalize_image`).
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
    b, _, h, w = image.shape
    n = n_samples
    img = image.repeat(n, 1, 1, 1)                                     # (N*B, Ci, H, W), member-major
    x = torch.randn(n * b, G.label_channels, h, w, device=image.device, dtype=image.dtype, generator=generator)
    traj = []
    x0_hat = x
    for code_t in reversed(range(sched.T)):
        t = torch.full((n * b,), code_t, dtype=torch.long, device=image.device)
        z = _latent(G, n * b, use_latent, image, generator)           # a fresh z at every step
        x0_hat = G(x, t, img, z)
        if return_trajectory:
            traj.append((x.reshape(n, b, *x.shape[1:]).clone(), x0_hat.reshape(n, b, *x.shape[1:]).clone()))
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        x = sample_posterior(sched, x0_hat, x, t, noise)               # no noise at code_t = 0
    out: dict[str, Any] = _summarise(x.reshape(n, b, *x.shape[1:]))
    out["nfe"] = n * sched.T
    if return_trajectory:
        out["trajectory"] = traj
    return out


def tile_starts(size: int, tile: int, overlap: float = 0.0) -> list[int]:
    """Window start positions along one axis: stride ``tile * (1 - overlap)``, the last window flush with the end.

    >>> tile_starts(512, 256), tile_starts(100, 64), tile_starts(64, 64, 0.5)
    ([0, 256], [0, 36], [0])
    """
    if tile >= size:
        return [0]
    stride = max(1, int(round(tile * (1.0 - overlap))))
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


@torch.no_grad()
def sample_cdal_tiled(G: ConditionalGenerator, sched: Schedule, image: torch.Tensor, tile: int, n_samples: int = 5,
                      use_latent: bool = True, overlap: float = 0.0, tiles_per_batch: int = 4,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """:func:`sample_cdal` on images larger than the training crop, window by window.

    ``image`` (B, Ci, H, W) normalised, H and W >= ``tile``; ``tile`` the window side (the training crop;
    official MoNuSeg: four non-overlapping 256 windows of the 512 image, ``overlap=0``). Windows are sampled
    ``tiles_per_batch`` at a time and overlapping positions are averaged with equal weights (the same
    stitching as the shared MONAI sliding-window evaluation). Returns ``mean`` (B, Cl, H, W), ``variance``
    (B, Cl, H, W) (the window variances, averaged where windows overlap) and ``mask`` (B, H, W).
    """
    b, _, h, w = image.shape
    if h < tile or w < tile:
        raise ValueError(f"sample_cdal_tiled: image {h}x{w} is smaller than the {tile}-px window; use sample_cdal")
    cl = G.label_channels
    acc = image.new_zeros(b, 2 * cl, h, w)
    count = image.new_zeros(1, 1, h, w)
    windows = [(y, x) for y in tile_starts(h, tile, overlap) for x in tile_starts(w, tile, overlap)]
    for i in range(0, len(windows), tiles_per_batch):
        chunk = windows[i:i + tiles_per_batch]
        crops = torch.cat([image[:, :, y:y + tile, x:x + tile] for y, x in chunk])       # (len(chunk) * B, Ci, tile, tile)
        r = sample_cdal(G, sched, crops, n_samples=n_samples, use_latent=use_latent, generator=generator)
        both = torch.cat([r["mean"], r["variance"]], dim=1).reshape(len(chunk), b, 2 * cl, tile, tile)
        for j, (y, x) in enumerate(chunk):
            acc[:, :, y:y + tile, x:x + tile] += both[j]
            count[:, :, y:y + tile, x:x + tile] += 1
    both = acc / count
    mean, var = both[:, :cl], both[:, cl:]
    mask = (mean[:, 0] > 0.5).long() if cl == 1 else mean.argmax(dim=1)
    return {"mean": mean, "variance": var, "mask": mask}


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
    x0 prediction is plugged into that schedule's posterior (Eq. 3). G only knows its own code times, so step
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
        x0_hat = G(x, t_net, img, _latent(G, n * b, use_latent, image, generator))
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        x = sample_posterior(sched, x0_hat, x, t, noise)
    out: dict[str, Any] = _summarise(x.reshape(n, b, *x.shape[1:]))
    out["nfe"] = n * sched.T
    return out


# ------------------------------------------------------------------------------------------------
# the method plug-in
# ------------------------------------------------------------------------------------------------
class CDALMethod(SegMethod):
    """cDAL in the shared loop: nets ``G`` and ``D``, optimisers ``g`` and ``d`` (Adam, betas (0.5, 0.9)).

    ``train_step`` runs Algorithm 1 (D real + lazy R1 + D fake, then G; D skipped when
    ``use_attention=False``); ``predict`` runs Algorithm 2 with an ensemble and returns class probabilities
    (B, K, h, w) from the ensemble mean. ``inference_roi()`` is the training crop (tiles of the shared sliding
    window, as the official code tiles MoNuSeg).
    """

    name = "cdal"

    def __init__(self, cfg: Any, info: DatasetInfo, device: torch.device) -> None:
        super().__init__(cfg, info, device)
        mc = CDALConfig.from_dict(dict(cfg.model))
        self.model_cfg = mc
        self.label_ch = label_channels(info.num_classes)
        if mc.image_norm == "monuseg" and info.in_channels != 3:
            raise ValueError(f"cdal: image_norm 'monuseg' needs RGB images, dataset {info.name} has {info.in_channels} channel(s)")
        self.sched = vp_schedule(mc.timesteps, mc.beta_min, mc.beta_max).to(device)
        G = build_generator(mc, self.label_ch, info.in_channels).to(device)
        D = build_discriminator(mc, self.label_ch).to(device)
        crop = cfg.data.crop
        if crop % G.divisor:
            raise ValueError(f"cdal: crop {crop} must be divisible by {G.divisor} ({len(mc.ch_mult)} generator levels)")
        if mc.use_attention:
            D.stage_for_scale(mc.attn_scale)            # raises early if the D has no such stage
        self.nets["G"] = G
        self.nets["D"] = D
        self.optimizers["g"] = torch.optim.Adam(G.parameters(), lr=mc.lr_g, betas=mc.betas)
        self.optimizers["d"] = torch.optim.Adam(D.parameters(), lr=mc.lr_d, betas=mc.betas)
        self.n_ensemble = mc.ensemble

    # ---- configuration -----------------------------------------------------------------------
    @classmethod
    def default_config(cls, preset: str, dataset: str) -> CDALConfig:
        return CDALConfig.for_preset(preset, dataset)

    @classmethod
    def data_overrides(cls, preset: str, dataset: str) -> dict[str, Any]:
        """MoNuSeg keeps the shared data preset (512 working scale, 64-px crops, batch 8 at ``cpu``: nuclei
        stay 10-15 px wide and a crop holds several of them; the 3-level G needs a side divisible by 4).
        The ``paper`` preset tiles MoNuSeg into non-overlapping 256 windows, as the official code does."""
        return {}

    @classmethod
    def train_overrides(cls, preset: str, dataset: str, model: Any = None) -> dict[str, Any]:
        """Longer ``cpu`` runs than the shared default (a cDAL step is cheap but it needs many of them)."""
        if preset == "cpu":
            return {"steps": 6000, "val_every": 250, "log_every": 25, "max_minutes": 15.0}
        if preset == "gpu":
            return {"steps": 30000, "val_every": 1000, "log_every": 50, "max_minutes": 50.0}
        return {}

    # ---- training -----------------------------------------------------------------------------
    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        image = batch["image"]
        if image.ndim != 4 or image.shape[1] != self.info.in_channels:
            raise ValueError(f"cdal: batch image must be (B, {self.info.in_channels}, h, w), got {tuple(image.shape)}")
        x0 = labels_to_x0(batch["label"], self.info.num_classes)
        return x0, normalize_image(image.float(), self.model_cfg.image_norm)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        """Algorithm 1 on ``batch`` (image (B, C, h, w) in [0, 1], label (B, h, w)); returns float losses."""
        mc, G, D = self.model_cfg, self.nets["G"], self.nets["D"]
        self.n_ensemble = mc.val_ensemble               # validation inside the loop stays cheap
        x0, image = self._inputs(batch)
        clip = getattr(self.cfg.train, "grad_clip", None)
        logs: dict[str, float] = {}
        if mc.use_attention or mc.adv_weight > 0:
            logs.update(d_step(G, D, self.sched, x0, image, mc, step, self.optimizers["d"], clip))
        out = g_step(G, D if mc.use_attention or mc.adv_weight > 0 else None, self.sched, x0, image, mc,
                     self.optimizers["g"], clip)
        logs.update({k: v for k, v in out.items() if isinstance(v, float)})
        first = [k for k in ("mse", "d_loss", "attn_mean") if k in logs]    # what the progress bar shows
        return {**{k: logs[k] for k in first}, **logs}

    def load_state_dict(self, state: dict[str, Any], with_optimizers: bool = True) -> None:
        """Load weights; a reload (end of training, or a saved run) switches ``predict`` to the full ensemble."""
        super().load_state_dict(state, with_optimizers)
        self.n_ensemble = self.model_cfg.ensemble

    # ---- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image: torch.Tensor, text: Sequence[str] | None = None) -> torch.Tensor:
        """Class probabilities (B, K, h, w) from the mean of ``self.n_ensemble`` T-step samples; h, w divisible
        by the generator's down-sampling factor (the sliding window gives crop-sized tiles)."""
        gen = torch.Generator(device=image.device)
        gen.manual_seed(int(self.cfg.seed))
        r = sample_cdal(self.nets["G"], self.sched, normalize_image(image.float(), self.model_cfg.image_norm),
                        n_samples=self.n_ensemble, use_latent=self.model_cfg.use_latent, generator=gen)
        return x0_to_probs(r["mean"] * 2.0 - 1.0)

    def inference_roi(self) -> int | None:
        return self.cfg.data.crop

    def run_info(self) -> dict[str, Any]:
        G, D = self.nets["G"], self.nets["D"]
        return {"G_parameters": G.num_parameters(), "D_parameters": D.num_parameters(),
                "encoder_parameters": sum(p.numel() for p in G.encoder.parameters()),
                "schedule": self.sched.to("cpu").table(), "ensemble": self.model_cfg.ensemble,
                "attention_stage": D.stage_for_scale(self.model_cfg.attn_scale) if self.model_cfg.use_attention else None,
                "d_skipped": not (self.model_cfg.use_attention or self.model_cfg.adv_weight > 0)}
