"""Building blocks shared by cDAL's generator and discriminator (NCSN++/DDGAN conventions).

* :func:`timestep_embedding`: the sinusoidal embedding of integer code times;
* :func:`variance_scaling_`, :func:`init_conv`, :func:`init_linear`: DDPM's fan-avg uniform initialisation
  (``init_scale=0`` gives the near-zero init of convolutions that close a residual branch);
* :func:`fir_downsample`, :func:`fir_upsample`: the StyleGAN2 [1,3,3,1] FIR re-sampling in plain PyTorch
  (depthwise convolutions, no custom GPU kernel); :func:`down`, :func:`up` pick FIR or the cheaper
  average-pool / nearest pair (``resample='avg'``, the small-CPU choice).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["timestep_embedding", "variance_scaling_", "init_conv", "init_linear", "fir_kernel", "fir_downsample",
           "fir_upsample", "depthwise_blur", "down", "up", "body_groups", "encoder_groups"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer times ``t`` (B,) -> (B, dim): [sin(t w_i), cos(t w_i)], w_i = P^(-i/(h-1)).

    Same convention as DDPM/NCSN++ (``get_timestep_embedding``): h = dim // 2 frequencies from 1 down to
    1/max_period, sine half first; an odd ``dim`` is zero-padded.
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding: t must be (B,), got shape {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(max_period) / max(half - 1, 1)))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def variance_scaling_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """DDPM initialisation: uniform variance scaling with fan_avg; ``scale = 0`` means 1e-10 (near-zero init)."""
    scale = 1e-10 if scale == 0 else scale
    receptive = weight[0, 0].numel() if weight.ndim > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def init_conv(cin: int, cout: int, k: int = 3, init_scale: float = 1.0, bias: bool = True, stride: int = 1,
          padding: int | None = None) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2 if padding is None else padding, bias=bias)
    variance_scaling_(conv.weight, init_scale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def init_linear(cin: int, cout: int, init_scale: float = 1.0) -> nn.Linear:
    lin = nn.Linear(cin, cout)
    variance_scaling_(lin.weight, init_scale)
    nn.init.zeros_(lin.bias)
    return lin


def body_groups(c: int) -> int:
    return max(1, min(c // 4, 32))


def encoder_groups(c: int) -> int:
    return max(g for g in range(1, 33) if c % g == 0)


def fir_kernel(taps: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """Separable 2-D FIR kernel ``outer(k, k) / sum`` (4, 4) for the StyleGAN2 [1,3,3,1] filter."""
    k = torch.tensor(taps, dtype=torch.float32)
    k2 = torch.outer(k, k)
    return k2 / k2.sum()


def depthwise_blur(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    return F.conv2d(x, k.to(x)[None, None].expand(c, 1, *k.shape), groups=c)


def fir_downsample(x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
    """Blur with the FIR kernel and keep every second pixel: (B, C, H, W) -> (B, C, H/2, W/2).

    Equivalent to upfirdn2d(x, k, down=2, pad=(1, 1)) of StyleGAN2, in plain PyTorch.
    """
    k = fir_kernel() if k is None else k
    p = k.shape[0] - 2
    x = F.pad(x, ((p + 1) // 2, p // 2, (p + 1) // 2, p // 2))
    return depthwise_blur(x, k)[:, :, ::2, ::2]


def fir_upsample(x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-insertion up-sampling followed by the FIR kernel (x4 gain): (B, C, H, W) -> (B, C, 2H, 2W).

    Equivalent to upfirdn2d(x, 4k, up=2, pad=(2, 1)) of StyleGAN2, in plain PyTorch.
    """
    k = fir_kernel() if k is None else k
    b, c, h, w = x.shape
    up = x.new_zeros(b, c, h * 2, w * 2)
    up[:, :, ::2, ::2] = x
    p = k.shape[0] - 2
    up = F.pad(up, ((p + 1) // 2 + 1, p // 2, (p + 1) // 2 + 1, p // 2))
    return depthwise_blur(up, k * 4)


def down(x: torch.Tensor, resample: str) -> torch.Tensor:
    return fir_downsample(x) if resample == "fir" else F.avg_pool2d(x, 2)


def up(x: torch.Tensor, resample: str) -> torch.Tensor:
    return fir_upsample(x) if resample == "fir" else F.interpolate(x, scale_factor=2.0, mode="nearest")
