"""The cDAL figures: drawn from small arrays whose content is known, checked for layout and drawn values."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from diffseg_core.plots import cdal as cp


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _images(ax: plt.Axes) -> list[np.ndarray]:
    return [np.asarray(im.get_array()) for im in ax.get_images()]


def _disc(n: int = 16) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    return np.where((yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (n / 4) ** 2, 1.0, -1.0)


def test_noised_levels_grid_and_shared_colour_range():
    x0 = _disc()
    rng = np.random.default_rng(0)
    rows = {"T = 4": [x0] + [x0 * 0.5 + rng.normal(size=x0.shape) for _ in range(4)],
            "T = 2": [x0, rng.normal(size=x0.shape), rng.normal(size=x0.shape)]}
    fig = cp.plot_noised_levels(rows, vlim=3.0)
    assert len([ax for ax in fig.axes if ax.get_images()]) == 5 + 3  # the empty 6th panel of "T = 2" draws nothing
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 1  # one shared colourbar
    panels = [ax for ax in fig.axes if ax.get_images() and ax.get_title()]
    assert len(panels) == 8
    np.testing.assert_array_equal(_images(panels[0])[0], x0)  # level 0 is drawn as given
    for ax in panels:
        assert ax.get_images()[0].get_clim() == (-3.0, 3.0)
    assert panels[0].get_ylabel() == "T = 4"


def test_noised_levels_accepts_tensors_and_rejects_multichannel():
    fig = cp.plot_noised_levels({"T = 1": [torch.ones(1, 1, 8, 8), torch.zeros(1, 8, 8)]})
    assert len([ax for ax in fig.axes if ax.get_title()]) == 2
    with pytest.raises(ValueError):
        cp.plot_noised_levels({"bad": [np.zeros((2, 8, 8))]})


def test_schedule_curves_plot_sqrt_of_abar_and_its_complement():
    abar = np.array([1.0, 0.5, 0.1, 0.01])
    fig = cp.plot_schedule_curves({"vp": abar, "linear": np.linspace(1, 0.01, 11)})
    ax1, ax2 = fig.axes[:2]
    lines = ax1.get_lines()
    assert len(lines) == 4  # signal + noise per schedule
    np.testing.assert_allclose(lines[0].get_xdata(), [0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(lines[0].get_ydata(), np.sqrt(abar))
    np.testing.assert_allclose(lines[1].get_ydata(), np.sqrt(1 - abar))
    np.testing.assert_allclose(ax2.get_lines()[0].get_ydata(), [1.0, 0.1 / 0.9, 0.01 / 0.99])
    assert ax2.get_yscale() == "log"


def test_posterior_coefficients_plot_std_not_variance():
    tab = {"coef_x0": [1.0, 0.5], "coef_xt": [0.0, 0.2], "variance": [0.0, 0.25]}
    fig = cp.plot_posterior_coefficients({"T = 2": tab})
    assert len(fig.axes) == 3
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [1.0, 0.5])
    np.testing.assert_allclose(fig.axes[2].get_lines()[0].get_ydata(), [0.0, 0.5])  # sqrt(0.25)


def test_z_spread_std_panel_is_the_std_over_members():
    preds = np.stack([np.full((8, 8), v) for v in (-1.0, 0.0, 1.0)])  # std over z = sqrt(2/3) everywhere
    same = np.stack([np.full((8, 8), 0.3)] * 3)                      # std 0
    fig = cp.plot_z_spread({"spread": preds, "collapsed": torch.from_numpy(same)[:, None]},
                           image=np.random.default_rng(0).random((3, 8, 8)), x_t=np.zeros((8, 8)), n_show=2)
    std_panels = [ax for ax in fig.axes if ax.get_title().startswith("std over")]
    assert len(std_panels) == 2
    np.testing.assert_allclose(_images(std_panels[0])[0], np.sqrt(2 / 3))
    np.testing.assert_allclose(_images(std_panels[1])[0], 0.0)
    assert std_panels[0].get_images()[0].get_clim() == std_panels[1].get_images()[0].get_clim()
    with pytest.raises(ValueError):
        cp.plot_z_spread({"one": preds[:1]})


def test_attention_grid_layout_and_colourbars():
    rng = np.random.default_rng(1)
    label = (_disc() > 0).astype(int)
    maps = {"raw": {"1/4": 0.01 + 0.002 * rng.normal(size=(16, 16)), "1/8": -0.01 + 0.001 * rng.normal(size=(16, 16))},
            "minmax": {"1/4": rng.random((16, 16)), "1/8": rng.random((16, 16))}}
    fig = cp.plot_attention_grid(rng.random((3, 16, 16)), label, maps)
    titled = [ax for ax in fig.axes if ax.get_title().startswith(("raw:", "minmax:"))]
    assert len(titled) == 4
    colourbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colourbars) == 4  # one per map
    raw_14 = titled[0].get_images()[1]
    np.testing.assert_allclose(raw_14.get_array(), maps["raw"]["1/4"])
    lo, hi = raw_14.get_clim()
    assert lo == pytest.approx(maps["raw"]["1/4"].min()) and hi == pytest.approx(maps["raw"]["1/4"].max())


def test_attention_grid_signed_map_uses_a_symmetric_range():
    a = np.linspace(-0.02, 0.01, 64).reshape(8, 8)
    fig = cp.plot_attention_grid(np.zeros((3, 8, 8)), np.zeros((8, 8)), {"raw": {"s": a}})
    im = [ax for ax in fig.axes if ax.get_title() == "raw: s"][0].get_images()[1]
    assert im.get_clim() == pytest.approx((-0.02, 0.02))


def test_attention_effect_panels():
    x0 = _disc(8)
    att = np.full((8, 8), 0.01)
    fig = cp.plot_attention_effect([("x0", x0), ("A_D (raw)", att), ("x0 * A_D", x0 * att),
                                    ("noised", x0 + 2 * np.random.default_rng(0).normal(size=(8, 8)))])
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled] == ["x0", "A_D (raw)", "x0 * A_D", "noised"]
    assert titled[0].get_images()[0].get_clim() == (-1.0, 1.0)
    assert titled[3].get_images()[0].get_clim() == (-2.5, 2.5)
    assert titled[2].get_images()[0].get_clim() == pytest.approx((-0.01, 0.01))  # a faint map gets its own range


def test_sampling_strip_two_rows_per_step():
    T = 4
    x_in = [np.random.default_rng(i).normal(size=(8, 8)) for i in range(T)]
    x0_hat = [np.tanh(x) for x in x_in]
    fig = cp.plot_sampling_strip(x_in, x0_hat, image=np.ones((3, 8, 8)), target=_disc(8) > 0,
                                 step_labels=[f"t={t}" for t in reversed(range(T))])
    tops = [ax for ax in fig.axes if ax.get_title().endswith("G's input")]
    bottoms = [ax for ax in fig.axes if ax.get_title().endswith("x0 prediction")]
    assert len(tops) == len(bottoms) == T
    assert tops[0].get_title() == "t=3\nG's input"
    np.testing.assert_allclose(_images(bottoms[-1])[0], x0_hat[-1])
    with pytest.raises(ValueError):
        cp.plot_sampling_strip(x_in, x0_hat[:2])


def test_ensemble_error_colours_and_statistics():
    target = np.zeros((4, 4))
    target[:2] = 1                                      # top half is foreground
    samples = np.zeros((2, 4, 4))
    samples[:, :2, :2] = 1                              # TP in the top-left
    samples[:, 2:, :2] = 1                              # FP in the bottom-left; FN top-right
    samples[1, 3, 3] = 1                                # one disagreement: mean 0.5, variance 0.25
    fig = cp.plot_ensemble(np.zeros((3, 4, 4)), target, samples)
    by_title = {ax.get_title(): ax for ax in fig.axes}
    mean = _images(by_title["ensemble mean (2 members)"])[0]
    var = _images([a for t, a in by_title.items() if t.startswith("per-pixel variance")][0])[0]
    assert mean[3, 3] == pytest.approx(0.5) and var[3, 3] == pytest.approx(0.25) and var[0, 0] == 0
    err = _images([a for t, a in by_title.items() if t.startswith("mean >")][0])[0]
    np.testing.assert_allclose(err[0, 0], (0.1, 0.8, 0.2), atol=1e-6)   # TP green
    np.testing.assert_allclose(err[3, 0], (0.95, 0.1, 0.1), atol=1e-6)  # FP red
    np.testing.assert_allclose(err[0, 3], (0.1, 0.4, 1.0), atol=1e-6)   # FN blue
    assert err[3, 3].sum() == 0  # mean 0.5 is not > 0.5: a true negative, dimmed black image
