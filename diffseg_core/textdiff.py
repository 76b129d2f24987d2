"""TextDiff (Feng, MICCAI 2024): frozen diffusion features + frozen text tokens -> cross-modal attention -> conv decoder.

The pieces (method.md §3; decisions T1-T11 recorded where they apply):

* :mod:`diffseg_core.features`: a frozen denoising U-Net read at t = 50/150/250 (Eq. 1-2), blocks at
  1/8, 1/4, 1/2, 1 of the input (T6 by relative resolution), features cached once per image;
* :mod:`diffseg_core.text`: a frozen BERT, 10 tokens per sentence (T9);
* :mod:`diffseg_core.cross_attention`: Eq. 3 inside the official block, shared over scales, at native
  resolution, then up-sampled and concatenated (T2, T3); ablations zeta_1/zeta_2 (T10);
* :class:`SegHead`: the official 3-layer conv decoder, which the paper calls a "pixel classifier" (T1);
* :func:`ce_dice_loss`: CE + 1.5 x soft Dice on softmax probabilities (T5);
* :class:`TextDiffMethod`: the plug-in for the shared loop and CLI. Only the projections, the
  cross-attention block and the head are trainable (``self.nets``); the backbone and the text encoder
  are frozen, live outside ``self.nets`` and are rebuilt from the run folder (:meth:`TextDiffMethod.restore`).

Which ``train_images`` images (paper: 5 for MoNuSeg) is unpublished (T11): a seeded choice, reported
in ``run.json`` (``method_info.selected_ids``). Model selection on the validation split, test reported
once (T7, the lead's loop). Images are fed as RGB (T8: the official code feeds OpenCV's BGR to an
RGB-trained model, a quirk we do not copy).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import model_config_from_dict
from .cross_attention import MultiScaleCrossModalFusion
from .features import (BACKBONE_FILE, DDPM_TRAINING, DiffusionFeatureExtractor, FeatureCache, image_key,
                       load_backbone, pretrain_ddpm, select_blocks_by_resolution)
from .methods.base import DatasetInfo, SegMethod


@dataclass
class TextDiffConfig:
    """TextDiff's model and schedule options (the ``model`` section of a :class:`~diffseg_core.config.RunConfig`).

    Paper/official values (method.md §3) in brackets; ``for_preset`` gives each preset's values.

    Attributes:
        train_images: labelled training images, a seeded choice (T11) [MoNuSeg 5, QaTa 150].
        text_encoder: ``"clinical"`` (Bio_ClinicalBERT, falls back to ``"minilm"`` offline) or ``"minilm"``.
        backbone: path of a diffusion U-Net checkpoint (:func:`~diffseg_core.features.load_backbone`);
            ``None`` pre-trains the preset's substitute on the dataset's unlabelled training images.
        use_text: False = ablation zeta_1 (no text, no cross-attention).
        use_xattn: False = ablation zeta_2 (pooled text concatenated per pixel; our choice, T10).
        shuffle_text: permute the training sentences across the chosen images (seeded derangement), to
            measure how much of the text's effect is real (method.md §6). Prediction uses the given text.
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
          256 px, 10 tokens) with an ADM-shaped backbone trained from scratch (ADM-256 ImageNet weights
          are not loadable offline). QaTa: blocks at 1/16..1/2 (the official {4, 6, 8, 12}), 150 images.
        * ``gpu``: the same head and attention at 256 px, a mid-size backbone, minutes of DDPM.
        * ``cpu``: 256 px as the paper (nuclei stay ~5-7 px wide; at 128 px they would be 2-4 px and Dice
          would collapse for reasons unrelated to the method, method.md §6), a 2.9 M-parameter backbone
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


