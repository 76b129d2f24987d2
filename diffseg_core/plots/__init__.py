"""General figures used across the book: overlays, error maps, learning curves and results tables.

Every function draws on a given matplotlib ``Axes`` (or makes its own figure) and returns the figure, so
notebooks compose them. Errors are always coloured the same way (:data:`ERROR_COLOURS`: true positives
green, false positives red, false negatives blue). Method-specific figures live in
:mod:`diffseg_core.plots.cdal` and :mod:`diffseg_core.plots.textdiff`; chapter 14's uncertainty figures in
:mod:`diffseg_core.plots.uncertainty`.
"""
from __future__ import annotations

from typing import Any, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

#: the one colour scheme for errors, used by every figure that compares a prediction with a ground truth
ERROR_COLOURS: dict[str, tuple[float, float, float]] = {"TP": (0.1, 0.8, 0.2), "FP": (0.95, 0.1, 0.1),
                                                        "FN": (0.1, 0.4, 1.0)}

# label colours: background transparent, then one colour per foreground class
CLASS_COLOURS = np.array([[0, 0, 0], [0.0, 0.85, 0.3], [1.0, 0.35, 0.1], [0.2, 0.5, 1.0], [0.9, 0.2, 0.9]])


def use_book_style() -> None:
    """Consistent, readable defaults for every figure in the book."""
    matplotlib.rcParams.update({
        "figure.dpi": 100, "savefig.dpi": 120, "figure.figsize": (8, 4), "axes.titlesize": 10,
        "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 8,
        "image.interpolation": "nearest", "axes.grid": False,
    })


