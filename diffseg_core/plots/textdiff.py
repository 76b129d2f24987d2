"""Figures for the TextDiff chapters (notebooks 10-12): pure matplotlib functions on arrays.

Every function takes numpy arrays (or tensors, converted with :func:`diffseg_core.plots.as_array`) and returns the
:class:`matplotlib.figure.Figure` it drew, so a notebook can show it and a test can inspect it.

* :func:`pca_rgb` / :func:`plot_feature_pca`: diffusion features (C, h, w) projected on their first
  three principal components and shown as RGB, one panel per decoder block x diffusion step;
* :func:`plot_block_step_heatmap`: a score (e.g. Dice of a linear probe) per block x step, the
  spirit of TextDiff Fig. 3;
* :func:`plot_token_embeddings`, :func:`plot_similarity_matrix`, :func:`plot_attention_matrix`:
  text-encoder outputs and the attention weights of Eq. 3 as matrices;
* :func:`plot_token_attention`: each text token's attention over the image, one row per scale;
* :func:`plot_prediction_grid`: image, ground truth and each model's prediction (errors coloured as in
  :func:`diffseg_core.plots.error_rgb`);
* :func:`plot_ablation`: mean +/- spread over seeds per model, beside the paper's value.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from ..metrics import image_scores
from . import as_array as _np
from . import error_rgb, to_hwc
from matplotlib.figure import Figure

__all__ = [
    "pca_rgb",
    "plot_feature_pca",
    "plot_block_step_heatmap",
    "plot_token_embeddings",
    "plot_similarity_matrix",
    "plot_attention_matrix",
    "upsample_nearest",
    "plot_token_attention",
    "plot_prediction_grid",
    "plot_ablation",
]


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------
def pca_rgb(features: Any, n_components: int = 3) -> np.ndarray:
    """Project features on their first principal components, scaled to [0, 1] per component.

    Args:
        features: ``(C, h, w)`` for one image or ``(N, C, h, w)`` for several; the principal axes are
            fitted on all pixels of all images together, so colours are comparable across images.
        n_components: number of components kept (3 gives an RGB image).

    Returns:
        ``(h, w, n_components)`` or ``(N, h, w, n_components)`` floats in [0, 1]. When ``C`` is
        smaller than ``n_components`` the missing components are zero.
    """
    f = _np(features).astype(np.float64)
    single = f.ndim == 3
    if single:
        f = f[None]
    n, c, h, w = f.shape
    x = np.moveaxis(f, 1, -1).reshape(-1, c)  # (N*h*w, C)
    x = x - x.mean(axis=0, keepdims=True)
    # principal axes = right singular vectors of the centred pixel matrix
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    k = min(n_components, vt.shape[0])
    z = x @ vt[:k].T  # (N*h*w, k)
    # fix the sign of each component (largest |loading| positive) so the colours are reproducible
    signs = np.sign(vt[:k][np.arange(k), np.abs(vt[:k]).argmax(axis=1)])
    z = z * np.where(signs == 0, 1.0, signs)
    lo, hi = np.percentile(z, 1, axis=0), np.percentile(z, 99, axis=0)
    z = np.clip((z - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
    if k < n_components:
        z = np.concatenate([z, np.zeros((z.shape[0], n_components - k))], axis=1)
    out = z.reshape(n, h, w, n_components).astype(np.float32)
    return out[0] if single else out


def plot_feature_pca(
    features: Sequence[Sequence[Any]],
    block_labels: Sequence[str],
    step_labels: Sequence[str],
    image: Any | None = None,
    title: str | None = None,
    panel_size: float = 1.9,
) -> Figure:
    """Grid of PCA-to-RGB feature maps: one row per decoder block, one column per diffusion step.

    Args:
        features: ``features[b][s]`` is a ``(C_b, h_b, w_b)`` array for block ``b`` at step ``s``.
        block_labels: one label per row (e.g. ``"block 3 (1/4)"``).
        step_labels: one label per column (e.g. ``"t=50 (signal 0.98)"``).
        image: optional ``(C, H, W)`` input shown in an extra first column.
        title: figure title.
    """
    n_b, n_s = len(features), len(features[0])
    if len(block_labels) != n_b or len(step_labels) != n_s:
        raise ValueError(f"got {n_b}x{n_s} feature maps but {len(block_labels)} block and {len(step_labels)} step labels")
    extra = image is not None
    fig, axes = plt.subplots(n_b, n_s + extra, figsize=(panel_size * (n_s + extra), panel_size * n_b), squeeze=False)
    for b in range(n_b):
        if extra:
            ax = axes[b, 0]
            ax.imshow(to_hwc(image))
            ax.set_title("input" if b == 0 else "", fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
        for s in range(n_s):
            ax = axes[b, s + extra]
            f = _np(features[b][s])
            ax.imshow(pca_rgb(f), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if b == 0:
                ax.set_title(step_labels[s], fontsize=9)
            ax.set_xlabel(f"{f.shape[0]} ch, {f.shape[1]}x{f.shape[2]}", fontsize=7)
        axes[b, 0].set_ylabel(block_labels[b], fontsize=9)
    fig.suptitle(title or "Diffusion features, first 3 principal components as RGB")
    fig.tight_layout()
    return fig


def plot_block_step_heatmap(
    scores: Any | Sequence[Any],
    block_labels: Sequence[str],
    step_labels: Sequence[str],
    titles: Sequence[str] | str | None = None,
    value_label: str = "validation Dice",
    annotate: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
) -> Figure:
    """Heat-map(s) of a score per decoder block (rows) x diffusion step (columns), as in TextDiff Fig. 3.

    Args:
        scores: ``(n_blocks, n_steps)`` array, or a list of such arrays drawn side by side on a shared
            colour scale (e.g. without and with text, Fig. 3 a/b). NaN cells are left blank.
        block_labels, step_labels: tick labels.
        titles: one title per panel.
        value_label: colour-bar label.
        annotate: write each value in its cell.
    """
    panels = [_np(s) for s in scores] if isinstance(scores, (list, tuple)) else [_np(scores)]
    for p in panels:
        if p.shape != (len(block_labels), len(step_labels)):
            raise ValueError(f"scores of shape {p.shape} do not match {len(block_labels)} blocks x {len(step_labels)} steps")
    if isinstance(titles, str) or titles is None:
        titles = [titles or ""] * len(panels)
    finite = np.concatenate([p[np.isfinite(p)] for p in panels]) if panels else np.array([0.0])
    vmin = float(finite.min()) if vmin is None and finite.size else vmin
    vmax = float(finite.max()) if vmax is None and finite.size else vmax
    fig, axes = plt.subplots(1, len(panels), figsize=(1.2 * len(step_labels) * len(panels) + 2.6,
                                                      0.6 * len(block_labels) + 1.8), squeeze=False,
                             constrained_layout=True)
    im = None
    for k, (ax, p, t) in enumerate(zip(axes[0], panels, titles)):
        im = ax.imshow(np.ma.masked_invalid(p), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(step_labels)), step_labels, fontsize=8)
        ax.set_yticks(range(len(block_labels)), block_labels if k == 0 else [], fontsize=8)
        ax.set_xlabel("diffusion step t")
        if k == 0:
            ax.set_ylabel("decoder block (resolution)")
        ax.set_title(t)
        if annotate:
            mid = 0.5 * ((vmin or 0.0) + (vmax or 1.0))
            for i in range(p.shape[0]):
                for j in range(p.shape[1]):
                    if np.isfinite(p[i, j]):
                        ax.text(j, i, f"{p[i, j]:.3f}", ha="center", va="center", fontsize=8,
                                color="black" if p[i, j] > mid else "white")
    fig.colorbar(im, ax=list(axes[0]), label=value_label, shrink=0.9)
    return fig


# ---------------------------------------------------------------------------------------------
# Text and attention matrices
# ---------------------------------------------------------------------------------------------
def plot_token_embeddings(embeddings: Any, tokens: Sequence[str], title: str | None = None,
                          max_dims: int = 64) -> Figure:
    """Heat-map of token embeddings ``(L, D)``: one row per word piece, the first ``max_dims`` dims."""
    e = _np(embeddings)
    if e.ndim != 2 or e.shape[0] != len(tokens):
        raise ValueError(f"embeddings {e.shape} must be (L, D) with L = {len(tokens)} tokens")
    e = e[:, :max_dims]
    lim = float(np.abs(e).max()) or 1.0
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.15 * e.shape[1]), 0.6 + 0.3 * e.shape[0]))
    im = ax.imshow(e, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_yticks(range(len(tokens)), tokens, fontsize=8)
    ax.set_xlabel(f"embedding dimension (first {e.shape[1]})")
    ax.set_ylabel("token")
    ax.set_title(title or "Token embeddings (last hidden state)")
    fig.colorbar(im, ax=ax, label="activation")
    fig.tight_layout()
    return fig


def plot_similarity_matrix(sim: Any, labels: Sequence[str], title: str | None = None,
                           value_label: str = "cosine similarity", wrap: int = 40) -> Figure:
    """Heat-map of a square similarity matrix ``(N, N)`` with the items' labels (long ones cut)."""
    s = _np(sim)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] != len(labels):
        raise ValueError(f"similarity {s.shape} must be (N, N) with N = {len(labels)} labels")
    short = [lab if len(lab) <= wrap else lab[: wrap - 1] + "…" for lab in labels]
    n = len(labels)
    fig, ax = plt.subplots(figsize=(3 + 0.35 * n, 2 + 0.3 * n))
    im = ax.imshow(s, cmap="magma", vmin=min(0.0, float(s.min())), vmax=1.0)
    ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=7)
    ax.set_yticks(range(n), [f"{i}: {t}" for i, t in enumerate(short)], fontsize=7)
    ax.set_xlabel("sentence index")
    ax.set_title(title or "Cosine similarity between sentences")
    fig.colorbar(im, ax=ax, label=value_label)
    fig.tight_layout()
    return fig


