"""The SegDiff-style baseline's hyper-parameters: cDAL's generator widths for the same preset, T = 100.

The generator fields are copied from :meth:`diffseg_core.cdal.config.CDALConfig.for_preset` for the same
preset and dataset, so the SegDiff-style network is cDAL's generator (same parameter names and count), and
the learning rate is cDAL's generator rate: the comparison in chapter 09 changes the objective and the
number of steps, not the network or the budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..cdal.config import CDALConfig
from ..config import model_config_from_dict

__all__ = ["SegDiffConfig", "GENERATOR_FIELDS"]

#: the fields shared with :class:`~diffseg_core.cdal.config.CDALConfig` that build the generator
GENERATOR_FIELDS = ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "image_size", "resample", "nz",
                    "z_emb_dim", "n_mlp", "enc_blocks", "dropout")


@dataclass
class SegDiffConfig:
    """Every hyper-parameter of the SegDiff-style baseline.

    Diffusion: ``timesteps`` T of DDPM's linear schedule (SegDiff: 100, beta 1e-3 -> 0.2, the 1000-step
    schedule rescaled; :func:`diffseg_core.schedule.ddpm_linear_schedule`), ``clip_x0`` clips the x0 implied by
    the predicted noise to [-1, 1] before the posterior step (improved-diffusion's ``clip_denoised``).
    Inference: ``ensemble`` members (cDAL's 5; SegDiff itself averaged 9), ``val_ensemble`` during training.
    Generator: the fields of :data:`GENERATOR_FIELDS`, as cDAL's (z is always 0: the mapping network only
    gives a constant style). Optimisation: Adam ``lr``, ``adam_betas``. ``image_norm`` as cDAL's.
    """

    timesteps: int = 100
    ensemble: int = 5
    val_ensemble: int = 1
    clip_x0: bool = True
    # generator (cDAL's backbone)
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
    # optimisation
    lr: float = 2e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    image_norm: str = "monuseg"

    def __post_init__(self) -> None:
        for name in ("ch_mult", "attn_resolutions", "adam_betas"):
            setattr(self, name, tuple(getattr(self, name)))
        if self.timesteps < 1 or self.ensemble < 1 or self.val_ensemble < 1:
            raise ValueError("segdiff: timesteps, ensemble and val_ensemble must be >= 1")
        if self.image_norm not in ("monuseg", "symmetric"):
            raise ValueError(f"segdiff: image_norm must be 'monuseg' or 'symmetric', got {self.image_norm!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SegDiffConfig":
        """From ``RunConfig.model`` (unknown keys raise)."""
        return model_config_from_dict(cls, d, "segdiff")

    @classmethod
    def for_preset(cls, preset: str, dataset: str) -> "SegDiffConfig":
        """cDAL's generator and learning rate at ``preset`` for ``dataset``; T = 100 at every preset; ensemble
        and validation ensemble as cDAL's (smoke: 2 members)."""
        c = CDALConfig.for_preset(preset, dataset)
        return cls(ensemble=c.ensemble, val_ensemble=1, lr=c.lr_g, image_norm=c.image_norm,
                   **{f: getattr(c, f) for f in GENERATOR_FIELDS})
