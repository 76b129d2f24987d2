"""Schematic diagrams of the two methods, drawn with matplotlib so that the book rebuilds them from code.

* :func:`draw_cdal_diagram`: cDAL (Hejrati et al., MICCAI 2024) at training (Algorithm 1: the discriminator step on a
  real and a generated pair, then the generator step whose input is re-weighted by the spatial attention
  map A_D) beside sampling (Algorithm 2: the generator and the posterior step of cDAL Eq. 2, repeated T
  times, no discriminator);
* :func:`draw_textdiff_diagram`: the TextDiff pipeline (C.-M. Feng, MICCAI 2024): frozen diffusion U-Net and
  frozen text encoder in one colour, the trained projections, cross-attention (TextDiff Eq. 3) and pixel
  classifier in another, the four feature scales fused after up-sampling.

Every box is a :class:`matplotlib.patches.FancyBboxPatch` whose ``gid`` names its role (one of
:data:`ROLE_COLOURS`), and its text is an ordinary text artist, so a test can check what is drawn. The
figures describe the methods as this book implements them (book/decisions.md explains where that differs
from the papers' text).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

__all__ = ["ROLE_COLOURS", "draw_cdal_diagram", "draw_textdiff_diagram"]

#: fill colour per role (colour-blind safe: blue for what is frozen or the discriminator, orange for what
#: is trained or the generator, grey for tensors, white for fixed operations, rose for losses)
ROLE_COLOURS: dict[str, str] = {
    "generator": "#f6bd60",
    "discriminator": "#8fb8ed",
    "trained": "#f6bd60",
    "frozen": "#8fb8ed",
    "tensor": "#e9ecef",
    "operation": "#ffffff",
    "loss": "#f4acb7",
}


def _box(ax: plt.Axes, x: float, y: float, text: str, role: str, w: float = 1.9, h: float = 0.9,
         fontsize: float = 7.5) -> FancyBboxPatch:
    """A rounded box centred at ``(x, y)`` filled with the colour of ``role``, its text in the middle."""
    patch = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.04,rounding_size=0.15",
                           fc=ROLE_COLOURS[role], ec="0.3", lw=1.0, ls="--" if role == "operation" else "-",
                           gid=role, zorder=2)
    ax.add_patch(patch)
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, zorder=3)
    return patch


def _arrow(ax: plt.Axes, a: FancyBboxPatch, b: FancyBboxPatch, label: str | None = None, rad: float = 0.0,
           colour: str = "0.2", style: str = "-", label_offset: tuple[float, float] = (0.0, 0.18)) -> None:
    """An arrow from the edge of box ``a`` to the edge of box ``b`` (optionally curved and labelled)."""
    ca = (a.get_x() + a.get_width() / 2, a.get_y() + a.get_height() / 2)
    cb = (b.get_x() + b.get_width() / 2, b.get_y() + b.get_height() / 2)
    arrow = FancyArrowPatch(ca, cb, patchA=a, patchB=b, arrowstyle="-|>", mutation_scale=10, lw=1.1, color=colour,
                            ls=style, connectionstyle=f"arc3,rad={rad}", shrinkA=2, shrinkB=2, zorder=1)
    ax.add_patch(arrow)
    if label:
        ax.text((ca[0] + cb[0]) / 2 + label_offset[0], (ca[1] + cb[1]) / 2 + label_offset[1], label, ha="center",
                va="bottom", fontsize=6.5, color=colour, zorder=3)


def _canvas(ax: plt.Axes, title: str, xmax: float = 10.0, ymax: float = 10.0) -> None:
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, ymax)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)


def _legend(fig: Figure, roles: dict[str, str], ncol: int) -> None:
    handles = [Patch(fc=ROLE_COLOURS[r], ec="0.3", ls="--" if r == "operation" else "-", label=text)
               for r, text in roles.items()]
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False)


def draw_cdal_diagram() -> Figure:
    """cDAL at training (Algorithm 1) and at sampling (Algorithm 2), one panel each.

    Training: the discriminator D learns to tell a real pair (x_{t-1}, x_t), both noised from the label x_0,
    from a generated one, whose x_{t-1} comes from the posterior step (cDAL Eq. 2) on the generator's x̂_0.
    The generator G is then trained with the MSE of cDAL Eq. 4 on an input drawn from x_0 ⊙ A_D, where the
    spatial attention map A_D is the channel mean of one stage of D's features on a real pair (no gradient,
    no normalisation; book/decisions.md). Sampling never calls D: G and the posterior step alternate from
    x_T ~ N(0, I), and several samples form the ensemble.

    Returns the figure (two axes, 15 x 6.5 inches).
    """
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [1.45, 1.0]})
    _canvas(ax_t, "Training (Algorithm 1): a D step, then a G step", xmax=14.5)
    _canvas(ax_s, "Sampling (Algorithm 2): G and the posterior step, T times; no D, no $A_D$")

    # --- training: the D step (real pair, generated pair) ---------------------------------------------
    ax_t.text(0.1, 9.7, "D step", fontsize=9, fontweight="bold", va="center")
    x0 = _box(ax_t, 1.2, 8.7, "label $x_0$\n(ground truth)", "tensor", w=1.8)
    real = _box(ax_t, 4.1, 8.7, "real pair\n$(x_{t-1}, x_t) \\sim q(\\cdot \\mid x_0)$", "operation", w=2.6)
    img = _box(ax_t, 1.2, 6.6, "image $I$, noise $z$,\nnoisy label $x_t$", "tensor", w=1.9)
    g1 = _box(ax_t, 4.1, 6.6, "G$(x_t, t, I, z)$\n$\\to \\hat x_0$", "generator", w=2.0)
    post1 = _box(ax_t, 7.1, 6.6, "posterior step (cDAL Eq. 2)\n$\\hat x_{t-1} \\sim q(x_{t-1} \\mid x_t, \\hat x_0)$",
                 "operation", w=3.0)
    d1 = _box(ax_t, 10.2, 7.65, "D$(x_{t-1}, x_t, t)$\nreal or generated?", "discriminator", w=2.1, h=1.5)
    ld = _box(ax_t, 13.1, 7.65, "softplus(-D(real))\n+ softplus(D(gen.))\n+ R1; Adam step on D", "loss", w=2.4, h=1.3)
    _arrow(ax_t, x0, real)
    _arrow(ax_t, real, d1, "real")
    _arrow(ax_t, img, g1)
    _arrow(ax_t, g1, post1)
    _arrow(ax_t, post1, d1, "generated", label_offset=(0.45, -0.6))
    _arrow(ax_t, d1, ld)

    # --- training: the G step (attention-weighted input, MSE) ------------------------------------------
    ax_t.plot([0.1, 14.4], [5.45, 5.45], color="0.7", lw=0.8, ls=":")
    ax_t.text(0.1, 5.05, "G step (D frozen)", fontsize=9, fontweight="bold", va="center")
    real2 = _box(ax_t, 13.1, 3.9, "real pair from $x_0$\n(fresh $t$)", "operation", w=2.2)
    dfeat = _box(ax_t, 10.2, 3.9, "D's features at one\nstage (no gradient)", "discriminator", w=2.2)
    att = _box(ax_t, 7.1, 3.9, "spatial attention map $A_D$:\nchannel mean, up-sampled\n(raw, not normalised)",
               "tensor", w=2.8, h=1.1)
    weight = _box(ax_t, 4.1, 3.9, "$x_0 \\odot A_D$, noised\n$\\to x_t^{att}$", "operation", w=2.2)
    g2 = _box(ax_t, 4.1, 1.9, "G$(x_t^{att}, t, I, z)$\n$\\to \\hat x_0$", "generator", w=2.2)
    lg = _box(ax_t, 7.1, 1.9, "MSE$(\\hat x_0, x_0)$\n(cDAL Eq. 4);\nAdam step on G", "loss", w=2.4, h=1.1)
    _arrow(ax_t, real2, dfeat)
    _arrow(ax_t, dfeat, att)
    _arrow(ax_t, att, weight)
    _arrow(ax_t, weight, g2)
    _arrow(ax_t, g2, lg)
    _arrow(ax_t, d1, dfeat, "same D", colour="0.45", style="--", label_offset=(0.55, -0.1))
    ax_t.text(0.2, 0.55, "G gets no adversarial loss: D reaches G only through $A_D$ (book/decisions.md).",
              fontsize=7.5, style="italic")

    # --- sampling ---------------------------------------------------------------------------------------
    xt = _box(ax_s, 1.5, 8.4, "$x_T \\sim \\mathcal{N}(0, I)$", "tensor", w=2.0)
    cond = _box(ax_s, 1.5, 6.2, "image $I$,\nfresh $z$ per step", "tensor", w=2.0)
    g3 = _box(ax_s, 5.0, 8.4, "G$(x_t, t, I, z)$\n$\\to \\hat x_0$", "generator", w=2.2)
    post2 = _box(ax_s, 5.0, 5.6, "posterior step (cDAL Eq. 2)\n$x_{t-1} \\sim q(x_{t-1} \\mid x_t, \\hat x_0)$",
                 "operation", w=3.2)
    last = _box(ax_s, 8.6, 5.6, "after T steps:\n$\\hat x_0$ of the last step", "tensor", w=2.3)
    ens = _box(ax_s, 8.6, 3.2, "ensemble of N samples\n(new $x_T$, $z$): mean,\nvariance = uncertainty",
               "operation", w=2.5, h=1.2)
    mask = _box(ax_s, 5.0, 3.2, "mask: mean > 0", "tensor", w=2.0)
    _arrow(ax_s, xt, g3)
    _arrow(ax_s, cond, g3)
    _arrow(ax_s, g3, post2)
    _arrow(ax_s, post2, g3, "$t \\leftarrow t-1$", rad=-0.6, colour="0.45", label_offset=(-1.0, -0.1))
    _arrow(ax_s, post2, last, "t = 1", label_offset=(0.35, 0.05))
    _arrow(ax_s, last, ens)
    _arrow(ax_s, ens, mask)
    ax_s.text(0.2, 1.4, "Mismatch: G was trained on noised $x_0 \\odot A_D$, but here it sees\n"
              "noised versions of its own predictions (chapter 05).", fontsize=7.5, style="italic")

    _legend(fig, {"generator": "generator G (trained)", "discriminator": "discriminator D (trained)",
                  "tensor": "tensor", "operation": "fixed operation (no weights)", "loss": "loss and update"}, ncol=5)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.08, wspace=0.04)
    return fig


def draw_textdiff_diagram(timesteps: tuple[int, ...] = (50, 150, 250),
                          scales: tuple[int, ...] = (32, 64, 128, 256), image_size: int = 256,
                          dim: int = 768) -> Figure:
    """The TextDiff pipeline: frozen parts (blue) and trained parts (orange).

    The image is noised at ``timesteps`` (TextDiff's MoNuSeg setting: 50, 150, 250, one shared noise draw) and
    passed through the frozen diffusion U-Net; the outputs of four decoder blocks (``scales``, in pixels, at
    a 256-px input) are concatenated over the time steps, projected to the text width by 1x1 convolutions,
    and attend to the frozen text encoder's tokens through one shared cross-attention block (TextDiff Eq. 3).
    Each scale is up-sampled to the image size, the four are concatenated, and the pixel classifier (three
    convolutions) gives the logits, trained with cross-entropy plus Dice. Only the orange parts are trained.
    ``image_size`` and ``dim`` (the common width after the projections) default to the paper's 256 and 768.

    Returns the figure (one axes, 15 x 6 inches).
    """
    if len(scales) < 1:
        raise ValueError("draw_textdiff_diagram: scales must name at least one feature resolution")
    fig, ax = plt.subplots(figsize=(15, 6))
    _canvas(ax, "TextDiff: frozen diffusion features and frozen text, trained cross-attention and classifier",
            xmax=16.0)
    img = _box(ax, 1.0, 7.6, f"image\n({image_size} px)", "tensor", w=1.5)
    noise = _box(ax, 3.1, 7.6, "forward noise $q(x_t \\mid x_0)$\n$t \\in \\{" + ", ".join(map(str, timesteps))
                 + "\\}$", "operation", w=2.4)
    unet = _box(ax, 5.5, 7.6, "diffusion U-Net\n(ADM-256 in the paper)\nfrozen", "frozen", w=2.3, h=1.3)
    text = _box(ax, 1.1, 1.6, "description\n(one sentence)", "tensor", w=1.8)
    tenc = _box(ax, 4.3, 1.6, "text encoder\n(Bio_ClinicalBERT in the paper)\nfrozen", "frozen", w=2.9, h=1.2)
    tokens = _box(ax, 11.4, 1.5, "text tokens\n(L x $d_{text}$)", "tensor", w=1.8)
    n = len(scales)
    ys = [7.9 - i * (5.0 / max(n - 1, 1)) for i in range(n)] if n > 1 else [5.5]
    cross = _box(ax, 11.4, 5.4, "cross-attention $M_{cro}$\n(TextDiff Eq. 3)\none block shared\nby all scales;\n"
                 "queries: pixels,\nkeys and values:\ntext tokens", "trained", w=2.2, h=5.4)
    for i, (s, y) in enumerate(zip(scales, ys)):
        feat = _box(ax, 7.9, y, f"decoder features {s}x{s}\n({len(timesteps)} steps concatenated)", "tensor",
                    w=2.3, h=0.8, fontsize=7)
        proj = _box(ax, 9.75, y, f"1x1 conv\nto {dim}", "trained", w=0.95, h=0.8, fontsize=7)
        _arrow(ax, unet, feat, colour="0.45")
        _arrow(ax, feat, proj)
        _arrow(ax, proj, cross)
    _arrow(ax, img, noise)
    _arrow(ax, noise, unet)
    _arrow(ax, text, tenc)
    _arrow(ax, tenc, tokens)
    _arrow(ax, tokens, cross, "keys, values", label_offset=(0.75, -1.25))
    fuse = _box(ax, 14.3, 7.2, f"up-sample each scale\nto {image_size} px, concatenate\n({n} x {dim} channels)", "operation",
                w=2.5, h=1.2)
    clf = _box(ax, 14.3, 4.9, "pixel classifier\n(3 conv layers)", "trained", w=2.3, h=0.9)
    logits = _box(ax, 14.3, 3.0, f"logits, 2 x {image_size} x {image_size}", "tensor", w=2.3, h=0.7)
    loss = _box(ax, 14.3, 1.3, "cross-entropy\n+ 1.5 x Dice loss", "loss", w=2.3, h=0.9)
    _arrow(ax, cross, fuse)
    _arrow(ax, fuse, clf)
    _arrow(ax, clf, logits)
    _arrow(ax, logits, loss)
    _legend(fig, {"frozen": "frozen (pre-trained, no gradient)", "trained": "trained on the labelled images",
                  "tensor": "tensor", "operation": "fixed operation (no weights)", "loss": "training loss"}, ncol=5)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.08)
    return fig
