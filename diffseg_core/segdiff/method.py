"""The SegDiff-style baseline as a method of the shared loop (``train --method segdiff``; chapter 09).

One network, cDAL's generator with an unbounded output (``out_activation='none'``), predicts the noise epsilon
(:mod:`.diffusion`); no latent (z = 0), no discriminator, no attention. ``train_step`` is one Adam step on the
epsilon MSE; ``predict`` runs ``ensemble`` chains of T = 100 ancestral steps and returns class probabilities
from their mean, exactly as cDAL's ``predict`` does (same label conventions, same re-seeded local RNG, same
sliding-window tiles of the training crop). The loop settings (steps, validation, minutes) are cDAL's for the
same preset, so both methods get the same budget.

Differences from SegDiff itself (Amit et al., 2021), stated because they change behaviour: the backbone is
cDAL's NCSN++ generator with cDAL's light image encoder added once after the input conv (SegDiff: an
improved-diffusion U-Net with an RRDB image encoder, summed the same way); Adam with cDAL's generator rate
instead of AdamW 1e-4; no weight EMA; the ensemble is cDAL's 5 members (SegDiff averaged 9).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..cdal.generator import ConditionalGenerator
from ..cdal.labels import label_channels, labels_to_x0, normalize_image, x0_to_probs
from ..cdal.method import CDALMethod
from ..data import DatasetInfo
from ..methods.base import MethodOption, SegMethod
from ..schedule import ddpm_linear_schedule
from .config import GENERATOR_FIELDS, SegDiffConfig
from .diffusion import eps_loss, sample_segdiff

__all__ = ["SegDiffMethod", "build_eps_generator"]


def build_eps_generator(cfg: SegDiffConfig, label_ch: int, image_ch: int) -> ConditionalGenerator:
    """cDAL's generator for ``cfg``'s widths with an unbounded output (the noise has no range)."""
    return ConditionalGenerator(label_channels=label_ch, image_channels=image_ch, out_activation="none",
                                **{f: getattr(cfg, f) for f in GENERATOR_FIELDS})


class SegDiffMethod(SegMethod):
    """SegDiff-style epsilon-prediction diffusion: net ``G`` (z = 0), optimiser ``g`` (Adam)."""

    name = "segdiff"
    config_class = SegDiffConfig
    cli_options = (
        MethodOption("--segdiff-steps", "timesteps", "diffusion steps T of the linear DDPM schedule (SegDiff: 100)",
                     type=int),
        MethodOption("--segdiff-ensemble", "ensemble", "ensemble members at inference (cDAL's 5; SegDiff used 9)",
                     type=int),
    )

    def __init__(self, cfg: Any, info: DatasetInfo, device: torch.device) -> None:
        super().__init__(cfg, info, device)
        mc = self.model_cfg
        if mc.image_norm == "monuseg" and info.in_channels != 3:
            raise ValueError(f"segdiff: image_norm 'monuseg' needs RGB images, dataset {info.name} has {info.in_channels} channel(s)")
        self.label_ch = label_channels(info.num_classes)
        self.sched = ddpm_linear_schedule(mc.timesteps).to(device)
        G = build_eps_generator(mc, self.label_ch, info.in_channels).to(device)
        if cfg.data.crop % G.divisor:
            raise ValueError(f"segdiff: crop {cfg.data.crop} must be divisible by {G.divisor} ({len(mc.ch_mult)} levels)")
        self.nets["G"] = G
        self.optimizers["g"] = torch.optim.Adam(G.parameters(), lr=mc.lr, betas=mc.adam_betas)
        self.n_ensemble = mc.ensemble

    @classmethod
    def train_overrides(cls, preset: str, dataset: str, model: Any) -> dict[str, Any]:
        """cDAL's loop settings for the same preset: the same budget of steps and minutes."""
        return CDALMethod.train_overrides(preset, dataset, model)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        """One Adam step on the epsilon MSE (DDPM Eq. 14) for ``batch`` (image (B, C, h, w) in [0, 1], label (B, h, w))."""
        mc = self.model_cfg
        self.n_ensemble = mc.val_ensemble
        image = batch["image"]
        if image.ndim != 4 or image.shape[1] != self.info.in_channels:
            raise ValueError(f"segdiff: batch image must be (B, {self.info.in_channels}, h, w), got {tuple(image.shape)}")
        x0 = labels_to_x0(batch["label"], self.info.num_classes)
        opt = self.optimizers["g"]
        opt.zero_grad(set_to_none=True)
        out = eps_loss(self.nets["G"], self.sched, x0, normalize_image(image.float(), mc.image_norm))
        out["loss"].backward()
        opt.step()
        return {"mse": float(out["loss"].detach())}

    def load_state_dict(self, state: dict[str, Any], with_optimizers: bool = True) -> None:
        """Load weights; a reload (end of training, or a saved run) switches ``predict`` to the full ensemble."""
        super().load_state_dict(state, with_optimizers)
        self.n_ensemble = self.model_cfg.ensemble

    @torch.no_grad()
    def predict(self, image: torch.Tensor, text: Sequence[str] | None = None) -> torch.Tensor:
        """Class probabilities (B, K, h, w) from the mean of ``self.n_ensemble`` T-step chains (re-seeded: deterministic)."""
        gen = torch.Generator(device=image.device)
        gen.manual_seed(int(self.cfg.seed))
        r = sample_segdiff(self.nets["G"], self.sched, normalize_image(image.float(), self.model_cfg.image_norm),
                           n_samples=self.n_ensemble, clip_x0=self.model_cfg.clip_x0, generator=gen)
        return x0_to_probs(r["mean"] * 2.0 - 1.0)

    def inference_roi(self) -> int | None:
        return self.cfg.data.crop

    def run_info(self) -> dict[str, Any]:
        G = self.nets["G"]
        return {"G_parameters": G.num_parameters(), "timesteps": self.model_cfg.timesteps,
                "ensemble": self.model_cfg.ensemble, "nfe_per_window": self.model_cfg.timesteps * self.model_cfg.ensemble}
