"""The method diagrams: drawn from code, with the parts and labels a reader needs, frozen and trained apart."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
from matplotlib.colors import to_hex
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from diffseg_core.plots import diagrams as dg


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(fig) -> str:
    """Every text artist of the figure (axes texts, titles, legend entries), joined."""
    out = []
    for ax in fig.axes:
        out += [t.get_text() for t in ax.texts] + [ax.get_title()]
    for leg in fig.legends:
        out += [t.get_text() for t in leg.get_texts()]
    return "\n".join(out)


def _boxes(fig, role: str | None = None) -> list[FancyBboxPatch]:
    return [p for ax in fig.axes for p in ax.patches
            if isinstance(p, FancyBboxPatch) and (role is None or p.get_gid() == role)]


def test_cdal_diagram_shows_training_and_sampling_with_g_d_attention_and_posterior():
    fig = dg.draw_cdal_diagram()
    ax_train, ax_sample = fig.axes[:2]
    assert "Training (Algorithm 1)" in ax_train.get_title() and "Sampling (Algorithm 2)" in ax_sample.get_title()
    text = _texts(fig)
    for needle in ("G$(x_t, t, I, z)$", "D$(x_{t-1}, x_t, t)$", "spatial attention map $A_D$", "$x_0 \\odot A_D$",
                   "posterior step (cDAL Eq. 2)", "MSE$(\\hat x_0, x_0)$\n(cDAL Eq. 4)", "ensemble of N samples",
                   "$x_T \\sim \\mathcal{N}(0, I)$", "D step", "G step (D frozen)"):
        assert needle in text, needle
    # the generator and the discriminator are boxes of their own colours; sampling uses no D box
    gen, disc = _boxes(fig, "generator"), _boxes(fig, "discriminator")
    assert len(gen) == 3 and len(disc) == 2
    assert {to_hex(p.get_facecolor()) for p in gen} == {dg.ROLE_COLOURS["generator"]}
    assert {to_hex(p.get_facecolor()) for p in disc} == {dg.ROLE_COLOURS["discriminator"]}
    assert not [p for p in ax_sample.patches if p.get_gid() == "discriminator"]
    assert sum(isinstance(p, FancyArrowPatch) for p in ax_train.patches) >= 10
    assert sum(isinstance(p, FancyArrowPatch) for p in ax_sample.patches) >= 6
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 5


def test_textdiff_diagram_colours_frozen_and_trained_parts_apart():
    fig = dg.draw_textdiff_diagram()
    text = _texts(fig)
    for needle in ("diffusion U-Net", "text encoder", "cross-attention $M_{cro}$\n(TextDiff Eq. 3)", "pixel classifier",
                   "$t \\in \\{50, 150, 250\\}$", "decoder features 32x32", "decoder features 256x256",
                   "cross-entropy\n+ 1.5 x Dice loss", "frozen (pre-trained, no gradient)", "trained on the labelled images"):
        assert needle in text, needle
    frozen, trained = _boxes(fig, "frozen"), _boxes(fig, "trained")
    assert len(frozen) == 2  # the diffusion U-Net and the text encoder
    assert len(trained) == 4 + 1 + 1  # one projection per scale, the shared cross-attention, the classifier
    frozen_colours = {to_hex(p.get_facecolor()) for p in frozen}
    trained_colours = {to_hex(p.get_facecolor()) for p in trained}
    assert len(frozen_colours) == 1 and len(trained_colours) == 1 and frozen_colours != trained_colours
    # every frozen or trained box has its own text inside it
    ax = fig.axes[0]
    for p in frozen + trained:
        cx, cy = p.get_x() + p.get_width() / 2, p.get_y() + p.get_height() / 2
        assert any(abs(t.get_position()[0] - cx) < 1e-9 and abs(t.get_position()[1] - cy) < 1e-9 and t.get_text()
                   for t in ax.texts)


def test_textdiff_diagram_follows_its_arguments():
    fig = dg.draw_textdiff_diagram(timesteps=(10, 20), scales=(16, 32))
    text = _texts(fig)
    assert "$t \\in \\{10, 20\\}$" in text and "decoder features 16x16\n(2 steps concatenated)" in text
    assert "(2 x 768 channels)" in text and "256x256" not in text.replace("2 x 256 x 256", "")
    assert len(_boxes(fig, "trained")) == 2 + 1 + 1
    with pytest.raises(ValueError):
        dg.draw_textdiff_diagram(scales=())