# ---------------------------------------------------------------------------------------------
# Head and loss
# ---------------------------------------------------------------------------------------------
class SegHead(nn.Module):
    """The official "pixel classifier": Conv3x3 -> norm -> ReLU -> Conv3x3 -> norm -> ReLU -> Conv3x3 (T1).

    ``(B, in_channels, H, W)`` -> logits ``(B, num_classes, H, W)``. Initialisation as the code:
    N(0, 0.02) weights, zero biases, norm weights N(1, 0.02).

    ``norm="instance"`` (our default) vs ``"batch"`` (the code): the code trains BatchNorm with **batch 1**,
    where BN normalises each channel over one image's pixels; in eval mode BN switches to running
    averages, which then no longer match any single image. In our 5-image MoNuSeg run this alone dropped
    validation Dice from 0.58 (per-image statistics) to 0.31 (running averages). ``InstanceNorm2d`` with
    affine weights computes exactly what batch-1 BN computes in training, in both modes.
    """

    def __init__(self, in_channels: int, num_classes: int, hidden: Sequence[int] = (128, 32),
                 norm: str = "instance") -> None:
        super().__init__()
        if norm not in ("instance", "batch"):
            raise ValueError(f"SegHead: norm must be 'instance' or 'batch', got {norm!r}")
        h1, h2 = hidden

        def make_norm(c: int) -> nn.Module:
            return nn.InstanceNorm2d(c, affine=True) if norm == "instance" else nn.BatchNorm2d(c)

        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, h1, 3, padding=1), make_norm(h1), nn.ReLU(inplace=True),
            nn.Conv2d(h1, h2, 3, padding=1), make_norm(h2), nn.ReLU(inplace=True),
            nn.Conv2d(h2, num_classes, 3, padding=1),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def soft_dice_loss(scores: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """``1 - mean_c (2 sum s_c g_c + smooth) / (sum s_c^2 + sum g_c^2 + smooth)`` over the whole batch.

    ``scores`` ``(B, K, H, W)`` (probabilities, or raw logits in the official variant), ``target``
    ``(B, H, W)`` int64 -> scalar. Squared terms in the denominator, classes averaged (the code's DiceLoss).
    """
    K = scores.shape[1]
    onehot = F.one_hot(target.long(), K).permute(0, 3, 1, 2).to(scores.dtype)  # (B, K, H, W)
    dims = (0, 2, 3)
    inter = (scores * onehot).sum(dims)
    denom = (scores * scores).sum(dims) + (onehot * onehot).sum(dims)
    return 1.0 - ((2 * inter + smooth) / (denom + smooth)).mean()


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.5, softmax: bool = True,
                 return_parts: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, float]]:
    """TextDiff's loss: cross-entropy + ``dice_weight`` x soft Dice (T5).

    The paper says "Dice + CE"; the code uses CE + 1.5 x Dice but feeds the **raw logits** to the Dice
    (its softmax flag is off), which makes the Dice term's values meaningless as overlaps. We apply it to
    **softmax probabilities** (``softmax=True``); ``softmax=False`` reproduces the code.

    Args:
        logits: ``(B, K, H, W)``.
        target: ``(B, H, W)`` int64 class indices.

    Returns:
        the scalar loss; with ``return_parts`` also its parts ``{"ce": ..., "dice": ...}`` as floats.
    """
    if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"ce_dice_loss: logits (B, K, H, W) and target (B, H, W) expected, got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    ce = F.cross_entropy(logits, target.long())
    dice = soft_dice_loss(torch.softmax(logits, dim=1) if softmax else logits, target)
    loss = ce + dice_weight * dice
    return (loss, {"ce": float(ce.detach()), "dice": float(dice.detach())}) if return_parts else loss


