"""TextDiff's cross-modal attention M_cro: image features (queries) attend to text tokens (keys/values).

The taught core is the paper's **Eq. 3** (Feng, MICCAI 2024, Sec. 2.3)::

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,   Q = W_Q f  (pixels),  K = W_K e, V = W_V e  (tokens)

computed by the pure function :func:`cross_attention`. Around it we build what the official code
(``src/transformer.py`` ``BasicTransformerBlock``, book/decisions.md) actually runs
(book/decisions.md, T2: follow the code, teach Eq. 3 as its core):

* :class:`CrossAttention`: bias-free q/k/v projections, ``heads`` x ``dim_head``, output Linear followed by
  a LayerNorm; it keeps ``attention_weights`` ``(B, heads, HW, L)`` after every forward (for plots);
* :class:`CrossModalBlock`: LayerNorm -> cross-attention -> residual, LayerNorm -> a second
  cross-attention -> residual, LayerNorm -> feed-forward (GELU then Linear(dim, dim), no expansion, as in
  the code) -> residual. No self-attention among pixels, no positional encoding (as in the code);
* :class:`MultiScaleCrossModalFusion`: 1x1 projections of each scale to ``dim``, **one block shared over
  all scales**, applied at each scale's **native resolution** (book/decisions.md, T3: the code's order, far cheaper
  than up-sampling first), then bilinear up-sampling to the output size and concatenation.

Ablations (book/decisions.md, T10, Table 2):

* zeta_1, ``use_text=False``: projection + up-sampling + concatenation only (no text, no M_cro);
* zeta_2, ``use_xattn=False``: *our choice*, since the official code has no zeta_2: the text tokens are
  mean-pooled over real tokens, projected to ``dim`` by a Linear layer and **broadcast and concatenated
  to every pixel** of the fused map (``dim`` extra channels). The image thus gets the same text signal
  as a per-image conditioning, without any pixel-to-token attention.

Deviation from the code: the official model projects scale 0 with ``down1``, shares ``down2`` over the
scales with 1536 channels and lets 768-channel scales through un-projected; we give every scale its own
1x1 projection (our backbone's scales all differ in width from ``dim``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    key_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention, TextDiff Eq. 3: ``softmax(Q K^T / sqrt(d)) V``.

    Args:
        q: ``(B, h, N, d)`` queries (N = H*W pixels).
        k: ``(B, h, L, d)`` keys (L text tokens).
        v: ``(B, h, L, d_v)`` values.
        key_mask: optional ``(B, L)`` bool, True for tokens that may be attended; masked tokens get
            exactly zero weight. Every row must keep at least one token.

    Returns:
        out: ``(B, h, N, d_v)``, the weighted sums of the values;
        weights: ``(B, h, N, L)``, each row sums to one over the L tokens.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"cross_attention: q, k, v must be (B, heads, n, d); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2] or q.shape[:2] != k.shape[:2]:
        raise ValueError(f"cross_attention: incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    d = q.shape[-1]
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, h, N, L): Q K^T / sqrt(d)
    if key_mask is not None:
        if key_mask.shape != (k.shape[0], k.shape[2]):
            raise ValueError(f"cross_attention: key_mask must be (B, L) = {(k.shape[0], k.shape[2])}, "
                             f"got {tuple(key_mask.shape)}")
        key_mask = key_mask.to(torch.bool)
        if not bool(key_mask.any(dim=1).all()):
            raise ValueError("cross_attention: key_mask hides every token of some sentence (no key left)")
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # softmax over the L tokens
    return weights @ v, weights  # (B, h, N, d_v), (B, h, N, L)


class CrossAttention(nn.Module):
    """Multi-head cross-attention of ``N`` query vectors over ``L`` context tokens (Eq. 3 per head).

    Args:
        query_dim: width of the queries (the projected image features, ``dim``).
        context_dim: width of the text tokens (768 for Bio_ClinicalBERT, 384 for MiniLM).
        heads, dim_head: ``heads`` x ``dim_head`` = inner width (the code: 8 x 64 = 512).
        out_norm: a LayerNorm after the output Linear, as in the official block.

    After each forward, ``attention_weights`` holds the detached weights ``(B, heads, N, L)``.
    """

    def __init__(self, query_dim: int, context_dim: int, heads: int = 8, dim_head: int = 64,
                 out_norm: bool = True) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.LayerNorm(query_dim) if out_norm else nn.Identity())
        self.attention_weights: torch.Tensor | None = None

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, n, h*d) -> (B, h, n, d)
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, N, query_dim)``, ``context`` ``(B, L, context_dim)``, ``key_mask`` ``(B, L)`` -> ``(B, N, query_dim)``."""
        if x.dim() != 3 or context.dim() != 3 or x.shape[0] != context.shape[0]:
            raise ValueError(f"CrossAttention: x must be (B, N, C) and context (B, L, D) with the same B; "
                             f"got {tuple(x.shape)} and {tuple(context.shape)}")
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(context)), self._split(self.to_v(context))
        out, weights = cross_attention(q, k, v, key_mask)  # (B, h, N, d), (B, h, N, L)
        self.attention_weights = weights.detach()
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.heads * self.dim_head)
        return self.to_out(out)


