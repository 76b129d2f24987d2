"""TextDiff's options: one dataclass, four presets (``smoke``, ``cpu``, ``gpu``, ``paper``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import model_config_from_dict
from ..weights import find_weights
from .adm import TEXTDIFF_ADM_BLOCKS
from .backbone import ADM_SPEC
from .pretrain import DDPM_TRAINING

__all__ = ["TextDiffConfig"]


@dataclass
class TextDiffConfig:
    """TextDiff's model and schedule options (the ``model`` section of a :class:`~diffseg_core.config.RunConfig`).

    Paper/official values (book/decisions.md) in brackets; ``for_preset`` gives each preset's values.

    Attributes:
        train_images: labelled training images, a seeded choice (T11) [MoNuSeg 5, QaTa 150].
        text_encoder: ``"clinical"`` (Bio_ClinicalBERT, falls back to ``"minilm"`` offline) or ``"minilm"``.
        backbone: path of a diffusion U-Net checkpoint (:func:`~diffseg_core.textdiff.backbone.load_backbone`),
            or ``"adm256:PATH"`` / ``"adm256"`` for the paper's ADM-256 file; ``None`` pre-trains the preset's
            substitute on the dataset's unlabelled training images. The ``paper`` and ``gpu`` presets choose
            ADM-256 by themselves when the file is in the weights folder (:mod:`diffseg_core.weights`).
        adm_blocks: decoder blocks read when the backbone is ADM-256 [MoNuSeg {6, 8, 12, 16}, QaTa
            {4, 6, 8, 12}]; other backbones use ``block_fractions``.
        use_text: False = ablation zeta_1 (no text, no cross-attention).
        use_xattn: False = ablation zeta_2 (pooled text concatenated per pixel; our choice, T10).
        shuffle_text: permute the training sentences across the chosen images (seeded derangement), to
            measure how much of the text's effect is real (book/decisions.md). Prediction uses the given text.
        timesteps: diffusion steps read [50, 150, 250 of 1000].
        block_fractions: decoder block resolutions relative to the input [1/8, 1/4, 1/2, 1 for MoNuSeg].
        dim, heads, dim_head: projection width and the attention block [768, 8, 64].
        head_hidden: the decoder's hidden widths [128, 32].
        head_norm: the decoder's normalisation, ``"instance"`` (our choice) or ``"batch"`` [the code's
            BatchNorm at batch 1; see :class:`SegHead` for why we changed it].
        epochs: passes over the training images [code 50; the paper says 100] (T4).
        batch_size: images per step [1].
        lr: Adam learning rate [1e-4].
        dice_weight: weight of the Dice term [1.5].
        dice_softmax: soft Dice on softmax probabilities (True, our choice, T5) or on raw logits (False,
            the official code).
        mask_padding: hide padding tokens from the attention [False: the code attends to them] (T9).
        max_length: text tokens incl. [CLS]/[SEP] [10].
        image_size: whole images resized to this size [256].
        augment: random rot90 + flip (p 0.5) applied jointly to the **cached features** and the label
            [the code: rot90 + flip with p 0.5, else a +-20 degree rotation, on images, re-extracting
            features every epoch]; flipping features only approximates features of the flipped image.
        noise_seed: seed of the shared noise tensor [40].
        ddpm_steps, ddpm_batch, ddpm_crop, ddpm_lr: the substitute backbone's DDPM pre-training.
    """

    train_images: int = 5
    text_encoder: str = "clinical"
    backbone: str | None = None
    adm_blocks: tuple[int, ...] = (6, 8, 12, 16)
    use_text: bool = True
    use_xattn: bool = True
    shuffle_text: bool = False
    timesteps: tuple[int, ...] = (50, 150, 250)
    block_fractions: tuple[float, ...] = (1 / 8, 1 / 4, 1 / 2, 1.0)
    dim: int = 768
    heads: int = 8
    dim_head: int = 64
    head_hidden: tuple[int, int] = (128, 32)
    head_norm: str = "instance"
    epochs: int = 50
    batch_size: int = 1
    lr: float = 1e-4
    dice_weight: float = 1.5
    dice_softmax: bool = True
    mask_padding: bool = False
    max_length: int = 10
    image_size: int = 256
    augment: bool = True
    noise_seed: int = 40
    ddpm_steps: int = 50000
    ddpm_batch: int = 8
    ddpm_crop: int = 256
    ddpm_lr: float = 1e-4
    backbone_preset: str = "paper"

    @classmethod
    def for_preset(cls, preset: str, dataset: str = "monuseg") -> "TextDiffConfig":
        """Values per preset.

        * ``paper``: the official MoNuSeg config (dim 768, 8 x 64 heads, 50 epochs, batch 1, lr 1e-4,
          256 px, 10 tokens) on the paper's ADM-256 when ``256x256_diffusion_uncond.pt`` is in the weights
          folder (``backbone="adm256:PATH"``, blocks {6, 8, 12, 16}), else an ADM-shaped backbone trained from
          scratch. QaTa: blocks {4, 6, 8, 12} of ADM-256 (1/16..1/2 of the substitute), 150 images.
        * ``gpu``: the same head and attention at 256 px on ADM-256 when the file is present, else a mid-size
          backbone and minutes of DDPM.
        * ``cpu``: 256 px as the paper (nuclei stay ~5-7 px wide; at 128 px they would be 2-4 px and Dice
          would collapse for reasons unrelated to the method, book/decisions.md), a 2.9 M-parameter backbone
          pre-trained for 400 DDPM steps on 64 px crops, dim 64, 4 x 16 heads, head (64, 32), 30 epochs
          (150 steps; validation Dice peaked by step ~75 in our runs) and lr 1e-3 instead of 1e-4 (a
          trainable part ~30x smaller than the paper's, trained for 150 steps); the whole 5-image MoNuSeg
          run, DDPM included, is designed for well under 20 minutes on 2 cores (``benchmarks/textdiff.py``).
        * ``smoke``: 32 px, a tiny backbone, 4 DDPM steps, 2 epochs: seconds.
        """
        ddpm = DDPM_TRAINING["paper" if preset not in DDPM_TRAINING else preset]
        common = dict(ddpm_steps=ddpm["steps"], ddpm_batch=ddpm["batch_size"], ddpm_crop=ddpm["crop"],
                      ddpm_lr=ddpm["lr"], backbone_preset=preset if preset in DDPM_TRAINING else "paper")
        qata = dataset == "qata"
        common["adm_blocks"] = TEXTDIFF_ADM_BLOCKS["qata" if qata else "monuseg"]
        if preset in ("paper", "gpu"):  # the paper's backbone whenever its file is on this machine
            adm = find_weights("adm256-uncond")
            common["backbone"] = f"{ADM_SPEC}:{adm}" if adm is not None else None
        if preset == "smoke":
            return cls(train_images=2, block_fractions=(1 / 4, 1 / 2, 1.0), dim=16, heads=2, dim_head=8,
                       head_hidden=(16, 8), epochs=2, image_size=32, lr=1e-3, **common)
        if preset == "cpu":
            return cls(train_images=20 if qata else 5, dim=64, heads=4, dim_head=16, head_hidden=(64, 32),
                       epochs=30, image_size=128 if qata else 256, lr=1e-3, **common)
        if preset == "gpu":
            return cls(train_images=150 if qata else 5, dim=256, heads=8, dim_head=32, head_hidden=(128, 32),
                       epochs=50, image_size=256, **common)
        return cls(train_images=150 if qata else 5,
                   block_fractions=(1 / 16, 1 / 8, 1 / 4, 1 / 2) if qata else (1 / 8, 1 / 4, 1 / 2, 1.0), **common)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TextDiffConfig":
        """From ``RunConfig.model`` (lists back to tuples; unknown keys raise)."""
        return model_config_from_dict(cls, d, "textdiff")