def plot_attention_matrix(weights: Any, tokens: Sequence[str], title: str | None = None,
                          max_rows: int = 64, value_label: str = "attention weight") -> Figure:
    """Heat-map of attention weights ``(HW, L)`` (queries x keys) for the first ``max_rows`` pixels."""
    w = _np(weights)
    if w.ndim != 2 or w.shape[1] != len(tokens):
        raise ValueError(f"weights {w.shape} must be (HW, L) with L = {len(tokens)} tokens")
    w = w[:max_rows]
    fig, ax = plt.subplots(figsize=(2.5 + 0.45 * len(tokens), 3.5))
    im = ax.imshow(w, cmap="viridis", aspect="auto", vmin=0.0)
    ax.set_xticks(range(len(tokens)), tokens, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"pixel (query), first {w.shape[0]}")
    ax.set_xlabel("token (key)")
    ax.set_title(title or "softmax(QK^T / sqrt(d)): each row sums to 1")
    fig.colorbar(im, ax=ax, label=value_label)
    fig.tight_layout()
    return fig


def upsample_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``(..., h, w)`` to ``(..., H, W)`` (no interpolation blur)."""
    h, w = a.shape[-2:]
    rows = (np.arange(size[0]) * h // size[0]).clip(0, h - 1)
    cols = (np.arange(size[1]) * w // size[1]).clip(0, w - 1)
    return a[..., rows[:, None], cols[None, :]]


def plot_token_attention(
    image: Any,
    attention: Sequence[Any],
    tokens: Sequence[str],
    scale_labels: Sequence[str] | None = None,
    title: str | None = None,
    alpha: float = 0.6,
    panel_size: float = 1.6,
    normalise: str = "all",
) -> Figure:
    """Each text token's attention over the image, one row per scale, one column per token.

    Args:
        image: ``(C, H, W)`` (or ``(H, W, C)``) in [0, 1].
        attention: per scale a ``(L, h_s, w_s)`` array: the weight each pixel gives token ``l``
            (heads already averaged). Maps are up-sampled (nearest) to the image size.
        tokens: the ``L`` word pieces (``[PAD]`` columns can be dropped by the caller).
        scale_labels: one label per row.
        normalise: ``"all"`` one colour range for every map (the colour bar applies to all panels);
            ``"row"`` one range per scale (compare tokens within a scale; the colour bar shows the last
            row's range); ``"map"`` stretches each map on its own (see each map's shape).
    """
    if normalise not in ("all", "row", "map"):
        raise ValueError(f"normalise must be 'all', 'row' or 'map', got {normalise!r}")
    img = to_hwc(image)
    H, W = img.shape[:2]
    maps = [_np(a) for a in attention]
    for a in maps:
        if a.ndim != 3 or a.shape[0] != len(tokens):
            raise ValueError(f"attention map {a.shape} must be (L, h, w) with L = {len(tokens)} tokens")
    scale_labels = list(scale_labels or [f"{a.shape[1]}x{a.shape[2]}" for a in maps])
    n_s, n_t = len(maps), len(tokens)
    fig, axes = plt.subplots(n_s, n_t + 1, figsize=(panel_size * (n_t + 1) + 0.8, panel_size * n_s + 0.6),
                             squeeze=False)
    im = None
    g_lo, g_hi = min(float(a.min()) for a in maps), max(float(a.max()) for a in maps)
    for s, a in enumerate(maps):
        axes[s, 0].imshow(img)
        axes[s, 0].set_ylabel(scale_labels[s], fontsize=9)
        axes[s, 0].set_xticks([]), axes[s, 0].set_yticks([])
        if s == 0:
            axes[s, 0].set_title("image", fontsize=9)
        lo, hi = (float(a.min()), float(a.max())) if normalise == "row" else (g_lo, g_hi)
        for t in range(n_t):
            m = a[t]
            vmin, vmax = (lo, hi) if normalise != "map" else (float(m.min()), float(m.max()))
            ax = axes[s, t + 1]
            ax.imshow(img)
            im = ax.imshow(upsample_nearest(m, (H, W)), cmap="inferno", alpha=alpha, vmin=vmin,
                           vmax=vmax if vmax > vmin else vmin + 1e-12)
            ax.set_xticks([]), ax.set_yticks([])
            if s == 0:
                ax.set_title(tokens[t], fontsize=9)
    fig.suptitle(title or "Attention of every pixel to each text token, per scale")
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    cax = fig.add_axes((0.94, 0.15, 0.015, 0.7))
    extra = {"all": "", "row": " (last row's range; one range per row)", "map": " (last map; each map stretched)"}
    fig.colorbar(im, cax=cax, label="attention weight" + extra[normalise])
    return fig


# ---------------------------------------------------------------------------------------------
# Predictions and results
# ---------------------------------------------------------------------------------------------
def plot_prediction_grid(
    images: Sequence[Any],
    targets: Sequence[Any],
    predictions: Mapping[str, Sequence[Any]],
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    panel_size: float = 2.0,
    errors: bool = True,
) -> Figure:
    """Rows of cases: image, ground truth, then each model's prediction.

    Args:
        images: ``N`` images ``(C, H, W)`` in [0, 1].
        targets: ``N`` binary masks ``(H, W)``.
        predictions: model name -> ``N`` binary masks ``(H, W)``; each panel's x-label gives its Dice.
        errors: colour predictions with :data:`diffseg_core.plots.ERROR_COLOURS` (else plain masks).
    """
    n = len(images)
    if len(targets) != n or any(len(v) != n for v in predictions.values()):
        raise ValueError("images, targets and every model's predictions must have the same length")
    cols = 2 + len(predictions)
    fig, axes = plt.subplots(n, cols, figsize=(panel_size * cols, panel_size * n + 0.5), squeeze=False)
    for i in range(n):
        g = _np(targets[i])
        axes[i, 0].imshow(to_hwc(images[i]))
        axes[i, 1].imshow(g, cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_ylabel(row_labels[i] if row_labels else f"case {i}", fontsize=8)
        if i == 0:
            axes[i, 0].set_title("image", fontsize=9)
            axes[i, 1].set_title("ground truth", fontsize=9)
        for j, (name, preds) in enumerate(predictions.items()):
            p = _np(preds[i])
            ax = axes[i, 2 + j]
            ax.imshow(error_rgb(p, g) if errors else p, cmap=None if errors else "gray", vmin=0, vmax=1)
            if i == 0:
                ax.set_title(name, fontsize=8)
            ax.set_xlabel(f"Dice {image_scores(p > 0.5, g > 0.5, 2)['dice'][1]:.3f}", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title or ("Predictions (green: correct foreground, red: false positive, blue: missed)" if errors
                           else "Predictions"))
    fig.tight_layout()
    return fig


def plot_ablation(
    names: Sequence[str],
    values: Sequence[Sequence[float]],
    paper: Mapping[str, float] | None = None,
    metric: str = "Dice",
    title: str | None = None,
) -> Figure:
    """Bar chart of a metric per model: mean with min-max whiskers over seeds, dots per seed, paper marks.

    Args:
        names: model names.
        values: per model, the metric of each seed (any length >= 1, same scale as ``paper``).
        paper: optional model name -> published value, drawn as a black diamond labelled "paper".
    """
    if len(names) != len(values):
        raise ValueError("one list of per-seed values per name")
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 3.4))
    x = np.arange(len(names))
    means = np.array([np.mean(v) if len(v) else np.nan for v in values])
    lo = np.array([np.min(v) if len(v) else np.nan for v in values])
    hi = np.array([np.max(v) if len(v) else np.nan for v in values])
    ax.bar(x, means, color="#9ecae1", edgecolor="#3182bd", label="ours: mean over seeds")
    ax.errorbar(x, means, yerr=[means - lo, hi - means], fmt="none", ecolor="#08519c", capsize=4,
                label="ours: min-max over seeds")
    for i, v in enumerate(values):
        ax.scatter(np.full(len(v), x[i]) + np.linspace(-0.15, 0.15, len(v)) if len(v) > 1 else [x[i]], v,
                   color="#08519c", s=12, zorder=3)
    if paper:
        px = [i for i, n in enumerate(names) if n in paper]
        ax.scatter(px, [paper[names[i]] for i in px], marker="D", color="black", zorder=4, label="paper")
    ax.set_xticks(x, names, rotation=15)
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} per model")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
