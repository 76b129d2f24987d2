"""Figures for volumes (chapter 08): a slice montage, per-class Dice per volume, the disagreement of a slice-wise
and a 3-D model across slices, and an interactive slice viewer.

Volumes are ``(X, Y, Z)`` arrays in the stored voxel order, cut into slices along the last axis (the axis the
slice-wise model works on, :mod:`diffseg_core.data.hippocampus`). Labels are drawn in the book's class colours
(:data:`diffseg_core.plots.CLASS_COLOURS`: anterior green, posterior orange). The viewer needs ipywidgets and
a live kernel; every chapter shows the static :func:`plot_volume_montage` first.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from . import CLASS_COLOURS, as_array, show_overlay

__all__ = ["pick_slices", "plot_volume_montage", "plot_per_class_dice", "per_slice_dice", "inter_slice_changes",
           "label_boundaries", "plot_slice_disagreement", "slice_viewer", "entropy_map"]


def _vol(x: Any) -> np.ndarray:
    a = as_array(x)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"expected a volume (X, Y, Z) or (1, X, Y, Z), got shape {a.shape}")
    return a


def _labels(x: Any) -> np.ndarray:
    return np.rint(_vol(x)).astype(np.int64)


def _legend(class_names: Sequence[str]) -> list[Patch]:
    return [Patch(color=CLASS_COLOURS[k % len(CLASS_COLOURS)], label=name) for k, name in enumerate(class_names) if k]


def pick_slices(label: Any, n: int = 6) -> list[int]:
    """``n`` slice indices (last axis) spread evenly over the slices that hold any foreground (all slices when
    none does)."""
    lab = _labels(label)
    fg = np.flatnonzero(lab.reshape(-1, lab.shape[-1]).any(0))
    pool = fg if fg.size else np.arange(lab.shape[-1])
    if pool.size <= n:
        return [int(i) for i in pool]
    return [int(pool[i]) for i in np.linspace(0, pool.size - 1, n).round().astype(int)]


def entropy_map(probs: Any) -> np.ndarray:
    """Normalised predictive entropy of class probabilities ``(K, ...)`` -> ``(...)`` in [0, 1] (1 = uniform)."""
    p = np.clip(as_array(probs), 1e-8, 1.0)
    return -(p * np.log(p)).sum(0) / np.log(p.shape[0])


def plot_volume_montage(image: Any, label: Any, pred: Any | None = None, uncertainty: Any | None = None,
                        slices: Sequence[int] | None = None, class_names: Sequence[str] = ("background", "anterior",
                                                                                          "posterior"),
                        uncertainty_label: str = "uncertainty", title: str | None = None, size: float = 1.9) -> Figure:
    """Rows image / ground truth / prediction / uncertainty, one column per slice of the volume.

    Args:
        image: ``(X, Y, Z)`` (or ``(1, X, Y, Z)``) in [0, 1].
        label, pred: ``(X, Y, Z)`` class indices (``pred`` optional).
        uncertainty: ``(X, Y, Z)`` scalar map (e.g. :func:`entropy_map` of the ensemble mean), optional; drawn
            with one colourbar for the row.
        slices: indices along the last axis (default :func:`pick_slices`).
    """
    img = _vol(image)
    lab = _labels(label)
    rows = [("image", None), ("ground truth", lab)]
    if pred is not None:
        rows.append(("prediction", _labels(pred)))
    if uncertainty is not None:
        rows.append((uncertainty_label, _vol(uncertainty)))
    slices = list(slices) if slices is not None else pick_slices(lab)
    if any(not 0 <= s < img.shape[-1] for s in slices):
        raise ValueError(f"plot_volume_montage: slices {slices} out of range 0..{img.shape[-1] - 1}")
    fig, axes = plt.subplots(len(rows), len(slices), figsize=(size * len(slices) + 0.8, size * len(rows) * 1.1),
                             squeeze=False)
    im = None
    vmax = float(np.max(rows[-1][1])) if uncertainty is not None else 1.0
    for r, (name, vol) in enumerate(rows):
        for c, s in enumerate(slices):
            ax = axes[r, c]
            if name == "image":
                show_overlay(ax, img[..., s], np.zeros_like(lab[..., s]))
            elif name == uncertainty_label and uncertainty is not None:
                im = ax.imshow(vol[..., s], cmap="magma", vmin=0.0, vmax=max(vmax, 1e-6))
                ax.axis("off")
            else:
                show_overlay(ax, img[..., s], vol[..., s])
            if r == 0:
                ax.set_title(f"slice {s}")
        axes[r, 0].text(-0.08, 0.5, name, transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center",
                        fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=list(axes[-1]), fraction=0.02, pad=0.01, label=uncertainty_label)
    fig.legend(handles=_legend(class_names), loc="upper right", ncol=len(class_names) - 1, fontsize=8)
    fig.suptitle(title or "Slices of one volume")
    return fig


def plot_per_class_dice(per_volume: Mapping[str, Mapping[str, Sequence[float]]], title: str | None = None,
                        ylabel: str = "Dice per volume") -> Figure:
    """Per-volume Dice by class and model: a box per (class, model) with every volume as a dot.

    ``per_volume[model][class]`` is the list of Dice values, one per test volume (same volumes for every model).
    """
    models = list(per_volume)
    classes = list(next(iter(per_volume.values())))
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(models) * len(classes), 3.6))
    width = 0.8 / max(len(models), 1)
    rng = np.random.default_rng(0)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, model in enumerate(models):
        for i, cls in enumerate(classes):
            vals = np.asarray(per_volume[model][cls], dtype=float)
            x = i + (j - (len(models) - 1) / 2) * width
            ax.boxplot(vals, positions=[x], widths=width * 0.8, showfliers=False, patch_artist=True,
                       boxprops=dict(facecolor=colours[j % len(colours)], alpha=0.3), medianprops=dict(color="k"))
            ax.scatter(x + rng.uniform(-width / 6, width / 6, vals.size), vals, s=12, color=colours[j % len(colours)],
                       label=model if i == 0 else None, zorder=3)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_ylabel(ylabel)
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title or "Dice per volume and class")
    fig.tight_layout()
    return fig


def per_slice_dice(pred: Any, target: Any, num_classes: int = 3) -> np.ndarray:
    """Dice of every slice (last axis), averaged over the foreground classes present in the slice's prediction or
    ground truth: ``(Z,)``, NaN where a slice has no foreground in either."""
    p, g = _labels(pred), _labels(target)
    if p.shape != g.shape:
        raise ValueError(f"per_slice_dice: prediction {p.shape} and target {g.shape} differ")
    out = np.full(p.shape[-1], np.nan)
    for z in range(p.shape[-1]):
        ds = []
        for k in range(1, num_classes):
            a, b = p[..., z] == k, g[..., z] == k
            if a.any() or b.any():
                ds.append(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))
        if ds:
            out[z] = float(np.mean(ds))
    return out


def inter_slice_changes(label: Any) -> float:
    """Fraction of voxel pairs adjacent **across** slices (last axis) whose labels differ: a jagged, slice-by-slice
    segmentation has more of them than its ground truth."""
    lab = _labels(label)
    return float(np.mean(lab[..., 1:] != lab[..., :-1]))


def label_boundaries(label: Any) -> np.ndarray:
    """``(X, Y, Z)`` bool: voxels whose label differs from at least one of their 6 face neighbours (the outline
    of every structure and the border between two classes; the volume's edge does not count)."""
    lab = _labels(label)
    edge = np.zeros(lab.shape, dtype=bool)
    for axis in range(3):
        diff = np.diff(lab, axis=axis) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        edge[tuple(lo)] |= diff
        edge[tuple(hi)] |= diff
    return edge


def plot_slice_disagreement(image: Any, target: Any, preds: Mapping[str, Any], num_classes: int = 3,
                            plane: int | None = None, class_names: Sequence[str] = ("background", "anterior",
                                                                                     "posterior"),
                            title: str | None = None) -> Figure:
    """How two models disagree across slices.

    Top: Dice per slice along the slicing axis for every model, and the fraction of voxels of each slice on which
    the first two models disagree (right axis). Bottom: a plane **across** the slices (``image[plane]``, axes Y and
    Z: each column is one slice) with the ground truth and each model's labels, and the voxels where the first two
    models disagree (dark red: only the first is right; blue: only the second is right; grey: neither). A slice-wise
    model that decides each slice on its own shows up as vertical streaks there.

    Args:
        image: ``(X, Y, Z)`` in [0, 1]; target and each prediction ``(X, Y, Z)`` class indices.
        preds: model name -> prediction (two or more).
        plane: index along the first axis (default: the one with the most ground-truth foreground).
    """
    if len(preds) < 2:
        raise ValueError("plot_slice_disagreement: give at least two predictions")
    img, gt = _vol(image), _labels(target)
    names = list(preds)
    vols = [_labels(preds[n]) for n in names]
    a, b = vols[0], vols[1]
    differ = a != b
    z = np.arange(gt.shape[-1])
    plane = int(np.argmax((gt > 0).sum(axis=(1, 2)))) if plane is None else int(plane)
    ncols = 2 + len(names)
    fig = plt.figure(figsize=(2.4 * ncols, 6.2))
    top = fig.add_subplot(2, 1, 1)
    for n, v in zip(names, vols):
        top.plot(z, per_slice_dice(v, gt, num_classes), marker=".", label=f"{n}: Dice per slice")
    top.set_xlabel("slice index (last axis)")
    top.set_ylabel("Dice (foreground classes)")
    top.set_ylim(0, 1.02)
    right = top.twinx()
    right.bar(z, differ.reshape(-1, differ.shape[-1]).mean(0), color="0.6", alpha=0.4,
              label=f"voxels where {names[0]} and {names[1]} differ")
    right.set_ylabel("fraction of voxels that differ")
    h1, l1 = top.get_legend_handles_labels()
    h2, l2 = right.get_legend_handles_labels()
    top.legend(h1 + h2, l1 + l2, loc="lower center", fontsize=7, ncol=3)
    panels = [("ground truth", gt[plane])] + [(n, v[plane]) for n, v in zip(names, vols)]
    for i, (name, lab) in enumerate(panels):
        ax = fig.add_subplot(2, ncols, ncols + 1 + i)
        show_overlay(ax, img[plane], lab, title=name)
        ax.set_xlabel("slice (Z)")
    ax = fig.add_subplot(2, ncols, 2 * ncols)
    rgb = np.repeat((img[plane] * 0.5)[..., None], 3, axis=-1)
    ok_a, ok_b = a[plane] == gt[plane], b[plane] == gt[plane]
    d = differ[plane]
    rgb[d & ok_a & ~ok_b] = (0.75, 0.05, 0.05)
    rgb[d & ~ok_a & ok_b] = (0.1, 0.4, 1.0)
    rgb[d & ~ok_a & ~ok_b] = (0.7, 0.7, 0.7)
    ax.imshow(np.clip(rgb, 0, 1))
    ax.set_title(f"{names[0]} vs {names[1]}")
    ax.axis("off")
    ax.legend(handles=[Patch(color=(0.75, 0.05, 0.05), label=f"only {names[0]} right"),
                       Patch(color=(0.1, 0.4, 1.0), label=f"only {names[1]} right"),
                       Patch(color=(0.7, 0.7, 0.7), label="neither")], loc="lower right", fontsize=6, framealpha=0.7)
    fig.suptitle(title or f"Disagreement across slices (plane {plane} of the first axis; columns are slices)")
    fig.tight_layout()
    return fig


def slice_viewer(image: Any, label: Any, pred: Any, uncertainty: Any | None = None,
                 class_names: Sequence[str] = ("background", "anterior", "posterior"), title: str = "") -> Any:
    """An ipywidgets slice viewer over image / ground truth / prediction / uncertainty (live kernels only).

    Returns a ``VBox`` (slider + output). Nothing is drawn until the slider moves, so executing the notebook
    (papermill, nbval) never runs the callback; the rendered book shows the static montage instead.
    """
    import ipywidgets as widgets

    img, lab, prd = _vol(image), _labels(label), _labels(pred)
    unc = _vol(uncertainty) if uncertainty is not None else None
    slider = widgets.IntSlider(value=img.shape[-1] // 2, min=0, max=img.shape[-1] - 1, description="slice",
                               continuous_update=False)
    canvas = widgets.Output()

    def redraw(change: Any = None) -> None:
        s = slider.value
        with canvas:
            canvas.clear_output(wait=True)
            n = 3 + (unc is not None)
            fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.8))
            show_overlay(axes[0], img[..., s], np.zeros_like(lab[..., s]), title=f"image, slice {s}")
            show_overlay(axes[1], img[..., s], lab[..., s], title="ground truth")
            show_overlay(axes[2], img[..., s], prd[..., s], title="prediction")
            if unc is not None:
                im = axes[3].imshow(unc[..., s], cmap="magma", vmin=0, vmax=max(float(unc.max()), 1e-6))
                axes[3].set_title("uncertainty")
                axes[3].axis("off")
                fig.colorbar(im, ax=axes[3], fraction=0.046)
            fig.legend(handles=_legend(class_names), loc="lower center", ncol=len(class_names) - 1, fontsize=7)
            fig.suptitle(title)
            plt.show()

    slider.observe(redraw, names="value")
    return widgets.VBox([slider, canvas])
