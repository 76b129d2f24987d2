"""Figures for chapter 14 (uncertainty you can act on): pure matplotlib on arrays, each returning its figure.

* :func:`plot_uncertainty_overlays`: per predictor a row: the image, the errors of its thresholded mean,
  then its uncertainty maps, each with a colourbar;
* :func:`plot_reliability`: reliability diagram (observed foreground frequency against the mean predicted
  probability per bin, the diagonal = calibrated) above the pixel count per bin (log scale);
* :func:`plot_sparsification`: Dice of the kept pixels against the fraction referred, one curve per score,
  the oracle (errors referred first) and the random referral (flat at the full Dice);
* :func:`plot_uncertainty_vs_dice`: per-image mean uncertainty against per-image Dice, one marker per method.

The numbers come from :mod:`diffseg_core.uncertainty` (bins, curves); these functions only draw.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from . import as_array, error_overlay, show_image, show_map

__all__ = ["plot_uncertainty_overlays", "plot_reliability", "plot_sparsification", "plot_uncertainty_vs_dice"]


def plot_uncertainty_overlays(image: Any, target: Any, rows: Mapping[str, tuple[Any, Mapping[str, Any]]],
                              title: str | None = None, size: float = 2.8, cmap: str = "magma",
                              shared_scale: bool = True) -> Figure:
    """Uncertainty next to errors, one row per predictor.

    ``rows``: name -> (``pred`` (H, W) binary, ``maps`` name -> (H, W) uncertainty); every row must have the
    same number of maps. Each row shows the image ``(C, H, W)``, the errors of ``pred`` against ``target``
    (TP green, FP red, FN blue) and its maps with colourbars. ``shared_scale``: one colour range (0 to the
    largest value) per map column, so the rows compare at a glance; else each map its own range.
    """
    if not rows:
        raise ValueError("plot_uncertainty_overlays: need at least one row")
    shape = as_array(target).shape
    widths = {len(maps) for _, maps in rows.values()}
    if len(widths) != 1 or 0 in widths:
        raise ValueError(f"plot_uncertainty_overlays: every row needs the same, non-zero number of maps, got {sorted(widths)}")
    k = widths.pop()
    arrays = {name: (as_array(pred), [(m, as_array(v)) for m, v in maps.items()]) for name, (pred, maps) in rows.items()}
    for name, (pred, maps) in arrays.items():
        for m, a in [("prediction", pred)] + maps:
            if a.shape != shape:
                raise ValueError(f"plot_uncertainty_overlays: {name!r} {m} has shape {a.shape}, the target {shape}")
    vmax = [max(float(maps[j][1].max()) for _, maps in arrays.values()) for j in range(k)] if shared_scale else [None] * k
    fig, axes = plt.subplots(len(arrays), 2 + k, figsize=(size * (2 + k), size * 1.05 * len(arrays)), squeeze=False)
    for row, (name, (pred, maps)) in zip(axes, arrays.items()):
        show_image(row[0], image, name)
        error_overlay(row[1], image, pred, target, title="errors of the mean")
        for j, (ax, (m, a)) in enumerate(zip(row[2:], maps)):
            show_map(ax, a, title=m, cmap=cmap, vmin=0.0, vmax=vmax[j] if vmax[j] else None)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_reliability(bins: Mapping[str, Mapping[str, Any]], title: str | None = None) -> Figure:
    """Reliability diagrams of several predictors on the same axes.

    ``bins``: name -> the dict of :func:`diffseg_core.uncertainty.reliability_bins` (``edges``, ``count``,
    ``confidence``, ``frequency``). Top: frequency against confidence per non-empty bin and the diagonal;
    bottom: pixels per bin (log scale), so a reader sees which bins carry the weight of the ECE.
    """
    if not bins:
        raise ValueError("plot_reliability: need at least one predictor")
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5.2, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="calibrated")
    for name, r in bins.items():
        full = np.asarray(r["count"]) > 0
        line, = ax.plot(np.asarray(r["confidence"])[full], np.asarray(r["frequency"])[full], "o-", ms=3.5, lw=1.2,
                        label=name)
        edges = np.asarray(r["edges"])
        axc.step(edges[:-1], np.maximum(np.asarray(r["count"]), 0.5), where="post", color=line.get_color(), lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed foreground frequency")
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title(title or "Reliability diagram")
    axc.set_yscale("log")
    axc.set_xlabel("predicted foreground probability (bin mean)")
    axc.set_ylabel("pixels per bin")
    fig.tight_layout()
    return fig


def plot_sparsification(fractions: Sequence[float], curves: Mapping[str, Sequence[float]], oracle: Sequence[float],
                        ax: plt.Axes | None = None, title: str | None = None,
                        colors: Mapping[str, Any] | None = None) -> Figure:
    """Dice of the kept pixels against the fraction referred: each curve of ``curves`` (name -> (F,)), the
    ``oracle`` (F,) dashed, and random referral (dotted, flat at the oracle's value at fraction 0, which is
    the full Dice). ``colors`` (name -> colour) keeps a score's colour the same across panels."""
    f = np.asarray(fractions, dtype=np.float64)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    fig = ax.figure
    orc = np.asarray(oracle, dtype=np.float64)
    if orc.shape != f.shape:
        raise ValueError(f"plot_sparsification: oracle has {orc.shape}, fractions {f.shape}")
    for name, c in curves.items():
        c = np.asarray(c, dtype=np.float64)
        if c.shape != f.shape:
            raise ValueError(f"plot_sparsification: curve {name!r} has {c.shape}, fractions {f.shape}")
        ax.plot(f, c, lw=1.4, label=name, color=(colors or {}).get(name))
    ax.plot(f, orc, "k--", lw=1.2, label="oracle (errors referred first)")
    ax.axhline(orc[0], color="grey", ls=":", lw=1, label="random referral")
    ax.set_xlabel("fraction of pixels referred (most uncertain first)")
    ax.set_ylabel("Dice of the kept pixels (pooled)")
    ax.set_xlim(f.min(), f.max())
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title or "Sparsification")
    fig.tight_layout()
    return fig


def plot_uncertainty_vs_dice(per_image: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                             xlabel: str = "mean uncertainty of the image", ax: plt.Axes | None = None,
                             title: str | None = None) -> Figure:
    """``per_image``: name -> (uncertainty per image, Dice per image); one scatter per name."""
    if not per_image:
        raise ValueError("plot_uncertainty_vs_dice: need at least one series")
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
    fig = ax.figure
    for name, (u, d) in per_image.items():
        u, d = np.asarray(u, dtype=np.float64), np.asarray(d, dtype=np.float64)
        if u.shape != d.shape:
            raise ValueError(f"plot_uncertainty_vs_dice: {name!r} has {u.size} uncertainties and {d.size} Dice values")
        ax.scatter(u, d, s=22, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Dice of the image")
    ax.legend(fontsize=7)
    ax.set_title(title or "Per-image uncertainty against Dice")
    fig.tight_layout()
    return fig
