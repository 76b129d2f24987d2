"""General figures: overlays keep the image visible, learning curves and tables render."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffseg_core.plots import error_overlay, image_grid, plot_learning_curves, results_table, show_overlay, to_display  # noqa: E402


def test_to_display_layouts():
    rgb = np.random.rand(3, 5, 7)
    assert to_display(rgb).shape == (5, 7, 3)
    assert to_display(np.random.rand(1, 5, 7)).shape == (5, 7)
    assert to_display(np.full((4, 4), 2.0)).max() == 1.0


def test_error_overlay_shows_the_dimmed_image_under_true_negatives():
    img = np.ones((3, 8, 8), dtype=np.float32)
    pred = np.zeros((8, 8), int); gt = np.zeros((8, 8), int)
    pred[0, 0] = gt[0, 0] = 1; pred[1, 1] = 1; gt[2, 2] = 1
    fig, ax = plt.subplots()
    error_overlay(ax, img, pred, gt)
    base = ax.images[0].get_array()
    assert base.shape == (8, 8, 3) and np.allclose(base, 0.6)  # the image itself, dimmed, not a transposed copy
    overlay = ax.images[1].get_array()
    assert overlay[0, 0, 1] > 0.5 and overlay[1, 1, 0] > 0.5 and overlay[2, 2, 2] > 0.5  # TP green, FP red, FN blue
    assert overlay[5, 5, 3] == 0  # true negatives stay transparent
    plt.close(fig)


def test_grid_curves_and_table():
    fig = image_grid([np.random.rand(3, 8, 8)] * 3, [np.zeros((8, 8), int)] * 3, titles=["a", "b", "c"], ncols=2)
    assert len(fig.axes) == 4
    fig, ax = plt.subplots()
    show_overlay(ax, np.random.rand(8, 8), np.eye(8, dtype=int))
    hist = {"steps": [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}], "val": [{"step": 2, "dice": 0.4}]}
    fig = plot_learning_curves(hist)
    assert fig.axes[0].get_lines()[0].get_ydata().tolist() == [1.0, 0.5]
    df = results_table([{"model": "x", "dice_mean": 0.123456, "protocol": "p"}])
    assert df.loc[0, "dice_mean"] == 0.1235
    plt.close("all")
