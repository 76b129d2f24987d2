"""General figures: overlays keep the image visible, learning curves and tables render."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import pytest  # noqa: E402

from diffseg_core import plots  # noqa: E402
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


def test_loss_traces_and_metric_vs():
    fig = plots.plot_loss_traces({"d_real": [0.7, 0.6, 0.5], "d_fake": [0.7, 0.72, 0.8]}, steps=[10, 20, 30],
                              hline=np.log(2), hline_label="log 2")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), [10, 20, 30])
    assert len(ax.get_lines()) == 3
    fig = plots.plot_metric_vs([1, 3, 5], {"dice": [0.5, 0.6, 0.62]}, "ensemble size", "Dice", errors={"dice": [0, 0.01, 0.01]})
    assert fig.axes[0].get_xlabel() == "ensemble size"
    with pytest.raises(ValueError):
        plots.plot_metric_vs([1, 2], {"dice": [0.5]}, "x", "y")



def test_error_rgb_colours_are_the_one_scheme():
    pred = np.array([[1, 1], [0, 0]])
    gt = np.array([[1, 0], [1, 0]])
    e = plots.error_rgb(pred, gt)
    assert tuple(e[0, 0]) == pytest.approx((0.1, 0.8, 0.2))  # TP green
    assert tuple(e[0, 1]) == pytest.approx((0.95, 0.1, 0.1))  # FP red
    assert tuple(e[1, 0]) == pytest.approx((0.1, 0.4, 1.0))  # FN blue
    assert tuple(e[1, 1]) == (0, 0, 0)  # TN
    assert plots.ERROR_COLOURS == {"TP": (0.1, 0.8, 0.2), "FP": (0.95, 0.1, 0.1), "FN": (0.1, 0.4, 1.0)}


def test_to_hwc_accepts_chw_hwc_and_gray():
    assert plots.to_hwc(np.zeros((3, 5, 7))).shape == (5, 7, 3)
    assert plots.to_hwc(np.zeros((5, 7, 3))).shape == (5, 7, 3)
    assert plots.to_hwc(np.zeros((1, 5, 7))).shape == (5, 7, 3)
    assert plots.to_hwc(np.full((5, 7), 2.0)).max() == 1.0  # clipped to [0, 1]
    assert plots.to_hwc(torch.zeros(3, 4, 4)).shape == (4, 4, 3)


def test_results_table_shows_every_protocol_whole():
    protocol = "unet on synthetic (resized to 256x256; sliding-window tiles of 64 px); test split, 5 images; " * 3
    df = results_table([{"model": "a", "dice_mean": 0.5, "protocol": protocol},
                        {"model": "paper", "dice_mean": 0.8, "iou_mean": None, "protocol": "quoted <Table 2>"}])
    assert list(df.columns)[-1] == "protocol"
    html = df._repr_html_()
    assert 'class="dataframe results-table"' in html
    assert html.count('<tr class="protocol">') == 2 and protocol in html  # not cut at 50 characters
    assert "quoted &lt;Table 2&gt;" in html and "\u2014" in html  # escaped; a missing value is a dash