def as_array(x: Any) -> np.ndarray:
    """A float numpy array from a numpy array or a (possibly grad-tracking, device) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    a = np.asarray(x)
    return a if a.dtype.kind == "f" else a.astype(np.float64)


def to_display(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` or ``(H, W)`` in [0, 1] -> ``(H, W, 3)`` or ``(H, W)`` ready for ``imshow``."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image[0] if image.shape[0] == 1 else np.moveaxis(image[:3], 0, -1)
    return np.clip(image, 0, 1)


def to_hwc(image: Any) -> np.ndarray:
    """An image for ``imshow`` from a numpy array or (any-device) tensor: ``(C, H, W)``, ``(H, W, C)`` or
    ``(H, W)`` -> ``(H, W, 3)`` float in [0, 1]."""
    if hasattr(image, "detach"):
        image = image.detach().float().cpu().numpy()
    a = np.asarray(image).astype(np.float32)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    elif a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.clip(a, 0.0, 1.0)


def show_image(ax: plt.Axes, image: np.ndarray, title: str | None = None) -> None:
    img = to_display(image)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_title(title or "")
    ax.axis("off")


def show_overlay(ax: plt.Axes, image: np.ndarray, mask: np.ndarray, title: str | None = None,
                 alpha: float = 0.45, contour: bool = False) -> None:
    """Image with its label map drawn on top (class k in ``CLASS_COLOURS[k]``; background left clear)."""
    show_image(ax, image, title)
    mask = np.asarray(mask)
    if contour:
        for k in range(1, int(mask.max()) + 1):
            ax.contour(mask == k, levels=[0.5], colors=[CLASS_COLOURS[k % len(CLASS_COLOURS)]], linewidths=0.8)
        return
    rgba = np.zeros(mask.shape + (4,), dtype=np.float32)
    for k in range(1, int(mask.max()) + 1):
        rgba[mask == k, :3] = CLASS_COLOURS[k % len(CLASS_COLOURS)]
        rgba[mask == k, 3] = alpha
    ax.imshow(rgba)


def error_rgb(pred: Any, target: Any, foreground: int = 1) -> np.ndarray:
    """``(H, W)`` prediction and target -> ``(H, W, 3)`` map in :data:`ERROR_COLOURS` (true negatives black)."""
    p, g = as_array(pred) == foreground, as_array(target) == foreground
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and target {g.shape} differ in shape")
    out = np.zeros(p.shape + (3,), dtype=np.float32)
    for m, key in ((p & g, "TP"), (p & ~g, "FP"), (~p & g, "FN")):
        out[m] = ERROR_COLOURS[key]
    return out


def error_overlay(ax: plt.Axes, image: np.ndarray, pred: np.ndarray, target: np.ndarray,
                  title: str | None = None, foreground: int = 1) -> None:
    """Errors in :data:`ERROR_COLOURS` (TP green, FP red, FN blue) over a dimmed image, with a legend."""
    from matplotlib.patches import Patch

    show_image(ax, np.asarray(image, dtype=np.float32) * 0.6, title)
    rgb = error_rgb(pred, target, foreground)
    rgba = np.concatenate([rgb, (rgb.sum(-1, keepdims=True) > 0) * np.float32(0.6)], axis=-1)
    ax.imshow(rgba)
    ax.legend(handles=[Patch(color=c, label=k) for k, c in ERROR_COLOURS.items()], loc="lower right", fontsize=7,
              framealpha=0.7)


def show_map(ax: plt.Axes, values: np.ndarray, title: str | None = None, cmap: str = "viridis",
             vmin: float | None = None, vmax: float | None = None, colorbar: bool = True) -> Any:
    """A scalar map with a colourbar (probabilities, variances, attention)."""
    im = ax.imshow(np.asarray(values), cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_title(title or "")
    ax.axis("off")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return im


def image_grid(images: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None = None,
               titles: Sequence[str] | None = None, ncols: int = 4, size: float = 2.6,
               suptitle: str | None = None) -> plt.Figure:
    """A grid of images, each optionally overlaid with its mask."""
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, min(ncols, n), figsize=(size * min(ncols, n), size * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        title = titles[i] if titles else None
        if masks is not None:
            show_overlay(ax, images[i], masks[i], title)
        else:
            show_image(ax, images[i], title)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_learning_curves(history: Any, ax: plt.Axes | None = None, losses: Sequence[str] | None = None,
                         title: str | None = None) -> plt.Figure:
    """Training losses (left axis, log scale) and validation Dice (right axis) against the step."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
    fig = ax.figure
    steps = history.steps if hasattr(history, "steps") else history["steps"]
    val = history.val if hasattr(history, "val") else history["val"]
    names = list(losses or sorted({k for s in steps for k in s} - {"step", "seconds"}))
    for name in names:
        pts = [(s["step"], s[name]) for s in steps if name in s]
        if pts:
            ax.plot(*zip(*pts), label=name, lw=1.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    if names and all(s.get(n, 1) > 0 for s in steps for n in names):
        ax.set_yscale("log")
    ax.legend(loc="upper left")
    vpts = [(v["step"], v["dice"]) for v in val if "dice" in v]
    if vpts:
        ax2 = ax.twinx()
        ax2.plot(*zip(*vpts), "o-", color="black", ms=3, lw=1, label="val Dice (per-image mean)")
        ax2.set_ylabel("validation Dice")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right")
    ax.set_title(title or "Learning curves")
    fig.tight_layout()
    return fig


_RESULTS_TABLE_CLASS: list[type] = []

#: MIME type under which a displayed results table also carries its rows as JSON. The executed notebook
#: thereby keeps every results row a chapter showed, and the main job (``python -m diffseg_core book``)
#: collects them into the book's results page (``diffseg_core.book.collect_results_rows``). The rendered
#: book ignores this MIME type; readers see the HTML table.
RESULTS_MIME = "application/vnd.diffseg.results+json"


def table_records(df: Any) -> list[dict[str, Any]]:
    """The rows of a results table as JSON-safe dicts: NumPy scalars become Python numbers, NaN becomes ``None``."""
    import math

    out = []
    for rec in df.to_dict("records"):
        row: dict[str, Any] = {}
        for key, value in rec.items():
            if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
                value = value.item()
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            elif value is not None and not isinstance(value, (bool, int, float, str)):
                value = str(value)
            row[str(key)] = value
        out.append(row)
    return out


def _results_table_class() -> type:
    """A ``pandas.DataFrame`` subclass whose HTML shows every cell in full (made once, lazily)."""
    if not _RESULTS_TABLE_CLASS:
        import pandas as pd

        class ResultsTable(pd.DataFrame):
            """A results table: a DataFrame whose notebook/HTML display shows every protocol whole
            (:func:`results_table_html`)."""

            @property
            def _constructor(self) -> type:
                return ResultsTable

            def _repr_html_(self) -> str | None:
                return results_table_html(self)

            def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
                # the rows travel with the executed notebook; the main job collects them (book/results)
                return {RESULTS_MIME: {"rows": table_records(self)}}

        _RESULTS_TABLE_CLASS.append(ResultsTable)
    return _RESULTS_TABLE_CLASS[0]


def results_table_html(df: Any) -> str:
    """HTML of a results table: the numbers in a row, and the row's protocol sentence whole beneath it.

    pandas cuts text cells to ``display.max_colwidth`` (50 characters) in its HTML display, which hid the
    protocol, the book's main honesty device; a protocol column beside ten numbers would also be pushed
    off the page. Here each row is followed by a full-width row ``<tr class="protocol">`` holding its
    protocol, and the table carries the CSS class ``results-table``. Missing values (a paper that does
    not report a metric) show as a dash.
    """
    import html as _html

    import pandas as pd

    import re

    body = df.drop(columns="protocol") if "protocol" in df.columns else df
    with pd.option_context("display.max_colwidth", None, "display.max_columns", None):
        table = pd.DataFrame(body).to_html(classes="results-table", border=0, index=False, na_rep="\u2014")
    if "protocol" not in df.columns:
        return table
    head, _, rest = table.partition("<tbody>")
    # column names may break after an underscore (dice_<wbr>global) so that the table fits the page
    head = re.sub(r"(<th[^>]*>)([^<]*)(</th>)", lambda m: m.group(1) + m.group(2).replace("_", "_<wbr>") + m.group(3), head)
    rows_html, _, tail = rest.partition("</tbody>")
    rows = rows_html.split("</tr>")[:-1]
    out = []
    for row_html, protocol in zip(rows, df["protocol"]):
        out.append(row_html + "</tr>")
        out.append(f'\n    <tr class="protocol"><td colspan="{body.shape[1]}"><em>protocol:</em> '
                   f"{_html.escape(str(protocol))}</td></tr>")
    return head + "<tbody>" + "".join(out) + "\n  </tbody>" + tail


def results_table(rows: Sequence[dict[str, Any]], digits: int = 4):
    """A results table (a pandas DataFrame) from result rows; float columns rounded; ``protocol`` last.

    Each row should carry a ``protocol``. In a notebook or the rendered book the table shows each row's
    protocol sentence whole, beneath the row (:func:`results_table_html`). Displaying the table (the last
    line of a cell) also stores its rows in the executed notebook under :data:`RESULTS_MIME`: that is how a
    chapter hands its results to the book's results page, with no extra call.
    """
    df = _results_table_class()(list(rows))
    for col in df.columns:
        if df[col].dtype.kind == "f":
            df[col] = df[col].round(digits)
    if "protocol" in df.columns:
        df = df[[c for c in df.columns if c != "protocol"] + ["protocol"]]
    return df


# ---------------------------------------------------------------------------------------------
# Small generic plots: loss traces and a metric against a setting
# ---------------------------------------------------------------------------------------------
def plot_loss_traces(traces: Mapping[str, Sequence[float]], steps: Sequence[int] | None = None,
                     ylabel: str = "loss", title: str | None = None, log: bool = False,
                     hline: float | None = None, hline_label: str | None = None) -> Any:
    """Named series against the step (``steps`` default 1..n); an optional reference line (e.g. log 2)."""
    if not traces:
        raise ValueError("plot_loss_traces: need at least one series")
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for name, vals in traces.items():
        v = as_array(vals).astype(np.float64).ravel()
        x = np.arange(1, len(v) + 1) if steps is None else np.asarray(steps)[: len(v)]
        ax.plot(x, v, lw=1.2, label=name)
    if hline is not None:
        ax.axhline(hline, color="grey", ls=":", lw=1, label=hline_label)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title or "")
    fig.tight_layout()
    return fig


def plot_metric_vs(x: Sequence[float], series: Mapping[str, Sequence[float]], xlabel: str, ylabel: str,
                   title: str | None = None, errors: Mapping[str, Sequence[float]] | None = None) -> Any:
    """One or several metric curves against a setting (e.g. Dice against ensemble size), optional error bars."""
    if not series:
        raise ValueError("plot_metric_vs: need at least one series")
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, ys in series.items():
        y = as_array(ys).astype(np.float64).ravel()
        if len(y) != len(x):
            raise ValueError(f"plot_metric_vs: series {name!r} has {len(y)} values for {len(x)} x values")
        err = None if not errors or name not in errors else as_array(errors[name]).ravel()
        ax.errorbar(list(x), y, yerr=err, marker="o", ms=4, capsize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "")
    fig.tight_layout()
    return fig
