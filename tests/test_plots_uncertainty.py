"""Chapter 14's figures draw what they are given: the right number of panels, curves and axis labels."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from diffseg_core import uncertainty as U  # noqa: E402
from diffseg_core.plots.uncertainty import (plot_reliability, plot_sparsification,  # noqa: E402
                                            plot_uncertainty_overlays, plot_uncertainty_vs_dice)


def test_overlays_one_row_per_predictor_with_shared_columns():
    rng = np.random.default_rng(0)
    img, gt = rng.random((3, 16, 16)), (rng.random((16, 16)) > 0.5).astype(int)
    rows = {"a": (gt, {"variance": rng.random((16, 16)) * 0.1, "entropy": rng.random((16, 16))}),
            "b": (1 - gt, {"variance": rng.random((16, 16)) * 0.2, "entropy": rng.random((16, 16))})}
    fig = plot_uncertainty_overlays(img, gt, rows, title="t")
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 8                                   # 2 rows x (image, errors, 2 maps)
    clims = [ax.images[0].get_clim() for ax in images if ax.get_title() == "variance"]
    assert clims[0] == clims[1] and clims[0][1] == pytest.approx(max(r[1]["variance"].max() for r in rows.values()))
    with pytest.raises(ValueError, match="same, non-zero number"):
        plot_uncertainty_overlays(img, gt, {"a": (gt, {"v": gt}), "b": (gt, {})})
    with pytest.raises(ValueError, match="shape"):
        plot_uncertainty_overlays(img, gt, {"a": (gt, {"v": np.zeros((4, 4))})})
    plt.close("all")


def test_reliability_and_sparsification_curves():
    p = np.array([0.05, 0.05, 0.95, 0.95, 1.0])
    y = np.array([0, 1, 1, 1, 1])
    fig = plot_reliability({"m": U.reliability_bins(p, y, 10)})
    ax = fig.axes[0]
    line = ax.get_lines()[1]                                  # after the diagonal
    np.testing.assert_allclose(line.get_xdata(), [0.05, 2.9 / 3])   # only the two non-empty bins
    assert fig.axes[1].get_yscale() == "log"
    f = np.linspace(0, 0.4, 3)
    fig = plot_sparsification(f, {"variance": [0.5, 0.6, 0.7]}, [0.5, 0.9, 1.0], colors={"variance": "red"})
    ax = fig.axes[0]
    assert ax.get_lines()[0].get_color() == "red"
    assert [l.get_label() for l in ax.get_lines()][:2] == ["variance", "oracle (errors referred first)"]
    assert ax.get_lines()[-1].get_ydata()[0] == 0.5            # random referral: flat at the full Dice
    with pytest.raises(ValueError, match="curve"):
        plot_sparsification(f, {"v": [0.5]}, [0.5, 0.9, 1.0])
    fig = plot_uncertainty_vs_dice({"m": ([0.1, 0.2], [0.8, 0.7])})
    assert fig.axes[0].get_ylabel() == "Dice of the image"
    plt.close("all")
