"""cDAL's discriminator D(x_{t-1}, x_t, t) and the spatial attention map A_D (book/decisions.md, D6-D8).

cDAL states A_D without an equation number; it shapes the generator's training input of cDAL Eq. 4.

D is DDGAN's time-conditioned ResNet discriminator. It sees a **pair** of label maps, the less-noisy one
(level t, the paper's x_{t-1}) and the more-noisy one (level t+1, the paper's x_t), concatenated on
channels (less-noisy first), plus the code time t. It returns one logit per sample.

* time: sinusoidal embedding (``t_emb_dim``) -> Linear -> LeakyReLU(0.2) -> Linear, then LeakyReLU(0.2);
* body: a 1x1 start conv to ``2 ngf`` channels (stage 0), then one ``DownConvBlock`` per entry of
  ``channel_mults`` (stage i >= 1), each optionally halving the resolution with the [1,3,3,1] FIR filter
  (``resample='fir'``) or 2x2 average pooling (``'avg'``);
* head: minibatch-stddev channel (group of up to 4), 3x3 conv, LeakyReLU, **sum** over space, Linear -> logit;
* loss: the non-saturating logistic loss (:func:`d_logistic_loss`) and the R1 penalty on the real
  less-noisy input (:func:`r1_penalty`), gamma = 1, optionally lazy (D10);
* ``init='normal'`` re-initialises every conv weight from N(0, 0.02) as the official MoNuSeg/CXR script
  does (``weights_init_normal``); ``init='default'`` keeps DDGAN's variance scaling (Hippocampus).

Presets of the official code (ngf = 64, t_emb_dim = 256): ``Discriminator_large`` =
``channel_mults=(4, 8, 8, 8, 8, 8)``, six down-samplings, 27,736,705 parameters (MoNuSeg, CXR);
``Discriminator_small`` = ``channel_mults=(2, 4, 8, 8)`` with ``downsample=(False, True, True, True)``
(Hippocampus, t_emb_dim = 128: 12,462,849 parameters).

Feature maps for the attention (decision D5/D8): after every forward the per-stage outputs are kept on
``self.feature_maps`` (index 0 = start conv, index i = block i); :meth:`features` returns them without
building a graph. "Attention scale" is a **depth**: :meth:`stage_for_scale` maps a down-sampling factor
(4, 8, 16 = 1/4, 1/8, 1/16 of the input; 64/32/16 px at 256) to the stage index (2/3/4 for the large D).

**Native 3-D** (chapter 08, our extension): ``spatial_dims=3`` builds the same discriminator with
``nn.Conv3d`` (chosen at construction, so 2-D parameter names and counts do not change); it judges pairs of
label volumes (B, Cl, D, H, W), sums its last feature map over all voxels, and :func:`spatial_attention`
up-samples the channel mean trilinearly.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import broadcast_channels, check_spatial_dims, down, init_conv, init_linear, timestep_embedding

if TYPE_CHECKING:
    from .config import CDALConfig

__all__ = ["DownConvBlock", "TimeConditionedDiscriminator", "spatial_attention", "r1_penalty", "d_logistic_loss",
           "build_discriminator"]


class DownConvBlock(nn.Module):
    """``LReLU -> conv3x3 -> + Linear(t_emb) -> LReLU -> (down) -> conv3x3(~0)``, skip ``(down) -> 1x1 conv``, sum / sqrt 2.

    ``x`` (B, Cin, H, W), ``temb`` (B, t_emb_dim) -> (B, Cout, H/2 or H, W/2 or W); 3-D alike (B, Cin, D, H, W).
    """

    def __init__(self, in_ch: int, out_ch: int, t_emb_dim: int, downsample: bool = True, resample: str = "fir",
                 spatial_dims: int = 2) -> None:
        super().__init__()
        self.conv1 = init_conv(in_ch, out_ch, 3, spatial_dims=spatial_dims)
        self.conv2 = init_conv(out_ch, out_ch, 3, init_scale=0.0, spatial_dims=spatial_dims)
        self.dense_t = init_linear(t_emb_dim, out_ch)
        self.skip = init_conv(in_ch, out_ch, 1, bias=False, spatial_dims=spatial_dims)
        self.downsample, self.resample = downsample, resample

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        return down(x, self.resample)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.leaky_relu(x, 0.2)) + broadcast_channels(self.dense_t(temb), x)
        out = F.leaky_relu(out, 0.2)
        if self.downsample:
            out, x = self._down(out), self._down(x)
        return (self.conv2(out) + self.skip(x)) / math.sqrt(2.0)


class TimeConditionedDiscriminator(nn.Module):
    """DDGAN's time-conditioned discriminator with per-stage feature maps for cDAL's attention.

    Args:
        in_channels: channels of the concatenated pair, i.e. 2 x label channels.
        ngf: base width; the start conv has ``2 ngf`` channels and block i has ``ngf * channel_mults[i]``.
        channel_mults: width multipliers of the ``DownConvBlock`` stages.
        downsample: per stage, whether it halves the resolution (default: all True).
        t_emb_dim: size of the time embedding.
        resample: 'fir' ([1,3,3,1]) or 'avg' (2x2 average pooling).
        init: 'normal' (conv weights ~ N(0, 0.02), MoNuSeg/CXR) or 'default' (variance scaling).
        stddev_group: minibatch-stddev group size (4; reduced to a divisor of the batch when needed).
        spatial_dims: 2 (label maps, the paper) or 3 (label volumes, chapter 08).
    """

    def __init__(self, in_channels: int = 2, ngf: int = 64, channel_mults: Sequence[int] = (4, 8, 8, 8, 8, 8),
                 downsample: Sequence[bool] | None = None, t_emb_dim: int = 256, resample: str = "fir",
                 init: str = "normal", stddev_group: int = 4, spatial_dims: int = 2) -> None:
        super().__init__()
        self.spatial_dims = dims = check_spatial_dims(spatial_dims, "TimeConditionedDiscriminator")
        if resample not in ("fir", "avg"):
            raise ValueError(f"TimeConditionedDiscriminator: resample must be 'fir' or 'avg', got {resample!r}")
        if init not in ("normal", "default"):
            raise ValueError(f"TimeConditionedDiscriminator: init must be 'normal' or 'default', got {init!r}")
        downsample = tuple(downsample) if downsample is not None else (True,) * len(channel_mults)
        if len(downsample) != len(channel_mults):
            raise ValueError("TimeConditionedDiscriminator: downsample and channel_mults must have the same length")
        self.in_channels, self.t_emb_dim, self.stddev_group = in_channels, t_emb_dim, stddev_group
        self.t_embed = nn.Sequential(init_linear(t_emb_dim, t_emb_dim), nn.LeakyReLU(0.2), init_linear(t_emb_dim, t_emb_dim))
        self.start_conv = init_conv(in_channels, 2 * ngf, 1, spatial_dims=dims)
        chans = [2 * ngf] + [ngf * m for m in channel_mults]
        self.blocks = nn.ModuleList([DownConvBlock(chans[i], chans[i + 1], t_emb_dim, downsample[i], resample, dims)
                                     for i in range(len(channel_mults))])
        self.final_conv = init_conv(chans[-1] + 1, chans[-1], 3, spatial_dims=dims)
        self.end_linear = init_linear(chans[-1], 1)
        # cumulative down-sampling factor of each stage (index 0 = start conv)
        self.stage_factors = [1]
        for d in downsample:
            self.stage_factors.append(self.stage_factors[-1] * (2 if d else 1))
        self.feature_maps: list[torch.Tensor] = []
        if init == "normal":
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                    nn.init.normal_(m.weight, 0.0, 0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def stage_for_scale(self, scale: int) -> int:
        """Stage index whose output is 1/``scale`` of the input (4/8/16 -> 2/3/4 for the large D)."""
        if scale not in self.stage_factors:
            raise ValueError(f"attention scale {scale} is not available in this discriminator: its stages "
                             f"down-sample by {self.stage_factors} (index = stage)")
        return self.stage_factors.index(scale)

    def _stages(self, x_less: torch.Tensor, x_more: torch.Tensor, t: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        if x_less.ndim != 2 + self.spatial_dims:
            raise ValueError(f"discriminator: inputs must have {self.spatial_dims} spatial axes, got {tuple(x_less.shape)}")
        if x_less.shape != x_more.shape or x_less.shape[1] * 2 != self.in_channels:
            raise ValueError(f"discriminator: pair shapes {tuple(x_less.shape)} and {tuple(x_more.shape)} must match and "
                             f"together have {self.in_channels} channels")
        if t.shape != (x_less.shape[0],):
            raise ValueError(f"discriminator: t must be (B,) = ({x_less.shape[0]},), got {tuple(t.shape)}")
        temb = F.leaky_relu(self.t_embed(timestep_embedding(t, self.t_emb_dim)), 0.2)
        h = self.start_conv(torch.cat([x_less, x_more], dim=1))
        feats = [h]
        for blk in self.blocks:
            h = blk(h, temb)
            feats.append(h)
        return feats, h

    def _group(self, batch: int) -> int:
        g = min(batch, self.stddev_group)
        while batch % g:
            g -= 1
        return g

    def forward(self, x_less: torch.Tensor, x_more: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits (B,) for the pair (x_less (B, Cl, H, W) at level t, x_more (B, Cl, H, W) at level t+1), t (B,).

        In 3-D the pair is (B, Cl, D, H, W) and the last feature map is summed over all voxels."""
        feats, out = self._stages(x_less, x_more, t)
        self.feature_maps = [f.detach() for f in feats]
        b, c, *spatial = out.shape
        axes = tuple(range(2, 2 + len(spatial)))
        g = self._group(b)
        std = out.reshape(g, -1, 1, c, *spatial)                     # minibatch stddev (StyleGAN2), groups strided
        std = torch.sqrt(std.var(0, unbiased=False) + 1e-8).mean([a + 1 for a in axes] + [2], keepdim=True).squeeze(2)
        out = torch.cat([out, std.repeat(g, 1, *spatial)], dim=1)
        out = F.leaky_relu(self.final_conv(out), 0.2)
        return self.end_linear(out.sum(dim=axes)).squeeze(1)

    @torch.no_grad()
    def features(self, x_less: torch.Tensor, x_more: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage feature maps (no gradient): index 0 start conv (B, 2ngf, H, W), index i block i."""
        feats, _ = self._stages(x_less, x_more, t)
        self.feature_maps = feats
        return feats


def spatial_attention(features: Sequence[torch.Tensor], index: int, size: tuple[int, ...],
                      norm: str = "raw") -> torch.Tensor:
    """cDAL's spatial attention map A_D = up( (1/C) sum_c F_c ) (unnumbered in cDAL; book/decisions.md, D6).

    Args:
        features: per-stage maps of D (``features[index]`` is (B, C, h, w), or (B, C, d, h, w) in 3-D).
        index: the stage to use (:meth:`TimeConditionedDiscriminator.stage_for_scale`).
        size: (H, W) of the label map, or (D, H, W) in 3-D; bilinear (3-D: trilinear) up-sampling,
            align_corners=False (PyTorch default).
        norm: 'raw' (faithful: the signed channel mean, no normalisation) or 'minmax' (rescaled per
            sample to [0, 1]; our option, because the raw map is ~0.01 at initialisation).
    Returns:
        A (B, 1, H, W), or (B, 1, D, H, W).
    """
    if not 0 <= index < len(features):
        raise ValueError(f"spatial_attention: index {index} out of range for {len(features)} feature maps")
    if norm not in ("raw", "minmax"):
        raise ValueError(f"spatial_attention: norm must be 'raw' or 'minmax', got {norm!r}")
    a = features[index].mean(dim=1, keepdim=True)
    if len(size) != a.ndim - 2:
        raise ValueError(f"spatial_attention: size {tuple(size)} does not match feature maps {tuple(a.shape)}")
    a = F.interpolate(a, size=tuple(size), mode="bilinear" if a.ndim == 4 else "trilinear", align_corners=False)
    if norm == "minmax":
        axes = tuple(range(2, a.ndim))
        lo = a.amin(dim=axes, keepdim=True)
        hi = a.amax(dim=axes, keepdim=True)
        a = (a - lo) / (hi - lo).clamp_min(1e-8)
    return a


def r1_penalty(real_logits: torch.Tensor, x_less: torch.Tensor) -> torch.Tensor:
    """R1 penalty per sample, ||d sum(D(real)) / d x_less||^2 (B,), with a graph (``create_graph=True``).

    ``x_less`` must require grad and be the less-noisy input of the real pair; the caller scales by gamma/2
    and averages over the batch (book/decisions.md).
    """
    if not x_less.requires_grad:
        raise ValueError("r1_penalty: x_less must require grad (call x_less.requires_grad_() before D)")
    (grad,) = torch.autograd.grad(real_logits.sum(), x_less, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(dim=1)


def d_logistic_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Non-saturating logistic loss: softplus(-logit) for real pairs, softplus(logit) for fakes; mean over B."""
    return F.softplus(-logits if real else logits).mean()


def build_discriminator(cfg: "CDALConfig", label_ch: int) -> TimeConditionedDiscriminator:
    """The discriminator of a :class:`~diffseg_core.cdal.config.CDALConfig` for pairs of ``label_ch``-channel maps."""
    return TimeConditionedDiscriminator(in_channels=2 * label_ch, ngf=cfg.d_ngf, channel_mults=cfg.d_stages,
                                        downsample=cfg.d_downsample, t_emb_dim=cfg.d_t_emb_dim,
                                        resample=cfg.d_resample, init=cfg.d_init,
                                        spatial_dims=getattr(cfg, "spatial_dims", 2))
