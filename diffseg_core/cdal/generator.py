"""cDAL's generator x_theta(x_t, t, I, z): DDGAN's NCSN++ with AdaGN, plus a light image encoder (book/decisions.md).

The generator predicts the **clean label** x0 (tanh-bounded, in [-1, 1]) from the noisy label x_{t+1}
(code time ``t``, see :mod:`diffseg_core.schedule`), the image I and a latent z ~ N(0, I_nz).

Architecture, top to bottom (every choice follows the official code unless stated):

* **time embedding**: sinusoidal embedding of the integer code time (dim ``nf``, max period 10000, sin half
  then cos half), Linear(nf, 4nf) -> SiLU -> Linear(4nf, 4nf); every ResNet block adds its own
  Linear(SiLU(t_emb)) as a per-channel bias;
* **latent z**: a mapping network (PixelNorm, Linear(nz, z_emb) + SiLU, then ``n_mlp`` x [Linear + SiLU])
  produces a style vector that drives **both** GroupNorms of **every** ResNet block (AdaGN:
  ``gamma(w) * GN(h) + beta(w)``, gamma initialised to 1 and beta to 0). ``z = None`` means z = 0 (the
  "w/o latent" ablation, D18): the architecture is unchanged, the style is constant;
* **image encoder** (the paper's "light encoder"): 3x3 conv to nf channels, then ``enc_blocks`` plain
  residual blocks at full resolution (no time, no z). Its output is **added once**, to the output of the
  generator's input conv, before the first ResNet block (D19), so the long skip to the last decoder block
  also carries the image (SegDiff's "F(x_t) + G(I)");
* **U-Net body** (BigGAN-style NCSN++): per level ``num_res_blocks`` AdaGN ResNet blocks (+ self-attention
  where the level's resolution is in ``attn_resolutions``), a down-sampling ResNet block between levels;
  input pyramid (``progressive_input``, 'residual'): the noisy label is re-sampled by a FIR 3x3 conv at
  every down-sampling and merged as (pyramid + h)/sqrt(2); middle ResNet -> attention -> ResNet; decoder
  with ``num_res_blocks + 1`` blocks per level on [h, skip]; head GroupNorm -> SiLU -> 3x3 conv (~0 init)
  -> **tanh**;
* **re-sampling**: ``resample='fir'`` is the StyleGAN2 [1,3,3,1] FIR filter written in plain PyTorch
  (depthwise convolutions, no custom GPU kernel; :func:`fir_downsample`, :func:`fir_upsample`);
  ``resample='avg'`` uses 2x2 average pooling and nearest up-sampling (cheaper; book/decisions.md recommends it
  on the CPU).

Choices against the official code (documented here because they change behaviour slightly):

* ``attn_resolutions`` are read relative to ``image_size`` and fixed to **levels** at construction, so the
  same network runs on any input whose side is divisible by 2**(levels-1) (e.g. a 64-px crop during
  training, a larger window at inference). The official code compares the runtime width with the list.
* GroupNorm group counts are ``min(C // 4, 32)`` in the body (as in the code) and the largest divisor of C
  that is <= 32 in the image encoder (the code hard-codes 32 groups, which fails for nf < 32; identical
  whenever nf is a multiple of 32).

**Native 3-D** (chapter 08; our extension, the paper names slice-wise processing as its limitation):
``spatial_dims=3`` builds the same network with ``nn.Conv3d`` (chosen at construction by
:func:`~diffseg_core.cdal.layers.conv_nd`, so the 2-D network keeps its parameter names, shapes and counts),
3-D FIR or average-pool re-sampling and self-attention over all voxels of a level. Every tensor then has
one more spatial axis: ``x_t`` (B, Cl, D, H, W), ``image`` (B, Ci, D, H, W).

**Text-conditioned cDAL** (chapter 13; our extension joining the two papers): with ``text_dim > 0`` the
generator gains two TextDiff cross-modal blocks (:class:`~diffseg_core.textdiff.cross_attention.CrossModalBlock`,
TextDiff Eq. 3 at their core; imported, not copied) at its **lowest resolution**: one in the middle, after the
middle self-attention, and one after the coarsest decoder level. Each pixel of those maps attends to the
``L`` frozen text tokens ``(B, L, text_dim)`` passed to :meth:`ConditionalGenerator.forward` as ``text``.
With ``text_dim = 0`` (the default) no module is added: parameter names and counts are those of plain cDAL.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..textdiff.cross_attention import CrossModalBlock
from .layers import (avg_pool, body_groups, broadcast_channels, check_spatial_dims, conv_nd, depthwise_blur, down,
                     encoder_groups, fir_kernel, init_conv, init_linear, timestep_embedding, up)

if TYPE_CHECKING:
    from .config import CDALConfig

__all__ = [
    "PixelNorm", "MappingNetwork", "AdaptiveGroupNorm", "ImageEncoder", "CondResBlock", "SelfAttention",
    "PyramidDown", "ConditionalGenerator", "build_generator", "draw_latent",
]



# ------------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------------
class PixelNorm(nn.Module):
    """x / sqrt(mean(x^2 over features) + 1e-8). (B, D) -> (B, D)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class MappingNetwork(nn.Module):
    """z (B, nz) -> style w (B, z_emb_dim): PixelNorm, Linear(nz, z_emb) + SiLU, then n_mlp x (Linear + SiLU)."""

    def __init__(self, nz: int = 100, z_emb_dim: int = 256, n_mlp: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [PixelNorm(), init_linear(nz, z_emb_dim), nn.SiLU()]
        for _ in range(n_mlp):
            layers += [init_linear(z_emb_dim, z_emb_dim), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.nz, self.z_emb_dim = nz, z_emb_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.nz:
            raise ValueError(f"MappingNetwork: z must be (B, {self.nz}), got shape {tuple(z.shape)}")
        return self.net(z)


class AdaptiveGroupNorm(nn.Module):
    """AdaGN: ``gamma(w) * GroupNorm(h) + beta(w)`` with (gamma, beta) = Linear(w) (book/decisions.md).

    ``h`` (B, C, H, W) or (B, C, D, H, W), ``w`` (B, style_dim) -> same shape as ``h``. The GroupNorm has no
    affine parameters; the Linear's bias starts at gamma = 1, beta = 0, so with a zero style the layer is a
    plain GroupNorm.
    """

    def __init__(self, num_groups: int, channels: int, style_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels, affine=False, eps=1e-6)
        self.style = init_linear(style_dim, 2 * channels)
        with torch.no_grad():
            self.style.bias[:channels] = 1.0
            self.style.bias[channels:] = 0.0

    def forward(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        gamma, beta = broadcast_channels(self.style(w), h).chunk(2, dim=1)
        return torch.addcmul(beta, gamma, self.norm(h))        # gamma * GN(h) + beta in one pass


class EncoderBlock(nn.Module):
    """Plain residual block of the image encoder: x + [GN -> SiLU -> conv3x3 -> GN -> SiLU -> dropout -> conv3x3(0)]."""

    def __init__(self, channels: int, dropout: float = 0.0, spatial_dims: int = 2) -> None:
        super().__init__()
        g = encoder_groups(channels)
        conv = conv_nd(spatial_dims)
        self.body = nn.Sequential(
            nn.GroupNorm(g, channels), nn.SiLU(), conv(channels, channels, 3, padding=1),
            nn.GroupNorm(g, channels), nn.SiLU(), nn.Dropout(dropout), conv(channels, channels, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ImageEncoder(nn.Module):
    """The light image encoder: image (B, Ci, *S) -> features (B, nf, *S), full resolution, no time, no z.

    A 3x3 (3-D: 3x3x3) conv, then ``blocks`` plain residual blocks (MoNuSeg: 5 blocks, nf = 64, 372,352
    parameters).
    """

    def __init__(self, in_channels: int, nf: int, blocks: int, dropout: float = 0.0, spatial_dims: int = 2) -> None:
        super().__init__()
        self.conv = conv_nd(spatial_dims)(in_channels, nf, 3, padding=1)
        self.blocks = nn.Sequential(*[EncoderBlock(nf, dropout, spatial_dims) for _ in range(blocks)])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.conv(image))


class CondResBlock(nn.Module):
    """BigGAN-style ResNet block with AdaGN and a time bias (``ResnetBlockBigGANpp_Adagn``).

    ``AdaGN -> SiLU -> (up/down) -> conv3x3 -> + Linear(SiLU(t_emb)) -> AdaGN -> SiLU -> dropout -> conv3x3(~0)``;
    skip = (up/down) then a 1x1 conv when the shape changes; output (skip + h) / sqrt(2).
    ``x`` (B, Cin, H, W), ``temb`` (B, 4nf), ``w`` (B, z_emb) -> (B, Cout, H', W'); in 3-D one more spatial axis.
    """

    def __init__(self, in_ch: int, out_ch: int | None, temb_dim: int, style_dim: int, up: bool = False,
                 down: bool = False, dropout: float = 0.0, resample: str = "fir", spatial_dims: int = 2) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.norm0 = AdaptiveGroupNorm(body_groups(in_ch), in_ch, style_dim)
        self.conv0 = init_conv(in_ch, out_ch, spatial_dims=spatial_dims)
        self.temb = init_linear(temb_dim, out_ch)
        self.norm1 = AdaptiveGroupNorm(body_groups(out_ch), out_ch, style_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = init_conv(out_ch, out_ch, init_scale=0.0, spatial_dims=spatial_dims)
        self.skip = init_conv(in_ch, out_ch, k=1, spatial_dims=spatial_dims) if (in_ch != out_ch or up or down) else None
        self.up, self.down, self.resample = up, down, resample

    def forward(self, x: torch.Tensor, temb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # Without autograd (sampling, validation) the element-wise steps write into tensors this block created
        # itself: the same values, fewer passes over memory (benchmarks/cdal_inference.py).
        inplace = not torch.is_grad_enabled()
        h = F.silu(self.norm0(x, w), inplace=inplace)
        if self.up:
            h, x = up(h, self.resample), up(x, self.resample)
        elif self.down:
            h, x = down(h, self.resample), down(x, self.resample)
        h = self.conv0(h)
        bias = broadcast_channels(self.temb(F.silu(temb)), h)
        h = h.add_(bias) if inplace else h + bias
        h = self.conv1(self.dropout(F.silu(self.norm1(h, w), inplace=inplace)))
        if self.skip is not None:
            x = self.skip(x)
        return h.add_(x).div_(math.sqrt(2.0)) if inplace else (x + h) / math.sqrt(2.0)


class SelfAttention(nn.Module):
    """Single-head spatial self-attention (``AttnBlockpp``): (B, C, *S) -> (B, C, *S), (x + h)/sqrt(2).

    GroupNorm, 1x1 projections q, k, v, softmax(q^T k / sqrt(C)) over all N = prod(S) positions (pixels, or
    voxels in 3-D), output projection ~0. The attention itself is PyTorch's fused
    ``F.scaled_dot_product_attention`` (one head of width C; its default scale is 1/sqrt(C)): the same numbers up
    to float rounding as forming the (B, N, N) matrix, without holding it. That matters in 3-D, where the middle
    level of a 32^3 patch has N = 4,096 voxels: 8 patches took 0.82 s on one thread with the explicit matrix and
    0.12 s fused (``SelfAttention`` at smoke size; 256 positions in 2-D: 4.7 ms against 1.7 ms).
    """

    def __init__(self, channels: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(body_groups(channels), channels, eps=1e-6)
        self.q, self.k, self.v = (init_conv(channels, channels, k=1, spatial_dims=spatial_dims) for _ in range(3))
        self.out = init_conv(channels, channels, k=1, init_scale=0.0, spatial_dims=spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        h = self.norm(x)
        # q, k, v as (B, 1, N, C): one head over the N positions, channels last (what the fused kernel wants)
        q, k, v = (m(h).reshape(b, c, -1).transpose(1, 2).unsqueeze(1).contiguous() for m in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)                     # softmax(q k^T / sqrt(C)) v: (B, 1, N, C)
        h = h[:, 0].transpose(1, 2).reshape(x.shape)                     # back to (B, C, *S)
        return (x + self.out(h)) / math.sqrt(2.0)


class PyramidDown(nn.Module):
    """Input-pyramid down-sampling conv: FIR blur (pad 2) + 3x3 stride-2 conv, or 2x2 avg-pool + 3x3 conv."""

    def __init__(self, in_ch: int, out_ch: int, resample: str, spatial_dims: int = 2) -> None:
        super().__init__()
        self.resample = resample
        self.conv = init_conv(in_ch, out_ch, stride=2 if resample == "fir" else 1, padding=0 if resample == "fir" else 1,
                              spatial_dims=spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "fir":  # upfirdn2d(x, k, pad=(2, 2)) then a valid stride-2 conv (score_sde conv_downsample_2d)
            dims = x.ndim - 2
            return self.conv(depthwise_blur(F.pad(x, (2, 2) * dims), fir_kernel(spatial_dims=dims)))
        return self.conv(avg_pool(x))


# ------------------------------------------------------------------------------------------------
# the generator
# ------------------------------------------------------------------------------------------------
class ConditionalGenerator(nn.Module):
    """x0 predictor G(x_t, t, I, z) of cDAL (DDGAN NCSN++ with AdaGN + image encoder; book/decisions.md).

    Args:
        label_channels: channels of the label map x (1 for binary tasks, K for one-hot multiclass).
        image_channels: channels of the conditioning image (3 for H&E, 1 for X-ray/MRI).
        nf: base width; level i has ``nf * ch_mult[i]`` channels.
        ch_mult: width multipliers per level (one level per entry; ``len - 1`` down-samplings).
        num_res_blocks: ResNet blocks per encoder level (decoder: + 1).
        attn_resolutions: resolutions (in pixels of an ``image_size`` input) that get self-attention.
        image_size: nominal input size used to place the attention levels.
        nz, z_emb_dim, n_mlp: latent size, style size and mapping depth.
        enc_blocks: residual blocks in the image encoder.
        resample: 'fir' (StyleGAN2 [1,3,3,1]) or 'avg' (avg-pool / nearest).
        progressive_input: the 'residual' input pyramid of NCSN++ (True in every cDAL config).
        dropout: dropout inside the ResNet blocks (0 in cDAL).
        spatial_dims: 2 (images, slices: the paper) or 3 (volumes: the native 3-D variant of chapter 08).
        text_dim: width D of the text tokens; > 0 adds the text cross-attention of chapter 13 (0: plain cDAL).
        text_heads, text_dim_head: heads and width per head of those cross-modal blocks.
        out_activation: ``'tanh'`` (cDAL: an x0 predictor bounded to [-1, 1]) or ``'none'`` (an unbounded
            output, e.g. the noise epsilon of the SegDiff-style baseline, :mod:`diffseg_core.segdiff`). It adds
            no parameter, so names and counts are the same either way.
    """

    def __init__(self, label_channels: int = 1, image_channels: int = 3, nf: int = 64,
                 ch_mult: Sequence[int] = (1, 1, 1, 2, 2, 4, 4), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (16, 8), image_size: int = 256, nz: int = 100,
                 z_emb_dim: int = 256, n_mlp: int = 3, enc_blocks: int = 5, resample: str = "fir",
                 progressive_input: bool = True, dropout: float = 0.0, spatial_dims: int = 2,
                 text_dim: int = 0, text_heads: int = 4, text_dim_head: int = 32,
                 out_activation: str = "tanh") -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims, "ConditionalGenerator")
        if out_activation not in ("tanh", "none"):
            raise ValueError(f"ConditionalGenerator: out_activation must be 'tanh' or 'none', got {out_activation!r}")
        self.out_activation = out_activation
        if resample not in ("fir", "avg"):
            raise ValueError(f"ConditionalGenerator: resample must be 'fir' or 'avg', got {resample!r}")
        if nf % 4 or nf < 4:
            raise ValueError(f"ConditionalGenerator: nf must be a positive multiple of 4, got {nf}")
        self.label_channels, self.image_channels, self.nf, self.nz = label_channels, image_channels, nf, nz
        self.ch_mult, self.num_res_blocks, self.resample = tuple(ch_mult), num_res_blocks, resample
        self.progressive_input = progressive_input
        levels = len(self.ch_mult)
        self.divisor = 2 ** (levels - 1)
        resolutions = [image_size // 2**i for i in range(levels)]
        self.attn_levels = {i for i, r in enumerate(resolutions) if r in set(attn_resolutions)}
        temb_dim = 4 * nf

        self.temb = nn.Sequential(init_linear(nf, temb_dim), nn.SiLU(), init_linear(temb_dim, temb_dim))
        self.mapping = MappingNetwork(nz, z_emb_dim, n_mlp)
        dims = self.spatial_dims
        self.encoder = ImageEncoder(image_channels, nf, enc_blocks, dropout, spatial_dims=dims)
        self.conv_in = init_conv(label_channels, nf, spatial_dims=dims)

        block = lambda cin, cout=None, **kw: CondResBlock(cin, cout, temb_dim, z_emb_dim, dropout=dropout,  # noqa: E731
                                                          resample=resample, spatial_dims=dims, **kw)
        self.down_blocks = nn.ModuleList()      # per level: ModuleList of (resblock, attn or Identity)
        self.downsamplers = nn.ModuleList()     # per level except the last: down-sampling resblock
        self.pyramid = nn.ModuleList()          # per level except the last: input-pyramid conv
        hs_c = [nf]
        in_ch, pyr_ch = nf, label_channels
        for i in range(levels):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                out_ch = nf * self.ch_mult[i]
                blocks.append(nn.ModuleList([block(in_ch, out_ch),
                                             SelfAttention(out_ch, dims) if i in self.attn_levels else nn.Identity()]))
                in_ch = out_ch
                hs_c.append(in_ch)
            self.down_blocks.append(blocks)
            if i != levels - 1:
                self.downsamplers.append(block(in_ch, down=True))
                if progressive_input:
                    self.pyramid.append(PyramidDown(pyr_ch, in_ch, resample, dims))
                    pyr_ch = in_ch
                hs_c.append(in_ch)

        self.mid = nn.ModuleList([block(in_ch), SelfAttention(in_ch, dims), block(in_ch)])

        self.up_blocks = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i in reversed(range(levels)):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                out_ch = nf * self.ch_mult[i]
                blocks.append(block(in_ch + hs_c.pop(), out_ch))
                in_ch = out_ch
            self.up_blocks.append(blocks)
            self.up_attn.append(SelfAttention(in_ch, dims) if i in self.attn_levels else nn.Identity())
            if i != 0:
                self.upsamplers.append(block(in_ch, up=True))
        assert not hs_c
        self.head = nn.Sequential(nn.GroupNorm(body_groups(in_ch), in_ch, eps=1e-6), nn.SiLU(),
                                  init_conv(in_ch, label_channels, init_scale=0.0, spatial_dims=dims))
        self.text_dim = int(text_dim)
        if self.text_dim < 0:
            raise ValueError(f"ConditionalGenerator: text_dim must be >= 0 (0 = no text), got {text_dim}")
        self.text_attn: nn.ModuleList | None = None          # chapter 13: [middle, coarsest decoder level]
        self.text_sizes: list[tuple[int, ...]] = []          # spatial sizes of the last forward's text attention
        if self.text_dim:
            low = nf * self.ch_mult[-1]
            self.text_attn = nn.ModuleList(CrossModalBlock(low, self.text_dim, text_heads, text_dim_head) for _ in range(2))

    def num_parameters(self) -> int:
        """Total number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def style(self, z: torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor:
        """Mapping-network output for ``z`` (B, nz); ``None`` means z = 0 (the "w/o latent" ablation)."""
        if z is None:
            z = like.new_zeros(batch, self.nz)
        return self.mapping(z)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """The light image encoder: image (B, Ci, H, W), normalised -> features (B, nf, H, W) (3-D: (B, Ci, D, H, W)).

        It depends on the image only (no time, no z), so a sampler computes it once per image and passes
        it to every step and ensemble member as ``image_features``.
        """
        if image.ndim != 2 + self.spatial_dims or image.shape[1] != self.image_channels:
            axes = "H, W" if self.spatial_dims == 2 else "D, H, W"
            raise ValueError(f"ConditionalGenerator.encode: image must be (B, {self.image_channels}, {axes}), "
                             f"got {tuple(image.shape)}")
        return self.encoder(image)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, image: torch.Tensor | None = None,
                z: torch.Tensor | None = None, image_features: torch.Tensor | None = None,
                text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict x0.

        Args:
            x_t: noisy label (B, Cl, H, W) at the more-noisy level t+1 (H, W divisible by ``self.divisor``);
                (B, Cl, D, H, W) when ``spatial_dims = 3``.
            t: code time (B,) int64 in 0..T-1.
            image: conditioning image (B, Ci, H, W), already normalised by the caller; or ``None`` when
                ``image_features`` (what :meth:`encode` returned for it) is given instead.
            z: latent (B, nz) or ``None`` (z = 0).
            text: frozen text tokens (B, L, text_dim), required exactly when the generator has text
                cross-attention (``text_dim > 0``, chapter 13); ``text_mask`` (B, L) bool, True for real tokens.
        Returns:
            x0_hat (B, Cl, H, W) in [-1, 1] (tanh); with ``out_activation='none'`` the unbounded head output.
        """
        if x_t.ndim != 2 + self.spatial_dims:
            raise ValueError(f"ConditionalGenerator: x_t must have {self.spatial_dims} spatial axes "
                             f"(spatial_dims={self.spatial_dims}), got shape {tuple(x_t.shape)}")
        b, c, *spatial = x_t.shape
        if c != self.label_channels:
            raise ValueError(f"ConditionalGenerator: x_t has {c} channels, expected {self.label_channels}")
        if (image is None) == (image_features is None):
            raise ValueError("ConditionalGenerator: give exactly one of image and image_features")
        if image is not None:
            if image.shape[0] != b or image.shape[1] != self.image_channels or image.shape[2:] != x_t.shape[2:]:
                raise ValueError(f"ConditionalGenerator: image {tuple(image.shape)} does not match x_t "
                                 f"{tuple(x_t.shape)} with {self.image_channels} image channels")
            image_features = self.encode(image)
        elif tuple(image_features.shape) != (b, self.nf, *spatial):
            raise ValueError(f"ConditionalGenerator: image_features must be (B, nf, *spatial) = {(b, self.nf, *spatial)}, "
                             f"got {tuple(image_features.shape)}")
        if any(s % self.divisor for s in spatial):
            raise ValueError(f"ConditionalGenerator: spatial size {'x'.join(map(str, spatial))} must be divisible by "
                             f"{self.divisor} ({len(self.ch_mult)} levels)")
        if t.shape != (b,):
            raise ValueError(f"ConditionalGenerator: t must be (B,) = ({b},), got {tuple(t.shape)}")
        if (text is not None) != (self.text_attn is not None):
            raise ValueError("ConditionalGenerator: text tokens are needed exactly when text_dim > 0 "
                             f"(text_dim={self.text_dim}, text {'given' if text is not None else 'missing'})")
        if text is not None and (text.ndim != 3 or text.shape[0] != b or text.shape[2] != self.text_dim):
            raise ValueError(f"ConditionalGenerator: text must be (B, L, {self.text_dim}) with B = {b}, "
                             f"got {tuple(text.shape)}")
        temb = self.temb(timestep_embedding(t, self.nf))
        wz = self.style(z, b, x_t)
        self.text_sizes = []

        hs = [self.conv_in(x_t) + image_features]           # image features added once, before the first block
        pyramid = x_t
        hcur = hs[-1]
        for i, blocks in enumerate(self.down_blocks):
            for res, attn in blocks:
                hcur = attn(res(hs[-1], temb, wz))
                hs.append(hcur)
            if i != len(self.down_blocks) - 1:
                hcur = self.downsamplers[i](hs[-1], temb, wz)
                if self.progressive_input:
                    pyramid = (self.pyramid[i](pyramid) + hcur) / math.sqrt(2.0)
                    hcur = pyramid
                hs.append(hcur)
        hcur = self.mid[0](hs[-1], temb, wz)
        hcur = self.mid[1](hcur)
        if self.text_attn is not None:
            hcur = self._attend_text(0, hcur, text, text_mask)
        hcur = self.mid[2](hcur, temb, wz)
        for j, blocks in enumerate(self.up_blocks):
            for res in blocks:
                hcur = res(torch.cat([hcur, hs.pop()], dim=1), temb, wz)
            hcur = self.up_attn[j](hcur)
            if j == 0 and self.text_attn is not None:
                hcur = self._attend_text(1, hcur, text, text_mask)
            if j < len(self.upsamplers):
                hcur = self.upsamplers[j](hcur, temb, wz)
        out = self.head(hcur)
        return torch.tanh(out) if self.out_activation == "tanh" else out

    def _attend_text(self, k: int, h: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Text block ``k``: every position of ``h`` (B, C, *S) attends to ``text`` (B, L, D) -> (B, C, *S)."""
        seq = self.text_attn[k](h.flatten(2).transpose(1, 2), text, mask)     # (B, N, C), N = prod(S)
        self.text_sizes.append(tuple(h.shape[2:]))
        return seq.transpose(1, 2).reshape(h.shape)

    def text_token_maps(self) -> list[torch.Tensor]:
        """Per text block of the last forward (middle, coarsest decoder level): each token's attention over the
        map, ``(B, L, *S)`` (first cross-attention sub-layer, mean over heads; rows over L sum to one)."""
        if self.text_attn is None:
            raise ValueError("ConditionalGenerator.text_token_maps: this generator has no text cross-attention")
        maps = []
        for block, size in zip(self.text_attn, self.text_sizes):
            w = block.attention_weights.mean(dim=1)             # (B, N, L)
            maps.append(w.transpose(1, 2).reshape(w.shape[0], w.shape[2], *size))
        return maps


def build_generator(cfg: "CDALConfig", label_ch: int, image_ch: int, text_dim: int = 0) -> ConditionalGenerator:
    """The generator of a :class:`~diffseg_core.cdal.config.CDALConfig` for ``label_ch`` label channels and
    ``image_ch`` image channels (2-D or 3-D from ``cfg.spatial_dims``); ``text_dim`` > 0 (the loaded text
    encoder's width, with ``cfg.use_text``) adds the text cross-attention of chapter 13."""
    return ConditionalGenerator(label_channels=label_ch, image_channels=image_ch, nf=cfg.nf, ch_mult=cfg.ch_mult,
                                num_res_blocks=cfg.num_res_blocks, attn_resolutions=cfg.attn_resolutions,
                                image_size=cfg.image_size, nz=cfg.nz, z_emb_dim=cfg.z_emb_dim, n_mlp=cfg.n_mlp,
                                enc_blocks=cfg.enc_blocks, resample=cfg.resample, dropout=cfg.dropout,
                                spatial_dims=getattr(cfg, "spatial_dims", 2), text_dim=text_dim,
                                text_heads=getattr(cfg, "text_heads", 4), text_dim_head=getattr(cfg, "text_dim_head", 32))


def draw_latent(G: ConditionalGenerator, batch: int, use_latent: bool, like: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor | None:
    """A fresh z ~ N(0, I_nz) ``(batch, G.nz)`` on ``like``'s device and dtype; ``None`` (z = 0, decision D18)
    when ``use_latent`` is False. cDAL draws a new z for every forward pass, in training and sampling."""
    if not use_latent:
        return None
    return torch.randn(batch, G.nz, device=like.device, dtype=like.dtype, generator=generator)
