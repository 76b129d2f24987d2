"""Volume figures of chapter 08: drawn from small volumes whose content is known."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from diffseg_core.plots import hippocampus as hp


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _volume():
    img = np.linspace(0, 1, 8 * 10 * 12, dtype=np.float32).reshape(8, 10, 12)
    lab = np.zeros((8, 10, 12), np.int64)
    lab[2:6, 2:5, 3:9] = 1
    lab[2:6, 5:8, 3:9] = 2
    return img, lab


def test_pick_slices_spreads_over_foreground():
    _, lab = _volume()
    assert hp.pick_slices(lab, 3) == [3, 5, 8]         # positions 0, 2.5 -> 2 (half to even), 5 of 3..8
    assert hp.pick_slices(lab, 10) == [3, 4, 5, 6, 7, 8]
    assert hp.pick_slices(np.zeros((4, 4, 5)), 2) == [0, 4]


def test_per_slice_dice_and_inter_slice_changes_by_hand():
    _, lab = _volume()
    pred = lab.copy()
    pred[..., 4] = 0                                  # one slice missed entirely
    d = hp.per_slice_dice(pred, lab)
    assert np.isnan(d[0]) and d[3] == 1.0 and d[4] == 0.0
    # label changes across slices: the two boundary planes of each class block (8 x 10 x 11 pairs)
    changes = 2 * (4 * 3 + 4 * 3)
    assert hp.inter_slice_changes(lab) == pytest.approx(changes / (8 * 10 * 11))
    assert hp.inter_slice_changes(pred) > hp.inter_slice_changes(lab)


def test_label_boundaries_by_hand():
    lab = np.zeros((3, 3, 4), np.int64)
    lab[1, 1, 1] = 1
    lab[1, 1, 2] = 2
    edge = hp.label_boundaries(lab)
    # the two labelled voxels, and their 6 + 6 face neighbours minus the two they share: 2 + 10
    assert edge.sum() == 12 and edge[1, 1, 1] and edge[1, 1, 2] and edge[0, 1, 1] and not edge[0, 0, 0]


def test_entropy_map_range():
    p = np.zeros((3, 2, 2))
    p[0] = 1.0
    p[:, 1, 1] = 1 / 3
    e = hp.entropy_map(p)
    assert e[0, 0] == pytest.approx(0.0, abs=1e-6) and e[1, 1] == pytest.approx(1.0)


def test_montage_layout():
    img, lab = _volume()
    fig = hp.plot_volume_montage(img, lab, lab, np.random.default_rng(0).random(lab.shape), slices=[3, 5])
    axes = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(axes) >= 8 and [axes[0].get_title(), axes[1].get_title()] == ["slice 3", "slice 5"]
    with pytest.raises(ValueError, match="out of range"):
        hp.plot_volume_montage(img, lab, slices=[99])


def test_disagreement_and_per_class_figures():
    img, lab = _volume()
    other = lab.copy()
    other[..., 5] = 0
    fig = hp.plot_slice_disagreement(img, lab, {"slice-wise": other, "3-D": lab}, plane=3)
    top = fig.axes[0]
    dice_line = top.get_lines()[0].get_ydata()
    assert dice_line[5] == 0.0 and dice_line[4] == 1.0
    rgb = fig.axes[-1].get_images()[0].get_array()
    # plane 3, slice 5: the slice-wise model missed it, the 3-D model is right -> blue
    assert np.allclose(rgb[3, 5], (0.1, 0.4, 1.0))
    with pytest.raises(ValueError, match="at least two"):
        hp.plot_slice_disagreement(img, lab, {"a": lab})
    fig2 = hp.plot_per_class_dice({"A": {"anterior": [0.8, 0.9], "posterior": [0.7, 0.75]},
                                   "B": {"anterior": [0.85, 0.88], "posterior": [0.6, 0.8]}})
    assert [t.get_text() for t in fig2.axes[0].get_xticklabels()] == ["anterior", "posterior"]


def test_slice_viewer_draws_nothing_until_moved():
    img, lab = _volume()
    w = hp.slice_viewer(img, lab, lab, np.zeros(lab.shape))
    slider, canvas = w.children
    assert slider.max == 11 and slider.value == 6 and len(canvas.outputs) == 0