class TextDiffModel(nn.Module):
    """The trainable part: multi-scale cross-modal fusion + :class:`SegHead`.

    ``forward(features, tokens, key_mask, out_size)``: ``features`` one ``(B, in_dims[s], h_s, w_s)`` per
    scale, ``tokens`` ``(B, L, context_dim)`` (or None without text) -> logits ``(B, num_classes, H, W)``.
    """

    def __init__(self, in_dims: Sequence[int], num_classes: int, dim: int, context_dim: int, heads: int = 8,
                 dim_head: int = 64, use_text: bool = True, use_xattn: bool = True,
                 head_hidden: Sequence[int] = (128, 32), head_norm: str = "instance") -> None:
        super().__init__()
        self.fusion = MultiScaleCrossModalFusion(in_dims, dim, context_dim, heads, dim_head, use_text, use_xattn)
        self.head = SegHead(self.fusion.out_channels, num_classes, head_hidden, head_norm)

    def forward(self, features: Sequence[torch.Tensor], tokens: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.head(self.fusion(features, tokens, key_mask, out_size))


# ---------------------------------------------------------------------------------------------
# The method plug-in
# ---------------------------------------------------------------------------------------------
def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of ``range(n)`` with no fixed point (identity when ``n < 2``)."""
    if n < 2:
        return list(range(n))
    rng = np.random.default_rng(seed)
    while True:
        p = rng.permutation(n)
        if not np.any(p == np.arange(n)):
            return p.tolist()


def _augment(x: torch.Tensor, k: int, flip: int) -> torch.Tensor:
    """rot90 ``k`` times then optionally flip left-right, on the last two dims."""
    x = torch.rot90(x, k, dims=(-2, -1)) if k else x
    return x.flip(-1) if flip else x


class TextDiffMethod(SegMethod):
    """TextDiff as a :class:`~diffseg_core.methods.base.SegMethod`.

    Life cycle: :meth:`select_training_cases` (seeded ``train_images``), :meth:`prepare` (backbone:
    pre-train on the dataset's unlabelled training images or load ``--backbone``; text encoder; features
    and tokens of the chosen images cached once; build the trainable model), :meth:`train_step` (cached
    features), :meth:`predict` (whole images resized to ``image_size``; features of unseen images are
    extracted and kept in a small cache keyed by image content). :meth:`restore` rebuilds the frozen
    parts for ``evaluate`` from the run folder.
    """

    name = "textdiff"

    def __init__(self, cfg: Any, info: DatasetInfo, device: torch.device) -> None:
        super().__init__(cfg, info, device)
        self.mc = TextDiffConfig.from_dict(cfg.model)
        if self.mc.batch_size < 1 or self.mc.train_images < 1:
            raise ValueError(f"textdiff: batch_size and train_images must be >= 1, got {self.mc.batch_size}, "
                             f"{self.mc.train_images}")
        self.selected_ids: list[str] = []
        self.extractor: DiffusionFeatureExtractor | None = None
        self.text_encoder = None
        self.backbone_path: str | None = None
        self.backbone_source = ""
        self.ddpm_losses: list[float] = []
        self.train_cache = FeatureCache()
        self.eval_cache = FeatureCache(max_items=32, max_bytes=2 * 2**30)  # bounded: unseen images
        self.train_labels: dict[str, torch.Tensor] = {}
        self.train_text: dict[str, str] = {}
        self._tokens: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._unlabelled: list[Any] = []
        self.timings: dict[str, float] = {}

    # ---- configuration -------------------------------------------------------------------
    @classmethod
    def default_config(cls, preset: str, dataset: str) -> TextDiffConfig:
        return TextDiffConfig.for_preset(preset, dataset)

    @classmethod
    def data_overrides(cls, preset: str, dataset: str) -> dict[str, Any]:
        """Whole images resized to ``image_size`` (crop = working size), no loader augmentation, batch 1."""
        mc = TextDiffConfig.for_preset(preset, dataset)
        return dict(working_size=mc.image_size, crop=mc.image_size, augment=False, batch_size=mc.batch_size,
                    overlap=0.0)

    @classmethod
    def train_overrides(cls, preset: str, dataset: str, model: Any = None) -> dict[str, Any]:
        """Steps = epochs x images / batch; validation every 5 epochs (smoke: every epoch); lr as the model's.

        ``model`` (the final config, e.g. with ``--train-images 10``) sets epochs and images when given."""
        mc = model if model is not None else TextDiffConfig.for_preset(preset, dataset)
        per_epoch = max(1, -(-mc.train_images // mc.batch_size))
        every = 1 if preset == "smoke" else 5
        minutes = {"smoke": 2.0, "cpu": 12.0, "gpu": 30.0}.get(preset)
        return dict(steps=mc.epochs * per_epoch, val_every=every * per_epoch, log_every=per_epoch,
                    max_minutes=minutes, lr=mc.lr)

    # ---- cases ---------------------------------------------------------------------------
    def select_training_cases(self, cases: Sequence[Any], seed: int) -> list[Any]:
        """A seeded choice of ``train_images`` cases (T11); ids kept in ``self.selected_ids``.

        All ``cases`` (labels unused) are kept as the unlabelled pool the backbone is pre-trained on.
        """
        cases = list(cases)
        if not cases:
            raise ValueError("textdiff: no training cases to choose from")
        self._unlabelled = cases
        n = self.mc.train_images
        if n > len(cases):
            print(f"notice: textdiff asked for {n} training images but the split has {len(cases)}; using all")
            n = len(cases)
        idx = np.random.default_rng(seed).choice(len(cases), size=n, replace=False)
        chosen = [cases[i] for i in idx.tolist()]
        self.selected_ids = [c.id for c in chosen]
        return chosen

    def _image_tensor(self, cases: Sequence[Any]) -> torch.Tensor:
        """``(N, C, S, S)`` images of ``cases`` at ``image_size``."""
        imgs = torch.stack([torch.from_numpy(np.ascontiguousarray(c.image)).float() for c in cases])
        return self._resize(imgs)

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        s = self.mc.image_size
        if tuple(images.shape[-2:]) == (s, s):
            return images
        return F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False).clamp(0, 1)

    # ---- frozen parts --------------------------------------------------------------------
    def _setup_frozen(self, unet: nn.Module) -> None:
        blocks = select_blocks_by_resolution(unet, self.mc.image_size, self.mc.block_fractions)
        self.extractor = DiffusionFeatureExtractor(unet.to(self.device), self.mc.timesteps, blocks, self.mc.noise_seed)
        if self.mc.use_text and self.text_encoder is None:
            from .text import load_text_encoder

            self.text_encoder = load_text_encoder(self.mc.text_encoder, self.mc.max_length, self.device)
            if not self.info.has_text:
                print(f"notice: dataset {self.info.name} has no text; TextDiff's text branch sees empty sentences")

    def _build_model(self) -> None:
        assert self.extractor is not None
        context_dim = self.text_encoder.dim if self.text_encoder is not None else 1
        model = TextDiffModel(self.extractor.feature_dims(), self.info.num_classes, self.mc.dim, context_dim,
                              self.mc.heads, self.mc.dim_head, self.mc.use_text, self.mc.use_xattn, self.mc.head_hidden,
                              self.mc.head_norm)
        self.nets["textdiff"] = model.to(self.device)
        self.optimizers["adam"] = torch.optim.Adam(model.parameters(), lr=self.mc.lr)

    def _encode(self, texts: Sequence[str]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Text tokens ``(B, L, D)`` and mask ``(B, L)`` (None, None without text); sentences cached."""
        if not self.mc.use_text:
            return None, None
        assert self.text_encoder is not None
        missing = sorted({t for t in texts if t not in self._tokens})
        if missing:
            tok, mask = self.text_encoder.encode(missing)
            for i, t in enumerate(missing):
                self._tokens[t] = (tok[i], mask[i])
        tokens = torch.stack([self._tokens[t][0] for t in texts]).to(self.device)
        mask = torch.stack([self._tokens[t][1] for t in texts]).to(self.device)
        return tokens, (mask if self.mc.mask_padding else None)

    def prepare(self, train_cases: Sequence[Any], run_dir: Path | None) -> None:
        """Backbone (pre-trained here or loaded), text encoder, features/tokens of the chosen images, model."""
        if not self.selected_ids:  # called without select_training_cases: use the cases given
            self.selected_ids = [c.id for c in train_cases]
        t0 = time.perf_counter()
        if self.mc.backbone:
            unet = load_backbone(self.mc.backbone, self.info.in_channels, self.mc.image_size, self.device)
            self.backbone_path, self.backbone_source = str(Path(self.mc.backbone).resolve()), "user checkpoint"
        else:
            pool = self._unlabelled or list(train_cases)
            unet, self.ddpm_losses = pretrain_ddpm(
                self._image_tensor(pool), self.mc.backbone_preset, steps=self.mc.ddpm_steps, run_dir=run_dir,
                seed=self.cfg.seed, progress=True, batch_size=self.mc.ddpm_batch, crop=self.mc.ddpm_crop,
                lr=self.mc.ddpm_lr, device=self.device)
            self.backbone_path = str((Path(run_dir) / BACKBONE_FILE).resolve()) if run_dir is not None else None
            self.backbone_source = f"DDPM pre-trained here on {len(pool)} unlabelled training images"
        self.timings["backbone_seconds"] = round(time.perf_counter() - t0, 2)
        self._setup_frozen(unet)
        # features of the fixed training images, extracted once (no per-epoch re-extraction)
        t0 = time.perf_counter()
        images = self._image_tensor(train_cases)
        for i, case in enumerate(train_cases):
            self.train_cache.features([case.id], images[i:i + 1], self.extractor.extract)
            label = torch.from_numpy(np.ascontiguousarray(case.label)).long()
            if tuple(label.shape) != (self.mc.image_size,) * 2:
                label = F.interpolate(label[None, None].float(), size=(self.mc.image_size,) * 2,
                                      mode="nearest")[0, 0].long()
            self.train_labels[case.id] = label
        self.timings["feature_seconds_per_image"] = round((time.perf_counter() - t0) / max(1, len(train_cases)), 3)
        texts = [c.text for c in train_cases]
        if self.mc.shuffle_text:
            perm = derangement(len(texts), self.cfg.seed + 1)
            texts = [texts[j] for j in perm]
        self.train_text = {c.id: t for c, t in zip(train_cases, texts)}
        self._encode(texts)
        self._build_model()

    def restore(self, run_dir: Path, run_info: dict[str, Any]) -> None:
        """Rebuild the frozen backbone (``run_dir/backbone.pt``, else the recorded path) and text encoder."""
        candidates = [Path(run_dir) / BACKBONE_FILE]
        for p in (run_info.get("backbone_path"), self.mc.backbone):
            if p:
                candidates.append(Path(p))
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"textdiff: no backbone checkpoint found (looked for "
                                    f"{', '.join(str(p) for p in candidates)}); it is written by training")
        unet = load_backbone(path, self.info.in_channels, self.mc.image_size, self.device)
        self.backbone_path, self.backbone_source = str(path), run_info.get("backbone_source", "restored")
        self.selected_ids = list(run_info.get("selected_ids", []))
        if self.mc.use_text:
            from .text import load_text_encoder

            loaded = run_info.get("text_encoder_loaded", self.mc.text_encoder)
            self.text_encoder = load_text_encoder(loaded, self.mc.max_length, self.device)
        self._setup_frozen(unet)
        self._build_model()

    def run_info(self) -> dict[str, Any]:
        ex = self.extractor
        return {
            "selected_ids": list(self.selected_ids),
            "backbone_path": self.backbone_path, "backbone_source": self.backbone_source,
            "ddpm_steps_done": len(self.ddpm_losses),
            "ddpm_loss_first_last": [self.ddpm_losses[0], float(np.mean(self.ddpm_losses[-20:]))] if self.ddpm_losses else None,
            "text_encoder_requested": self.mc.text_encoder if self.mc.use_text else None,
            "text_encoder_loaded": self.text_encoder.name if self.text_encoder is not None else None,
            "blocks": ex.blocks if ex else None, "block_fractions": ex.fractions() if ex else None,
            "feature_dims": ex.feature_dims() if ex else None,
            "train_text": dict(self.train_text) if self.mc.use_text else None,
            "timings": dict(self.timings),
        }

    # ---- training ------------------------------------------------------------------------
    def train_batches(self, cases: Sequence[Any], seed: int) -> Iterator[dict[str, Any]]:
        """Endless batches of cached cases: a seeded shuffle per epoch, ``batch_size`` ids per batch.

        Each batch is ``{"id": [ids], "label": (B, S, S) int64, "aug": (B, 2) int64 (rot90 k, flip)}``.
        """
        ids = [c.id for c in cases]
        rng = np.random.default_rng(seed)
        bs = self.mc.batch_size
        while True:
            order = rng.permutation(len(ids))
            for i in range(0, len(order), bs):
                chunk = [ids[j] for j in order[i:i + bs]]
                aug = np.zeros((len(chunk), 2), dtype=np.int64)
                if self.mc.augment:
                    on = rng.random(len(chunk)) < 0.5
                    aug[:, 0] = np.where(on, rng.integers(1, 4, len(chunk)), 0)
                    aug[:, 1] = np.where(on, rng.integers(0, 2, len(chunk)), 0)
                yield {"id": chunk, "label": torch.stack([self.train_labels[k] for k in chunk]),
                       "aug": torch.from_numpy(aug)}

    def _check_ready(self) -> None:
        if self.extractor is None or "textdiff" not in self.nets:
            raise RuntimeError("textdiff: call prepare() (training) or restore() (a trained run) first")

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        """One Adam step on cached features: fusion + head forward, CE + 1.5 Dice, backward (trainable parts only)."""
        self._check_ready()
        ids = list(batch["id"])
        feats = [f.to(self.device) for f in self.train_cache.batch(ids)]
        label = batch["label"].to(self.device)
        aug = batch.get("aug")
        if aug is not None and bool(aug.any()):
            feats = [torch.stack([_augment(f[i], int(aug[i, 0]), int(aug[i, 1])) for i in range(len(ids))]) for f in feats]
            label = torch.stack([_augment(label[i], int(aug[i, 0]), int(aug[i, 1])) for i in range(len(ids))])
        tokens, mask = self._encode([self.train_text.get(i, "") for i in ids])
        model = self.nets["textdiff"]
        logits = model(feats, tokens, mask, out_size=tuple(label.shape[-2:]))
        loss, parts = ce_dice_loss(logits, label, self.mc.dice_weight, self.mc.dice_softmax, return_parts=True)
        opt = self.optimizers["adam"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), self.cfg.train.grad_clip)
        opt.step()
        return {"loss": float(loss.detach()), **parts}

    # ---- inference -----------------------------------------------------------------------
    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Diffusion features of images ``(B, C, h, w)`` in [0, 1] after resizing to ``image_size`` (cached)."""
        self._check_ready()
        x = self._resize(image.float())
        keys = [image_key(x[i]) for i in range(x.shape[0])]
        return [f.to(self.device) for f in self.eval_cache.features(keys, x, self.extractor.extract)]

    @torch.no_grad()
    def predict(self, image: torch.Tensor, text: Sequence[str] | None = None) -> torch.Tensor:
        """Class probabilities ``(B, K, h, w)`` for images ``(B, C, h, w)`` in [0, 1] and their sentences.

        The image is resized to ``image_size`` (whole image, as in the paper), segmented, and the
        probabilities resized back to ``(h, w)``.
        """
        if image.dim() != 4 or image.shape[1] != self.info.in_channels:
            raise ValueError(f"textdiff.predict: image must be (B, {self.info.in_channels}, h, w), got {tuple(image.shape)}")
        B, _, h, w = image.shape
        texts = list(text) if text is not None else [""] * B
        if len(texts) != B:
            raise ValueError(f"textdiff.predict: {len(texts)} sentences for {B} images")
        feats = self.features(image)
        tokens, mask = self._encode(texts)
        model = self.nets["textdiff"]
        s = self.mc.image_size
        probs = torch.softmax(model(feats, tokens, mask, out_size=(s, s)), dim=1)
        if (h, w) != (s, s):
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
        return probs

    def inference_roi(self) -> int | None:
        return None

    def trainable_report(self) -> dict[str, int]:
        """Trainable parameters per part (the paper counts only these: 9.68 M at its config)."""
        model = self.nets["textdiff"]
        fusion = model.fusion
        return {
            "projections": sum(p.numel() for p in fusion.proj.parameters()),
            "cross_attention": sum(p.numel() for p in fusion.block.parameters()) if fusion.block is not None else 0,
            "text_projection": sum(p.numel() for p in fusion.text_proj.parameters()) if fusion.text_proj is not None else 0,
            "head": sum(p.numel() for p in model.head.parameters()),
        }


__all__ = ["TextDiffConfig", "SegHead", "soft_dice_loss", "ce_dice_loss", "TextDiffModel", "TextDiffMethod",
           "derangement"]
