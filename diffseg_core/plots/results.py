"""The figure of the book's results page: Dice of every scored row, this run beside the papers.

:func:`plot_results_dice` takes the rows the main job collected from the chapters (already reduced by
``diffseg_core.book.score_row`` to ``{"model", "paper", "dice", ...}``), grouped by chapter, and draws one
horizontal bar per row: this run's rows in orange, the papers' quoted numbers in blue, chapters separated
and named. It draws on a bare :class:`matplotlib.figure.Figure` (no pyplot), so the main job can save it
whatever the backend.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = ["OURS_COLOUR", "PAPER_COLOUR", "plot_results_dice"]

OURS_COLOUR = "#f28e2b"
PAPER_COLOUR = "#4e79a7"


def plot_results_dice(groups: Mapping[str, Sequence[Mapping[str, Any]]], width: float = 9.0) -> Figure:
    """Horizontal bars of Dice (per-image mean), one per row, grouped by chapter (top to bottom in order).

    Args:
        groups: chapter title -> rows, each with ``model`` (str), ``paper`` (bool: quoted from a paper) and
            ``dice`` (float in [0, 1]).
        width: figure width in inches (the height grows with the number of rows).

    Each bar is labelled with its value; the y tick labels are the row names; the chapter titles sit above
    their rows. Raises ``ValueError`` when there is no row or a Dice value lies outside [0, 1].
    """
    items: list[tuple[str, Mapping[str, Any]]] = [(title, r) for title, rows in groups.items() for r in rows]
    if not items:
        raise ValueError("plot_results_dice: no scored row to draw")
    for title, r in items:
        if not 0.0 <= float(r["dice"]) <= 1.0:
            raise ValueError(f"plot_results_dice: Dice {r['dice']} of {r['model']!r} ({title}) is outside [0, 1]")
    n_rows, n_groups = len(items), len(groups)
    fig = Figure(figsize=(width, 0.9 + 0.28 * n_rows + 0.35 * n_groups))
    ax = fig.add_subplot(1, 1, 1)
    y, ticks, labels = 0.0, [], []
    for title, rows in groups.items():
        ax.text(0.0, y - 0.2, title, fontsize=9, fontweight="bold", va="bottom", ha="left")
        y += 0.55
        for r in rows:
            dice = float(r["dice"])
            colour = PAPER_COLOUR if r["paper"] else OURS_COLOUR
            ax.barh(y, dice, height=0.7, color=colour, edgecolor="0.3", linewidth=0.5)
            ax.text(dice + 0.005, y, f"{dice:.3f}", va="center", ha="left", fontsize=7)
            ticks.append(y)
            labels.append(str(r["model"]))
            y += 1.0
        y += 0.5
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=7.5)
    ax.set_ylim(y - 0.4, -0.9)
    ax.set_xlim(0.0, 1.08)
    ax.set_xlabel("Dice (per-image mean)")
    ax.set_title("Dice by chapter: this run beside the papers' reported numbers")
    ax.grid(axis="x", color="0.85", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.legend(handles=[Patch(color=OURS_COLOUR, label="this run"), Patch(color=PAPER_COLOUR, label="paper (quoted)")],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
