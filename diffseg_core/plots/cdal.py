"""Figures for the cDAL chapters (notebooks 03-06): pure matplotlib functions on arrays.

Every function takes numpy arrays or torch tensors (converted with :func:`_np`) and returns the
:class:`matplotlib.figure.Figure` it drew, so a notebook shows it and a test can inspect it. Label maps
in diffusion space live in [-1, 1] (nucleus = +1, background = -1) and noisy ones spill outside it;
the figures use a diverging colour map centred on 0 for them, always with a colourbar.

* :func:`plot_noised_levels`: a label map noised at every level k = 0..T, one row per schedule (T = 4, T = 2);
* :func:`plot_schedule_curves`: signal sqrt(abar) and noise sqrt(1 - abar) against normalised time, several
  schedules on the same axes, plus the signal-to-noise ratio on a log scale;
* :func:`plot_posterior_coefficients`: c1 (on x0), c2 (on x_t) and the posterior std per code time;
* :func:`plot_z_spread`: several x0 predictions for the same (x_t, image) and different z, one row per model,
  with the per-pixel standard deviation over z;
* :func:`plot_attention_grid`: A_D at several discriminator scales over the image (label contour on top),
  one row per normalisation (raw / minmax), each panel with its own colourbar;
* :func:`plot_attention_effect`: x0, A_D, x0 ⊙ A_D, and both noised at the same level;
* :func:`plot_sampling_strip`: Algorithm 2 as a strip, x_T -> ... -> x_1 (top) and the x0 prediction at each
  step (bottom);
* :func:`plot_ensemble`: ensemble members, their mean, the per-pixel variance and the error overlay.

Generic figures (loss traces, a metric against a setting) are in :mod:`diffseg_core.plots`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from . import as_array as _np
from . import error_rgb
from . import to_hwc as _rgb
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "plot_noised_levels",
    "plot_schedule_curves",
    "plot_posterior_coefficients",
    "plot_z_spread",
    "plot_attention_grid",
    "plot_attention_effect",
    "plot_sampling_strip",
    "plot_ensemble",
]

DIVERGING = "RdBu_r"  # label space: blue = background (-1), red = nucleus (+1)


def _map2d(x: Any) -> np.ndarray:
    """A (H, W) map from (H, W), (1, H, W) or (1, 1, H, W); raises otherwise."""
    a = _np(x)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"expected a single-channel map (H, W), got shape {a.shape}")
    return a


def _off(ax: plt.Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _contour(ax: plt.Axes, label: Any, colour: str = "yellow") -> None:
    lab = _map2d(label)
    if lab.max() > lab.min():
        ax.contour(lab > (lab.max() + lab.min()) / 2, levels=[0.5], colors=[colour], linewidths=0.7)


# ---------------------------------------------------------------------------------------------
# Chapter 03: the forward process and the schedule
# ---------------------------------------------------------------------------------------------
def plot_noised_levels(rows: Mapping[str, Sequence[Any]], col_titles: Mapping[str, Sequence[str]] | None = None,
                       vlim: float = 3.0, size: float = 2.2, suptitle: str | None = None) -> Figure:
    """A label map noised at every level, one row per schedule.

    Args:
        rows: row name (e.g. ``"T = 4"``) -> list of maps (H, W) at levels k = 0..T (lengths may differ;
            shorter rows leave their last panels empty).
        col_titles: row name -> one title per panel (default ``"k = i"``).
        vlim: the colour range is [-vlim, vlim] (diverging, centred on 0), shared by every panel.
    Returns the figure: ``len(rows)`` rows x ``max(len(row))`` panels and one shared colourbar.
    """
    if not rows:
        raise ValueError("plot_noised_levels: need at least one row")
    ncols = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), ncols, figsize=(size * ncols + 1.0, size * len(rows) + 0.4), squeeze=False)
    im = None
    for r, (name, maps) in enumerate(rows.items()):
        titles = list(col_titles[name]) if col_titles and name in col_titles else [f"k = {i}" for i in range(len(maps))]
        for c in range(ncols):
            ax = axes[r, c]
            _off(ax)
            if c >= len(maps):
                ax.axis("off")
                continue
            im = ax.imshow(_map2d(maps[c]), cmap=DIVERGING, vmin=-vlim, vmax=vlim)
            ax.set_title(titles[c])
            if c == 0:
                ax.set_ylabel(name)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85, label="label value (nucleus +1, background -1)")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def plot_schedule_curves(schedules: Mapping[str, Any], title: str | None = None) -> Figure:
    """Signal and noise level of several schedules against normalised time k / T.

    Args:
        schedules: name -> abar over the levels 0..T (T+1,) (``Schedule.alphas_cumprod``).
    Returns a figure with two panels: sqrt(abar_k) (solid) and sqrt(1 - abar_k) (dashed) against k / T,
    markers at the discrete levels; and the signal-to-noise ratio abar / (1 - abar) on a log scale.
    """
    if not schedules:
        raise ValueError("plot_schedule_curves: need at least one schedule")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, abar) in enumerate(schedules.items()):
        a = _np(abar).astype(np.float64).ravel()
        T = len(a) - 1
        if T < 1:
            raise ValueError(f"plot_schedule_curves: schedule {name!r} needs at least 2 levels")
        x = np.arange(T + 1) / T
        col = colours[i % len(colours)]
        mk = "o" if T <= 20 else None
        ax1.plot(x, np.sqrt(a), "-", marker=mk, ms=4, color=col, label=f"{name}: signal sqrt(abar)")
        ax1.plot(x, np.sqrt(1 - a), "--", marker=mk, ms=4, color=col, label=f"{name}: noise sqrt(1-abar)")
        snr = a[1:] / np.clip(1 - a[1:], 1e-12, None)
        ax2.semilogy(x[1:], snr, "-", marker=mk, ms=4, color=col, label=name)
    ax1.set_xlabel("normalised time k / T")
    ax1.set_ylabel("coefficient")
    ax1.set_ylim(-0.02, 1.02)
    ax1.set_title("signal and noise in q(x_k | x_0)")
    ax1.legend(fontsize=7)
    ax2.set_xlabel("normalised time k / T")
    ax2.set_ylabel("SNR = abar / (1 - abar)")
    ax2.set_title("signal-to-noise ratio (log scale)")
    ax2.axhline(1.0, color="grey", lw=0.7, ls=":")
    ax2.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_posterior_coefficients(tables: Mapping[str, Mapping[str, Any]], title: str | None = None) -> Figure:
    """The posterior q(x_t | x_{t+1}, x0) per code time, for one or several schedules.

    Args:
        tables: name -> dict with ``coef_x0`` (T,), ``coef_xt`` (T,) and ``variance`` (T,) over code times 0..T-1.
    Returns one panel per quantity (c1 on x0, c2 on x_{t+1}, posterior std), code time on the x axis.
    """
    if not tables:
        raise ValueError("plot_posterior_coefficients: need at least one table")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    keys = [("coef_x0", "c1: weight on x0"), ("coef_xt", "c2: weight on x_{t+1}"), ("variance", "posterior std")]
    for name, tab in tables.items():
        for ax, (k, lab) in zip(axes, keys):
            v = _np(tab[k]).astype(np.float64).ravel()
            if k == "variance":
                v = np.sqrt(np.clip(v, 0, None))
            ax.plot(np.arange(len(v)), v, "o-", ms=4, label=name)
            ax.set_title(lab)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("code time t (paper t = code t + 1)")
        ax.set_ylim(-0.03, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 04: the latent z
# ---------------------------------------------------------------------------------------------
def plot_z_spread(rows: Mapping[str, Any], image: Any | None = None, x_t: Any | None = None,
                  target: Any | None = None, n_show: int = 4, size: float = 2.1,
                  std_vmax: float | None = None, title: str | None = None) -> Figure:
    """Predictions of x0 for the same (x_t, image) and different z, and their spread.

    Args:
        rows: model name -> predictions (N, H, W) (or (N, 1, H, W)) in [-1, 1], one per z.
        image, x_t, target: optional context panels on the left (image (C, H, W) in [0, 1]; x_t and target in
            label space).
        n_show: members shown per row; the last panel is the per-pixel std over **all** N members.
        std_vmax: colour limit of the std panels (default: the largest std over rows, at least 1e-6).
    Returns a figure of ``len(rows)`` rows; the std panels share one colour scale and carry colourbars.
    """
    if not rows:
        raise ValueError("plot_z_spread: need at least one row")
    preds = {}
    for name, p in rows.items():
        a = _np(p)
        if a.ndim == 4 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim != 3 or a.shape[0] < 2:
            raise ValueError(f"plot_z_spread: row {name!r} needs (N >= 2, H, W) predictions, got {a.shape}")
        preds[name] = a
    stds = {k: v.std(axis=0) for k, v in preds.items()}
    vmax = std_vmax if std_vmax is not None else max(1e-6, max(float(s.max()) for s in stds.values()))
    ctx = [(n, v) for n, v in (("image", image), ("noisy input x_t", x_t), ("target x0", target)) if v is not None]
    show = min(n_show, min(v.shape[0] for v in preds.values()))
    ncols = len(ctx) + show + 1
    fig, axes = plt.subplots(len(preds), ncols, figsize=(size * ncols + 0.8, size * len(preds) + 0.5), squeeze=False,
                             layout="constrained")
    for r, (name, p) in enumerate(preds.items()):
        for c, (cname, val) in enumerate(ctx):
            ax = axes[r, c]
            if cname == "image":
                ax.imshow(_rgb(val))
            else:
                ax.imshow(_map2d(val), cmap=DIVERGING, vmin=-2.5 if cname.startswith("noisy") else -1,
                          vmax=2.5 if cname.startswith("noisy") else 1)
            ax.set_title(cname if r == 0 else "")
            _off(ax)
        for j in range(show):
            ax = axes[r, len(ctx) + j]
            im = ax.imshow(p[j], cmap=DIVERGING, vmin=-1, vmax=1)
            ax.set_title(f"z{j + 1}")
            _off(ax)
        fig.colorbar(im, ax=axes[r, len(ctx):len(ctx) + show].tolist(), fraction=0.02, pad=0.01, label="x0 prediction")
        ax = axes[r, -1]
        ims = ax.imshow(stds[name], cmap="magma", vmin=0, vmax=vmax)
        ax.set_title(f"std over {p.shape[0]} z\n(mean {stds[name].mean():.2g})")
        _off(ax)
        fig.colorbar(ims, ax=ax, fraction=0.046, pad=0.04)
        axes[r, 0].set_ylabel(name)
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 05: the discriminator's attention
# ---------------------------------------------------------------------------------------------
def plot_attention_grid(image: Any, label: Any, maps: Mapping[str, Mapping[str, Any]], alpha: float = 0.6,
                        size: float = 2.5, title: str | None = None) -> Figure:
    """A_D at several scales, over the image with the label's contour, one row per normalisation.

    Args:
        image: (C, H, W) in [0, 1]; label: (H, W) (any two values; its contour is drawn in yellow).
        maps: row name (e.g. ``"raw"``, ``"minmax"``) -> column name (e.g. ``"1/4 (16 px)"``) -> A_D (H, W).
        alpha: opacity of the map over the image.
    Returns a figure: a first column with the image and its label, then one panel per scale, each with its
    **own** colourbar (raw maps are ~0.01 and signed; their scale differs per layer).
    """
    if not maps:
        raise ValueError("plot_attention_grid: need at least one row of maps")
    ncols = 1 + max(len(v) for v in maps.values())
    fig, axes = plt.subplots(len(maps), ncols, figsize=(size * ncols + 1.2 * (ncols - 1), size * len(maps) + 0.4),
                             squeeze=False)
    rgb = _rgb(image)
    for r, (rname, cols) in enumerate(maps.items()):
        ax = axes[r, 0]
        ax.imshow(rgb)
        _contour(ax, label)
        ax.set_title("image + label contour")
        ax.set_ylabel(rname)
        _off(ax)
        for c, (cname, m) in enumerate(cols.items(), start=1):
            ax = axes[r, c]
            a = _map2d(m)
            ax.imshow(rgb * 0.5 + 0.25)
            lo, hi = float(a.min()), float(a.max())
            if lo < 0 < hi:
                v = max(abs(lo), abs(hi))
                im = ax.imshow(a, cmap=DIVERGING, vmin=-v, vmax=v, alpha=alpha)
            else:
                im = ax.imshow(a, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-12, alpha=alpha)
            _contour(ax, label)
            ax.set_title(f"{rname}: {cname}")
            _off(ax)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, format="%.3g")
        for c in range(len(cols) + 1, ncols):
            axes[r, c].axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_attention_effect(panels: Sequence[tuple[str, Any]], noisy_vlim: float = 2.5, size: float = 2.6,
                          title: str | None = None) -> Figure:
    """A row of label-space maps with individual colourbars, e.g. x0, A_D, x0 ⊙ A_D, noised x0, noised x0 ⊙ A_D.

    Args:
        panels: (title, map (H, W)) pairs. Maps whose title starts with ``"A_D"`` use a sequential colour map
            scaled to their own range; the others a diverging map on [-1, 1], widened to ``noisy_vlim`` when
            the map leaves [-1.05, 1.05] (noised maps) and narrowed to +-max|map| when the map stays inside
            [-0.5, 0.5] (a label scaled by a raw A_D of ~0.01: read the colourbar).
    """
    if not panels:
        raise ValueError("plot_attention_effect: need at least one panel")
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels) + 0.8, size + 0.5), squeeze=False)
    for ax, (name, m) in zip(axes[0], panels):
        a = _map2d(m)
        if name.startswith("A_D"):
            lo, hi = float(a.min()), float(a.max())
            im = ax.imshow(a, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-12)
        else:
            peak = float(np.abs(a).max())
            v = noisy_vlim if peak > 1.05 else (1.0 if peak > 0.5 else max(peak, 1e-12))
            im = ax.imshow(a, cmap=DIVERGING, vmin=-v, vmax=v)
        ax.set_title(name)
        _off(ax)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, format="%.3g")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 06: sampling and the ensemble
# ---------------------------------------------------------------------------------------------
def plot_sampling_strip(x_in: Sequence[Any], x0_hat: Sequence[Any], image: Any | None = None,
                        target: Any | None = None, step_labels: Sequence[str] | None = None,
                        size: float = 2.2, title: str | None = None) -> Figure:
    """Algorithm 2 as a strip: G's noisy input at each step (top) and its x0 prediction (bottom).

    Args:
        x_in: per step (sampling order, code_t = T-1..0) the noisy label G sees, (H, W) each.
        x0_hat: per step the x0 prediction (H, W) in [-1, 1]; the last one **is** the sample (no noise at t = 0).
        image, target: optional context panels on the left (image in [0, 1], target in label space or {0, 1}).
        step_labels: one label per step (default ``"step i"``).
    """
    if len(x_in) != len(x0_hat) or not x_in:
        raise ValueError("plot_sampling_strip: x_in and x0_hat need the same (non-zero) number of steps")
    n = len(x_in)
    labels = list(step_labels) if step_labels else [f"step {i + 1}" for i in range(n)]
    ctx = int(image is not None) + int(target is not None)
    fig, axes = plt.subplots(2, ctx + n, figsize=(size * (ctx + n) + 1.0, 2 * size + 1.2), squeeze=False)
    c = 0
    if image is not None:
        axes[0, c].imshow(_rgb(image))
        axes[0, c].set_title("image")
        c += 1
    if target is not None:
        axes[0, c].imshow(_map2d(target), cmap="gray")
        axes[0, c].set_title("ground truth")
        c += 1
    for j in range(ctx):
        axes[1, j].axis("off")
        _off(axes[0, j])
    vin = max(1.0, float(max(np.abs(_map2d(x)).max() for x in x_in)))
    for i in range(n):
        im0 = axes[0, ctx + i].imshow(_map2d(x_in[i]), cmap=DIVERGING, vmin=-vin, vmax=vin)
        axes[0, ctx + i].set_title(f"{labels[i]}\nG's input")
        im1 = axes[1, ctx + i].imshow(_map2d(x0_hat[i]), cmap=DIVERGING, vmin=-1, vmax=1)
        axes[1, ctx + i].set_title(f"{labels[i]}\nx0 prediction")
        _off(axes[0, ctx + i])
        _off(axes[1, ctx + i])
    fig.colorbar(im0, ax=axes[0, -1], fraction=0.046, pad=0.04, label="noisy label")
    fig.colorbar(im1, ax=axes[1, -1], fraction=0.046, pad=0.04, label="predicted x0")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_ensemble(image: Any, target: Any, samples: Any, mean: Any | None = None, variance: Any | None = None,
                  threshold: float = 0.5, n_show: int = 5, size: float = 2.4, title: str | None = None) -> Figure:
    """Ensemble members, their mean, the per-pixel variance and the error map of the thresholded mean.

    Args:
        image: (C, H, W) in [0, 1]; target: (H, W) in {0, 1}.
        samples: (N, H, W) (or (N, 1, H, W)) members mapped to [0, 1].
        mean, variance: (H, W) (default: computed from ``samples``; variance without Bessel correction).
        threshold: the mask is ``mean > threshold``.
    Returns two rows: members (top); image, mean, variance, errors (bottom; TP green, FP red, FN blue).
    """
    s = _np(samples)
    if s.ndim == 4 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim != 3:
        raise ValueError(f"plot_ensemble: samples must be (N, H, W), got {s.shape}")
    m = s.mean(0) if mean is None else _map2d(mean)
    v = s.var(0) if variance is None else _map2d(variance)
    g = _map2d(target) > 0.5
    show = min(n_show, s.shape[0])
    ncols = max(show, 4)
    fig, axes = plt.subplots(2, ncols, figsize=(size * ncols + 1.0, 2 * size + 0.6), squeeze=False)
    for j in range(ncols):
        ax = axes[0, j]
        _off(ax)
        if j >= show:
            ax.axis("off")
            continue
        ax.imshow(s[j], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"member {j + 1}")
    pred = m > threshold
    err = error_rgb(pred, g, foreground=True)
    rgb = _rgb(image)
    bottom = axes[1]
    bottom[0].imshow(rgb)
    bottom[0].set_title("image")
    im = bottom[1].imshow(m, cmap="viridis", vmin=0, vmax=1)
    bottom[1].set_title(f"ensemble mean ({s.shape[0]} members)")
    fig.colorbar(im, ax=bottom[1], fraction=0.046, pad=0.04)
    im = bottom[2].imshow(v, cmap="magma", vmin=0, vmax=max(float(v.max()), 1e-6))  # own scale: read the colourbar
    bottom[2].set_title(f"per-pixel variance (max {float(v.max()):.2g})")
    fig.colorbar(im, ax=bottom[2], fraction=0.046, pad=0.04)
    bottom[3].imshow(np.where(err.sum(-1, keepdims=True) > 0, err, rgb * 0.6))
    bottom[3].set_title(f"mean > {threshold}: TP green, FP red, FN blue")
    for j in range(ncols):
        _off(bottom[j])
        if j >= 4:
            bottom[j].axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
