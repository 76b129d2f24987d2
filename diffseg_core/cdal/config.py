"""cDAL's hyper-parameters: one dataclass, four presets (``smoke``, ``cpu``, ``gpu``, ``paper``).

The ``paper`` preset reproduces the official configurations exactly (the generator has 41,666,753 /
8,843,777 / 3,682,275 parameters for MoNuSeg / CXR / Hippocampus); the smaller presets and why they differ
are on the book's decisions page (``book/decisions.md``, "Decisions made for small CPU scale").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import model_config_from_dict

__all__ = ["CDALConfig"]


@dataclass
class CDALConfig:
    """Every cDAL hyper-parameter (book/decisions.md). ``for_preset`` gives the four presets.

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
    ``ema_decay``: exponential moving average of G's weights used for validation and prediction (0 = off;
    0.999 for Hippocampus, as the official Hippocampus training; :mod:`diffseg_core.cdal.ema`).
    ``spatial_dims``: 2 (the paper: images, or slices of a volume) or 3 (native 3-D cDAL on volume patches,
    chapter 08; the same widths with 3-D convolutions).
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
    # generator EMA and dimensionality (chapter 08)
    ema_decay: float = 0.0
    spatial_dims: int = 2

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
        if not 0.0 <= float(self.ema_decay) < 1.0:
            raise ValueError(f"cdal: ema_decay must be in [0, 1) (0 = no EMA), got {self.ema_decay!r}")
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"cdal: spatial_dims must be 2 (slices) or 3 (volumes), got {self.spatial_dims!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CDALConfig":
        """From ``RunConfig.model`` (unknown keys raise)."""
        return model_config_from_dict(cls, d, "cdal")

    @classmethod
    def for_preset(cls, preset: str, dataset: str) -> "CDALConfig":
        """The configuration of ``preset`` for ``dataset`` (qata behaves like cxr, synthetic like monuseg).

        * ``paper``: the official hyper-parameters (parameter counts on the book's decisions page). MoNuSeg
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

        Hippocampus keeps an EMA of G (decay 0.999) at every preset, as the official Hippocampus training
        does; the other datasets have none (``ema_decay=0``), as in their official code. ``spatial_dims=3``
        (an override, e.g. ``--spatial-dims 3``) keeps every width and switches to 3-D layers.
        """
        cfg = cls._for_preset(preset, dataset)
        if {"qata": "cxr", "synthetic": "monuseg"}.get(dataset, dataset) == "hippocampus":
            cfg.ema_decay = 0.999
        return cfg

    @classmethod
    def _for_preset(cls, preset: str, dataset: str) -> "CDALConfig":
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

