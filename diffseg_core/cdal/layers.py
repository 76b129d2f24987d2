"""Building blocks shared by cDAL's generator and discriminator (NCSN++/DDGAN conventions).

* :func:`timestep_embedding`: the sinusoidal embedding of integer code times;
* :func:`variance_scaling_`, :func:`init_conv`, :func:`init_linear`: DDPM's fan-avg uniform initialisation
  (``init_scale=0`` gives the near-zero init of convolutions that close a residual branch);
* :func:`fir_downsample`, :func:`fir_upsample`: the StyleGAN2 [1,3,3,1] FIR re-sampling in plain PyTorch
  (depthwise convolutions, no custom GPU kernel); :func:`down`, :func:`up` pick FIR or the cheaper
  average-pool / nearest pair (``resample='avg'``, the small-CPU choice).

**Dimension-generic.** Every helper works on 2-D maps ``(B, C, H, W)`` and on 3-D volumes ``(B, C, D, H, W)``
(the native 3-D cDAL of chapter 08): :func:`conv_nd` picks ``nn.Conv2d`` or ``nn.Conv3d`` from
``spatial_dims`` **at construction**, so a 2-D network keeps exactly its parameter names and shapes (the
authors' checkpoints load by those names), and the FIR filter becomes the separable [1,3,3,1]^{x3} kernel in
3-D. Re-sampling reads the number of spatial axes from the tensor it is given.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["timestep_embedding", "variance_scaling_", "conv_nd", "init_conv", "init_linear", "fir_kernel",
           "fir_downsample", "fir_upsample", "depthwise_blur", "avg_pool", "down", "up", "body_groups",
           "encoder_groups", "check_spatial_dims", "broadcast_channels"]

_CONVS: dict[int, type[nn.Module]] = {2: nn.Conv2d, 3: nn.Conv3d}


def check_spatial_dims(spatial_dims: int, where: str) -> int:
    """``spatial_dims`` as an int in {2, 3}; a clear error naming ``where`` otherwise."""
    if spatial_dims not in _CONVS:
        raise ValueError(f"{where}: spatial_dims must be 2 (slices) or 3 (volumes), got {spatial_dims!r}")
    return int(spatial_dims)


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` for ``spatial_dims = 2``, ``nn.Conv3d`` for 3 (as MONAI's ``Conv[Conv.CONV, dims]``)."""
    return _CONVS[check_spatial_dims(spatial_dims, "conv_nd")]


def broadcast_channels(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-channel vector ``(B, C)`` viewed as ``(B, C, 1, ..., 1)`` to broadcast over ``like``'s spatial axes."""
    return v.reshape(*v.shape[:2], *([1] * (like.ndim - 2)))


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
              padding: int | None = None, spatial_dims: int = 2) -> nn.Module:
    """A ``k``-wide convolution (2-D or 3-D) with DDPM's variance-scaling init and a zero bias."""
    conv = conv_nd(spatial_dims)(cin, cout, k, stride=stride, padding=k // 2 if padding is None else padding, bias=bias)
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


def fir_kernel(taps: Sequence[float] = (1, 3, 3, 1), spatial_dims: int = 2) -> torch.Tensor:
    """Separable FIR kernel ``outer(k, k[, k]) / sum``: (4, 4) in 2-D, (4, 4, 4) in 3-D, for StyleGAN2's [1,3,3,1]."""
    k = torch.tensor(taps, dtype=torch.float32)
    kn = k
    for _ in range(check_spatial_dims(spatial_dims, "fir_kernel") - 1):
        kn = kn[..., None] * k
    return kn / kn.sum()


def depthwise_blur(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of ``x`` (B, C, *S) with the same kernel ``k`` (one axis per spatial axis), no padding."""
    c = x.shape[1]
    conv = F.conv2d if k.ndim == 2 else F.conv3d
    return conv(x, k.to(x)[None, None].expand(c, 1, *k.shape), groups=c)


def _same_pad(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    return F.pad(x, (lo, hi) * (x.ndim - 2))


def _every_second(x: torch.Tensor) -> torch.Tensor:
    return x[(slice(None), slice(None)) + (slice(None, None, 2),) * (x.ndim - 2)]


def fir_downsample(x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
    """Blur with the FIR kernel and keep every second pixel: (B, C, H, W) -> (B, C, H/2, W/2) (3-D alike).

    Equivalent to upfirdn2d(x, k, down=2, pad=(1, 1)) of StyleGAN2, in plain PyTorch.
    """
    k = fir_kernel(spatial_dims=x.ndim - 2) if k is None else k
    p = k.shape[0] - 2
    return _every_second(depthwise_blur(_same_pad(x, (p + 1) // 2, p // 2), k))


def fir_upsample(x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-insertion up-sampling followed by the FIR kernel (gain 2 per axis): (B, C, H, W) -> (B, C, 2H, 2W)
    (3-D alike).

    Equivalent to upfirdn2d(x, 4k, up=2, pad=(2, 1)) of StyleGAN2, in plain PyTorch.
    """
    k = fir_kernel(spatial_dims=x.ndim - 2) if k is None else k
    b, c, *spatial = x.shape
    up = x.new_zeros(b, c, *(2 * s for s in spatial))
    up[(slice(None), slice(None)) + (slice(None, None, 2),) * len(spatial)] = x
    p = k.shape[0] - 2
    return depthwise_blur(_same_pad(up, (p + 1) // 2 + 1, p // 2), k * 2 ** len(spatial))


def avg_pool(x: torch.Tensor) -> torch.Tensor:
    """2x average pooling on every spatial axis (2-D or 3-D)."""
    return F.avg_pool2d(x, 2) if x.ndim == 4 else F.avg_pool3d(x, 2)


def down(x: torch.Tensor, resample: str) -> torch.Tensor:
    return fir_downsample(x) if resample == "fir" else avg_pool(x)


def up(x: torch.Tensor, resample: str) -> torch.Tensor:
    return fir_upsample(x) if resample == "fir" else F.interpolate(x, scale_factor=2.0, mode="nearest")
