"""Diffusion features for TextDiff: a frozen denoising U-Net read out at a few noise levels.

TextDiff (Feng, MICCAI 2024, Sec. 2.1), following ddpm-segmentation, noises the image with the forward
process, whose step q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) is TextDiff Eq. 1, in one shot
through its closed form (DDPM Eq. 4; not numbered in TextDiff)::

    q(x_t | x_0) = N(x_t; sqrt(abar_t) x_0, (1 - abar_t) I),   abar_t = prod_{s<=t} (1 - beta_s)

i.e. ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``. It then reads the network of the reverse process
(TextDiff Eq. 2, p_theta(x_{t-1} | x_t)): it runs the frozen denoiser once per
``t in {50, 150, 250}`` of a 1000-step linear schedule (beta 1e-4 -> 0.02) with **one shared noise
tensor** ``eps``, and reads the outputs of chosen decoder blocks with forward hooks. For each block the
three steps are **concatenated along channels at the block's own resolution** (book/decisions.md).

The paper's backbone is OpenAI's ImageNet 256x256 unconditional ADM (553 M parameters,
``256x256_diffusion_uncond.pt``). It cannot be downloaded here (no model hub, book/decisions.md) and costs
~24 s per forward on 2 CPU threads, so the default **substitute** is a small MONAI
``DiffusionModelUNet`` trained with ``DDPMScheduler`` (same 1000-step linear schedule, epsilon
prediction) by :func:`pretrain_ddpm` on the *unlabelled* training images of the chosen dataset, for a
short run set by the preset, on random crops (the U-Net is convolutional, so features are then read on
whole images). This removes the large-scale natural-image pre-training the paper credits for its gains;
the notebooks say so. A user checkpoint can replace it (:func:`load_backbone`).

Blocks (book/decisions.md, T6): ADM's block indices ({6, 8, 12, 16} for MoNuSeg = 32, 64, 128, 256 px of a
256 input) only mean something for ADM's 18-block decoder. We choose blocks by **relative resolution**
(1/8, 1/4, 1/2, 1 of the input, the same as the MoNuSeg config) with :func:`select_blocks_by_resolution`.
A "decoder block" here is one layer of a MONAI up-block (a ResNet block, followed by its attention layer
when the level has one), the closest analogue of an ADM ``output_blocks`` entry; per resolution we take
the **last** layer of the level (the most decoded features at that scale, before up-sampling).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..schedule import ddpm_linear_schedule, linear_betas, q_sample
from .backbone import freeze

__all__ = ["ADM_STEPS", "ddpm_signal_levels", "DecoderBlock", "decoder_blocks", "select_blocks_by_resolution",
           "DiffusionFeatureExtractor"]

#: length of the linear schedule the backbone is trained and read on (ADM-256, TextDiff: 1000 steps)
ADM_STEPS = 1000


def ddpm_signal_levels(timesteps: Sequence[int]) -> torch.Tensor:
    """Signal amplitude ``sqrt(abar_t) = sqrt(prod_{s<=t} (1 - beta_s))`` of q(x_t | x_0) at each network time
    ``t`` (ADM's 1000 linear betas, :func:`~diffseg_core.schedule.linear_betas`), ``(n,)`` float64.

    ``t`` counts from 0 as ADM and MONAI do, so it is level ``t + 1`` of our
    :func:`~diffseg_core.schedule.ddpm_linear_schedule` (which keeps the clean image at level 0). The noise
    amplitude is ``sqrt(1 - signal**2)``. For TextDiff's t = 50/150/250: signal 0.985 / 0.887 / 0.722,
    noise 0.173 / 0.463 / 0.692.
    """
    t = torch.as_tensor(list(timesteps), dtype=torch.long)
    if t.numel() == 0 or int(t.min()) < 0 or int(t.max()) >= ADM_STEPS:
        raise ValueError(f"timesteps {list(timesteps)} must be non-empty and in [0, {ADM_STEPS})")
    return torch.cumprod(1.0 - linear_betas(ADM_STEPS), dim=0)[t].sqrt()


@dataclass(frozen=True)
class DecoderBlock:
    """One hookable decoder layer: its global ``index``, U-Net ``level`` (0 = full resolution),
    ``fraction`` of the input resolution (``2**-level``), output ``channels`` and the ``module`` hooked."""

    index: int
    level: int
    fraction: float
    channels: int
    module: nn.Module


def decoder_blocks(unet: nn.Module) -> list[DecoderBlock]:
    """All decoder layers of a MONAI ``DiffusionModelUNet``, coarsest first (like ADM's ``output_blocks``).

    A backbone with its own ``decoder_blocks()`` method (ADM-256, :class:`~diffseg_core.textdiff.adm.ADMUNet`,
    whose blocks are its ``output_blocks``) is asked for them instead.

    Each up-block (one per level) holds ``num_res_blocks + 1`` layers; a layer is its ResNet block, or the
    attention layer that follows it where the level has attention. The up-sampler at the end of a level
    is not a separate block (its output is an up-sampled copy of the level's last layer).
    """
    if hasattr(unet, "decoder_blocks"):  # a backbone that lists its own blocks (ADM, :mod:`.adm`)
        return [DecoderBlock(b.index, b.level, b.fraction, b.channels, b.module) for b in unet.decoder_blocks()]
    ups = getattr(unet, "up_blocks", None)
    if ups is None:
        raise TypeError(f"decoder_blocks: expected a MONAI DiffusionModelUNet, got {type(unet).__name__}")
    n = len(ups)
    out: list[DecoderBlock] = []
    for k, up in enumerate(ups):
        level = n - 1 - k
        attns = getattr(up, "attentions", None)
        for j, res in enumerate(up.resnets):
            module = attns[j] if attns is not None else res
            out.append(DecoderBlock(len(out), level, 2.0 ** -level, int(res.out_channels), module))
    return out


def select_blocks_by_resolution(unet: nn.Module, image_size: int | None = None,
                                fractions: Sequence[float] = (1 / 8, 1 / 4, 1 / 2, 1)) -> list[int]:
    """Decoder block indices at the given fractions of the input resolution (the last layer of each level).

    ``(1/8, 1/4, 1/2, 1)`` at a 256 input is 32, 64, 128 and 256 px: the resolutions of TextDiff's MoNuSeg
    blocks {6, 8, 12, 16} of ADM-256. ``image_size`` (optional) is only checked for divisibility.
    Raises ``ValueError`` naming the available fractions when one is missing.
    """
    blocks = decoder_blocks(unet)
    levels = 1 + max(b.level for b in blocks)
    if image_size is not None and image_size % 2 ** (levels - 1):
        raise ValueError(f"image_size {image_size} is not divisible by {2 ** (levels - 1)} ({levels} levels)")
    chosen = []
    for f in fractions:
        if f <= 0:
            raise ValueError(f"block fraction {f} must be positive")
        level = -math.log2(f)
        at = [b for b in blocks if abs(b.level - level) < 1e-6]
        if not at:
            have = sorted({b.fraction for b in blocks}, reverse=True)
            raise ValueError(f"no decoder block at {f:g} of the input resolution; this backbone has "
                             f"{', '.join(f'{h:g}' for h in have)}")
        chosen.append(at[-1].index)
    return chosen


# ---------------------------------------------------------------------------------------------
# Feature extraction and cache
# ---------------------------------------------------------------------------------------------
class DiffusionFeatureExtractor:
    """Frozen diffusion U-Net + forward hooks -> multi-scale features of images.

    Args:
        unet: a MONAI ``DiffusionModelUNet`` (frozen here: eval mode, no gradients).
        timesteps: noise levels ``t`` of the 1000-step linear schedule (paper: 50, 150, 250).
        blocks: decoder block indices (default: :func:`select_blocks_by_resolution` at 1/8, 1/4, 1/2, 1).
        noise_seed: seed of the **one shared noise tensor** (the official code's ``share_noise``, seed 40):
            the same ``eps`` is used for every image and every ``t``, so features are a deterministic
            function of the image.
    """

    def __init__(self, unet: nn.Module, timesteps: Sequence[int] = (50, 150, 250), blocks: Sequence[int] | None = None,
                 noise_seed: int = 0) -> None:
        self.unet = freeze(unet)
        self.timesteps = tuple(int(t) for t in timesteps)
        self.schedule = ddpm_linear_schedule(ADM_STEPS)  # the backbone's forward process (TextDiff Eq. 1)
        self.all_blocks = decoder_blocks(unet)
        self.blocks = list(blocks) if blocks is not None else select_blocks_by_resolution(unet)
        bad = [b for b in self.blocks if not 0 <= b < len(self.all_blocks)]
        if bad:
            raise ValueError(f"decoder block indices {bad} out of range 0..{len(self.all_blocks) - 1}")
        self.noise_seed = int(noise_seed)
        self.in_channels = int(unet.in_channels)
        self.levels = len(unet.block_out_channels)
        self._noise: dict[tuple[int, ...], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def feature_dims(self) -> list[int]:
        """Channels of each returned block: ``C_b x n_steps``."""
        return [self.all_blocks[b].channels * len(self.timesteps) for b in self.blocks]

    def fractions(self) -> list[float]:
        """Resolution of each returned block relative to the input."""
        return [self.all_blocks[b].fraction for b in self.blocks]

    def noise(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """The shared noise ``(1, C, H, W)`` for images of ``shape = (C, H, W)`` (seeded, cached)."""
        if shape not in self._noise:
            g = torch.Generator().manual_seed(self.noise_seed)
            self._noise[shape] = torch.randn((1, *shape), generator=g)
        return self._noise[shape]

    @torch.no_grad()
    def extract(self, images: torch.Tensor, return_per_step: bool = False) -> list[torch.Tensor]:
        """Features of ``images`` ``(B, C, H, W)`` in [0, 1] (grey ``C = 1`` images are repeated to RGB for a
        backbone that says ``grey_as_rgb``, the RGB ImageNet ADM-256).

        Returns one tensor per chosen block, ``(B, C_b * n_steps, h_b, w_b)``: the block's outputs at each
        ``t`` concatenated along channels (``t`` in the order given), at the block's native resolution.
        With ``return_per_step`` the per-step tensors are returned instead, as ``[block][step]``
        ``(B, C_b, h_b, w_b)`` (for plots).
        """
        if images.dim() == 4 and images.shape[1] == 1 and self.in_channels == 3 and getattr(self.unet, "grey_as_rgb", False):
            images = images.expand(-1, 3, -1, -1)  # a grey image read as RGB (three equal channels), for ADM-256
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"DiffusionFeatureExtractor.extract: images must be (B, {self.in_channels}, H, W), "
                             f"got {tuple(images.shape)}")
        H, W = images.shape[-2:]
        if H % 2 ** (self.levels - 1) or W % 2 ** (self.levels - 1):
            raise ValueError(f"DiffusionFeatureExtractor.extract: size {H}x{W} must be divisible by "
                             f"{2 ** (self.levels - 1)} ({self.levels} U-Net levels)")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise ValueError(f"DiffusionFeatureExtractor.extract: images must be in [0, 1], got [{lo:.3g}, {hi:.3g}]")
        device = self.device
        B, n = images.shape[0], len(self.timesteps)
        x0 = images.to(device, torch.float32) * 2 - 1  # ADM's inputs are in [-1, 1]
        eps = self.noise(tuple(images.shape[1:])).to(device)  # (1, C, H, W), shared by all images and steps
        t = torch.tensor(self.timesteps, device=device).repeat_interleave(B)  # (n*B,), step-major
        xt = q_sample(self.schedule, x0.repeat(n, 1, 1, 1), t + 1, eps)  # (n*B, C, H, W): q(x_t | x_0) at level t+1
        grabbed: dict[int, torch.Tensor] = {}
        handles = [self.all_blocks[b].module.register_forward_hook(
            lambda _m, _i, out, b=b: grabbed.__setitem__(b, out)) for b in self.blocks]
        try:
            self.unet(xt, t)
        finally:
            for h in handles:
                h.remove()
        feats, per_step = [], []
        for b in self.blocks:
            f = grabbed[b].float()  # (n*B, C_b, h, w)
            f = f.view(n, B, *f.shape[1:])
            per_step.append([f[s] for s in range(n)])
            feats.append(torch.cat([f[s] for s in range(n)], dim=1))  # steps concatenated on channels
        return per_step if return_per_step else feats
