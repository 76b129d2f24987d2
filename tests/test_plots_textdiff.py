"""The TextDiff figures: checked on small arrays whose right answer is known in advance."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from diffseg_core.plots import textdiff as tp


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_pca_rgb_recovers_a_one_dimensional_signal():
    # 8 channels that are all multiples of one spatial ramp (plus tiny noise): the first component
    # is the ramp itself, so the first PCA channel must be monotone along x.
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(-1, 1, 16), (16, 1))  # (16, 16), increasing along x
    loadings = rng.normal(size=8)
    loadings[np.abs(loadings).argmax()] = abs(loadings).max()  # largest loading positive
    feats = loadings[:, None, None] * ramp[None] + 1e-4 * rng.normal(size=(8, 16, 16))
    rgb = tp.pca_rgb(feats)
    assert rgb.shape == (16, 16, 3)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    col_means = rgb[..., 0].mean(axis=0)
    assert np.all(np.diff(col_means) >= -1e-6) and col_means[-1] > col_means[0] + 0.5


def test_pca_rgb_batch_and_few_channels():
    feats = np.random.default_rng(1).normal(size=(2, 2, 6, 6))  # only 2 channels
    rgb = tp.pca_rgb(feats)
    assert rgb.shape == (2, 6, 6, 3)
    assert np.all(rgb[..., 2] == 0.0)  # the missing third component is zero


def test_plot_feature_pca_grid_shape():
    rng = np.random.default_rng(2)
    feats = [[rng.normal(size=(4, 8 * (b + 1), 8 * (b + 1))) for _ in range(3)] for b in range(2)]
    fig = tp.plot_feature_pca(feats, ["b0", "b1"], ["t=50", "t=150", "t=250"], image=rng.random((3, 16, 16)))
    assert len(fig.axes) == 2 * 4
    with pytest.raises(ValueError):
        tp.plot_feature_pca(feats, ["b0"], ["t=50", "t=150", "t=250"])


def test_block_step_heatmap_values_and_shared_scale():
    a = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, np.nan]])
    b = a + 0.1
    fig = tp.plot_block_step_heatmap([a, b], ["1/8", "1/4"], ["50", "150", "250"], titles=["no text", "text"])
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2
    assert images[0].get_clim() == images[1].get_clim() == pytest.approx((0.1, 0.6))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "0.500" in texts and len(texts) == 5  # the NaN cell is not annotated
    with pytest.raises(ValueError):
        tp.plot_block_step_heatmap(np.zeros((3, 3)), ["a", "b"], ["x", "y", "z"])


def test_text_matrices():
    tokens = ["[CLS]", "the", "nuc", "##lei", "[SEP]"]
    fig = tp.plot_token_embeddings(np.random.default_rng(3).normal(size=(5, 100)), tokens)
    assert fig.axes[0].images[0].get_array().shape == (5, 64)
    sim = np.eye(3)
    fig = tp.plot_similarity_matrix(sim, ["a", "b", "a very long sentence " * 5])
    assert fig.axes[0].images[0].get_array().shape == (3, 3)
    w = np.full((100, 5), 0.2)
    fig = tp.plot_attention_matrix(w, tokens, max_rows=10)
    assert fig.axes[0].images[0].get_array().shape == (10, 5)
    with pytest.raises(ValueError):
        tp.plot_attention_matrix(w, tokens[:3])


def test_upsample_nearest_repeats_blocks():
    a = np.array([[1, 2], [3, 4]])
    up = tp.upsample_nearest(a, (4, 4))
    assert up.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    assert tp.upsample_nearest(np.zeros((5, 2, 2)), (6, 6)).shape == (5, 6, 6)


def test_plot_token_attention_rows_and_columns():
    rng = np.random.default_rng(4)
    tokens = ["the", "nuclei", "are", "dense"]
    maps = [rng.random((4, 4, 4)), rng.random((4, 8, 8))]
    fig = tp.plot_token_attention(rng.random((3, 32, 32)), maps, tokens, scale_labels=["1/8", "1/4"])
    grid = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"][: 2 * 5]
    assert len(grid) == 10
    # every overlay is at image resolution
    overlay = fig.axes[1].images[1].get_array()
    assert overlay.shape == (32, 32)
    # the default colour range is shared by every map, so the one colour bar is valid for all panels
    lo = min(float(m.min()) for m in maps)
    hi = max(float(m.max()) for m in maps)
    assert fig.axes[1].images[1].get_clim() == pytest.approx((lo, hi))
    assert fig.axes[5 + 1].images[1].get_clim() == pytest.approx((lo, hi))
    with pytest.raises(ValueError):
        tp.plot_token_attention(rng.random((3, 32, 32)), [rng.random((3, 4, 4))], tokens)
    with pytest.raises(ValueError):
        tp.plot_token_attention(rng.random((3, 32, 32)), maps, tokens, normalise="rows")


def test_prediction_grid_reports_dice():
    gt = np.zeros((8, 8), int)
    gt[:4] = 1  # 32 foreground pixels
    pred = np.zeros((8, 8), int)
    pred[:2] = 1  # 16 pixels, all inside: Dice = 2*16 / (16+32) = 0.667
    img = np.zeros((3, 8, 8))
    fig = tp.plot_prediction_grid([img, img], [gt, gt], {"model": [pred, gt]})
    assert "model" in [ax.get_title() for ax in fig.axes]
    assert [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()] == ["Dice 0.667", "Dice 1.000"]
    with pytest.raises(ValueError):
        tp.plot_prediction_grid([img], [gt, gt], {"m": [gt]})


def test_plot_ablation_marks_paper():
    fig = tp.plot_ablation(["full", "zeta1"], [[0.7, 0.8, 0.75], [0.6]], paper={"full": 0.7867})
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([0.75, 0.6])
    assert "paper" in [t.get_text() for t in ax.get_legend().get_texts()]