class CrossModalBlock(nn.Module):
    """The official ``BasicTransformerBlock``: two cross-attention sub-layers and a feed-forward, pre-norm, residual.

    ``x <- x + CA1(LN(x), e);  x <- x + CA2(LN(x), e);  x <- x + Linear(GELU(LN(x)))``

    ``attention_weights`` is the first sub-layer's ``(B, heads, N, L)`` (its queries are the image features
    themselves: Eq. 3 exactly); ``attn2.attention_weights`` holds the second one's.
    """

    def __init__(self, dim: int, context_dim: int, heads: int = 8, dim_head: int = 64) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn1 = CrossAttention(dim, context_dim, heads, dim_head)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.ff = nn.Sequential(nn.GELU(), nn.Linear(dim, dim))  # the code's "GEGLU" is GELU -> Linear, no expansion

    @property
    def attention_weights(self) -> torch.Tensor | None:
        return self.attn1.attention_weights

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, N, dim)`` pixel tokens, ``context`` ``(B, L, context_dim)`` -> ``(B, N, dim)``."""
        x = x + self.attn1(self.norm1(x), context, key_mask)
        x = x + self.attn2(self.norm2(x), context, key_mask)
        return x + self.ff(self.norm3(x))


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``tokens`` ``(B, L, D)`` over the real tokens (``mask`` ``(B, L)`` True) -> ``(B, D)``."""
    if mask is None:
        return tokens.mean(dim=1)
    m = mask.to(tokens.dtype)[..., None]
    return (tokens * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


class MultiScaleCrossModalFusion(nn.Module):
    """Project each scale, let it attend to the text at its own resolution, up-sample and concatenate.

    The concatenation ``H = concat_z up(H_z)`` is stated in words in TextDiff Sec. 2.3 (not numbered there;
    chapter 11 writes it out); each ``H_z`` is Eq. 3 inside the shared block.

    Args:
        in_dims: channels of each scale's diffusion features (``C_b x n_steps``).
        dim: common width after the 1x1 projections (the code: 768).
        context_dim: text token width.
        heads, dim_head: of the shared :class:`CrossModalBlock`.
        use_text: False gives zeta_1 (no text, no cross-attention).
        use_xattn: False gives zeta_2 (pooled text broadcast and concatenated, see the module docstring).

    ``forward`` returns ``(B, out_channels, H, W)`` with ``out_channels = len(in_dims) * dim`` (+ ``dim``
    for zeta_2). After a forward with cross-attention, ``attention_maps[s]`` is scale ``s``'s
    ``(B, heads, h_s*w_s, L)`` and ``attention_sizes[s]`` its ``(h_s, w_s)``; :meth:`token_maps` reshapes
    them to ``(B, L, h_s, w_s)`` (mean over heads) for plotting.
    """

    def __init__(self, in_dims: Sequence[int], dim: int, context_dim: int, heads: int = 8, dim_head: int = 64,
                 use_text: bool = True, use_xattn: bool = True) -> None:
        super().__init__()
        if not in_dims:
            raise ValueError("MultiScaleCrossModalFusion: in_dims is empty (no feature scale)")
        self.in_dims = [int(c) for c in in_dims]
        self.dim = dim
        self.use_text, self.use_xattn = bool(use_text), bool(use_xattn)
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, kernel_size=1) for c in self.in_dims)
        self.block = CrossModalBlock(dim, context_dim, heads, dim_head) if self.use_text and self.use_xattn else None
        self.text_proj = nn.Linear(context_dim, dim) if self.use_text and not self.use_xattn else None
        self.attention_maps: list[torch.Tensor] = []
        self.attention_sizes: list[tuple[int, int]] = []

    @property
    def out_channels(self) -> int:
        return len(self.in_dims) * self.dim + (self.dim if self.text_proj is not None else 0)

    def forward(self, features: Sequence[torch.Tensor], tokens: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Fuse the scales.

        Args:
            features: one ``(B, in_dims[s], h_s, w_s)`` tensor per scale.
            tokens: ``(B, L, context_dim)`` text tokens (ignored when ``use_text`` is False).
            key_mask: ``(B, L)`` bool, True for real tokens (None: attend to every token, as the code).
            out_size: ``(H, W)`` of the output (default: the largest scale's size).

        Returns:
            ``(B, out_channels, H, W)``.
        """
        if len(features) != len(self.in_dims):
            raise ValueError(f"MultiScaleCrossModalFusion: expected {len(self.in_dims)} feature scales, got {len(features)}")
        for s, (f, c) in enumerate(zip(features, self.in_dims)):
            if f.dim() != 4 or f.shape[1] != c:
                raise ValueError(f"MultiScaleCrossModalFusion: scale {s} must be (B, {c}, h, w), got {tuple(f.shape)}")
        if self.use_text and tokens is None:
            raise ValueError("MultiScaleCrossModalFusion: use_text=True needs text tokens (B, L, D)")
        if out_size is None:
            out_size = max((tuple(f.shape[-2:]) for f in features), key=lambda hw: hw[0] * hw[1])
        self.attention_maps, self.attention_sizes = [], []
        outs = []
        for f, proj in zip(features, self.proj):
            x = proj(f)  # (B, dim, h, w): 1x1 projection
            if self.block is not None:
                b, c, h, w = x.shape
                seq = x.flatten(2).transpose(1, 2)  # (B, h*w, dim): one query per pixel
                seq = self.block(seq, tokens, key_mask)  # shared block, native resolution
                x = seq.transpose(1, 2).reshape(b, c, h, w)
                self.attention_maps.append(self.block.attention_weights)
                self.attention_sizes.append((h, w))
            if tuple(x.shape[-2:]) != tuple(out_size):
                x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
            outs.append(x)
        if self.text_proj is not None:  # zeta_2: pooled text vector, broadcast to every pixel
            t = self.text_proj(masked_mean(tokens, key_mask))  # (B, dim)
            outs.append(t[:, :, None, None].expand(-1, -1, *out_size))
        return torch.cat(outs, dim=1)

    def token_maps(self) -> list[torch.Tensor]:
        """Per scale, each token's attention over the image: ``(B, L, h_s, w_s)`` (mean over heads)."""
        maps = []
        for w, (h, wd) in zip(self.attention_maps, self.attention_sizes):
            m = w.mean(dim=1)  # (B, HW, L)
            maps.append(m.transpose(1, 2).reshape(m.shape[0], m.shape[2], h, wd))
        return maps


__all__ = ["cross_attention", "CrossAttention", "CrossModalBlock", "MultiScaleCrossModalFusion", "masked_mean"]
