"""TextDiff (Feng, MICCAI 2024): frozen diffusion features + frozen text tokens -> cross-modal attention -> conv decoder.

The pieces (book/decisions.md; decisions T1-T11 recorded where they apply):

* :mod:`.features`: a frozen denoising U-Net (the network of TextDiff's Eq. 2, the reverse process) read on
  images noised by Eq. 1 to t = 50/150/250, blocks at
  1/8, 1/4, 1/2, 1 of the input (T6 by relative resolution), features cached once per image; with the paper's
  ADM-256 (``--backbone adm256:PATH``, :mod:`.adm`) the paper's block indices instead ({6, 8, 12, 16});
* :mod:`.text`: a frozen BERT, 10 tokens per sentence (T9);
* :mod:`.cross_attention`: Eq. 3 inside the official block, shared over scales, at native
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
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import DatasetInfo
from ..methods.base import MethodOption, SegMethod
from .adm import ADM256
from .backbone import ADM_SPEC, BACKBONE_FILE, adm_spec_path, backbone_label, is_adm_spec, load_backbone
from .cache import FeatureCache, image_key
from .config import TextDiffConfig
from .features import DiffusionFeatureExtractor, accelerator_autocast_dtype, select_blocks_by_resolution
from .head import TextDiffModel, ce_dice_loss
from .pretrain import pretrain_ddpm

__all__ = ["TextDiffMethod", "derangement", "TRAIN_FEATURE_BYTES", "EVAL_FEATURE_BYTES"]

#: memory for the cached features of the training images; beyond it they are written to a temporary folder and
#: streamed back one image at a time (a 256-px image: ~42 MB at the ``cpu`` preset, ~280 MB at ``paper``)
TRAIN_FEATURE_BYTES = 2 * 2**30
#: memory for the features of evaluated images (re-used across validations; dropped beyond, re-extracted)
EVAL_FEATURE_BYTES = 2 * 2**30


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
    config_class = TextDiffConfig
    cli_options = (
        MethodOption("--train-images", "train_images", "labelled training images, a seeded choice (paper: 5 MoNuSeg, "
                     "150 QaTa)", type=int),
        MethodOption("--text-encoder", "text_encoder", "Bio_ClinicalBERT (falls back to MiniLM offline) or MiniLM",
                     type=str, choices=("clinical", "minilm")),
        MethodOption("--backbone", "backbone", "path of a diffusion U-Net checkpoint to use instead of pre-training "
                     "one; adm256:PATH (or adm256, the weights folder's copy) for the paper's ADM-256 file",
                     type=str, metavar="PATH"),
        MethodOption("--no-text", "use_text", "ablation zeta_1: no text, no cross-attention", const=False),
        MethodOption("--text-no-xattn", "use_xattn", "ablation zeta_2: pooled text concatenated per pixel", const=False),
        MethodOption("--shuffle-text", "shuffle_text", "sentences permuted across the training images", const=True),
        MethodOption("--text-tokens", "max_length", "word pieces per sentence incl. [CLS]/[SEP] (paper: 10)", type=int,
                     minimum=2),
    )

    def __init__(self, cfg: Any, info: DatasetInfo, device: torch.device) -> None:
        super().__init__(cfg, info, device)
        if self.model_cfg.batch_size < 1 or self.model_cfg.train_images < 1:
            raise ValueError(f"textdiff: batch_size and train_images must be >= 1, got {self.model_cfg.batch_size}, "
                             f"{self.model_cfg.train_images}")
        self.selected_ids: list[str] = []
        self.extractor: DiffusionFeatureExtractor | None = None
        self.text_encoder = None
        self.backbone_path: str | None = None
        self.backbone_source = ""
        self.ddpm_losses: list[float] = []
        # features of the training images: at most TRAIN_FEATURE_BYTES in memory, the rest streamed from disk
        self.train_cache = FeatureCache(max_bytes=TRAIN_FEATURE_BYTES, spill=True)
        self.eval_cache = FeatureCache(max_items=32, max_bytes=EVAL_FEATURE_BYTES)  # unseen images: dropped beyond
        self.train_labels: dict[str, torch.Tensor] = {}
        self.train_text: dict[str, str] = {}
        self._tokens: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._unlabelled: list[Any] = []
        self.timings: dict[str, float] = {}

    # ---- configuration -------------------------------------------------------------------
    @classmethod
    def data_overrides(cls, preset: str, dataset: str, model: TextDiffConfig) -> dict[str, Any]:
        """Whole images resized to ``image_size`` (crop = working size), no loader augmentation, batch 1."""
        return dict(working_size=model.image_size, crop=model.image_size, augment=False, batch_size=model.batch_size,
                    overlap=0.0)

    @classmethod
    def train_overrides(cls, preset: str, dataset: str, model: TextDiffConfig) -> dict[str, Any]:
        """Steps = epochs x images / batch; validation every 5 epochs (smoke: every epoch)."""
        per_epoch = max(1, -(-model.train_images // model.batch_size))
        every = 1 if preset == "smoke" else 5
        minutes = {"smoke": 2.0, "cpu": 12.0, "gpu": 30.0}.get(preset)
        return dict(steps=model.epochs * per_epoch, val_every=every * per_epoch, log_every=per_epoch,
                    max_minutes=minutes)

    # ---- cases ---------------------------------------------------------------------------
    def select_training_cases(self, cases: Sequence[Any], seed: int) -> list[Any]:
        """A seeded choice of ``train_images`` cases (T11); ids kept in ``self.selected_ids``.

        All ``cases`` (labels unused) are kept as the unlabelled pool the backbone is pre-trained on.
        """
        cases = list(cases)
        if not cases:
            raise ValueError("textdiff: no training cases to choose from")
        self._unlabelled = cases
        n = self.model_cfg.train_images
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
        s = self.model_cfg.image_size
        if tuple(images.shape[-2:]) == (s, s):
            return images
        return F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False).clamp(0, 1)

    # ---- frozen parts --------------------------------------------------------------------
    def _setup_frozen(self, unet: nn.Module) -> None:
        # features depend on the backbone: a new backbone makes every cached feature stale
        for cache in (self.train_cache, self.eval_cache):
            if len(cache):
                print(f"features: backbone replaced, dropping {len(cache)} cached feature maps")
                cache.clear()
        if hasattr(unet, "decoder_blocks"):  # ADM-256: the paper's block indices (MoNuSeg {6, 8, 12, 16})
            n = len(unet.decoder_blocks())
            blocks = list(self.model_cfg.adm_blocks)
            if not blocks or any(not 0 <= b < n for b in blocks):
                raise ValueError(f"textdiff: adm_blocks {blocks} must be indices of the backbone's {n} output blocks")
            if self.model_cfg.image_size % unet.divisor:
                raise ValueError(f"textdiff: image_size {self.model_cfg.image_size} must be divisible by {unet.divisor} "
                                 "for the ADM backbone")
        else:
            blocks = select_blocks_by_resolution(unet, self.model_cfg.image_size, self.model_cfg.block_fractions)
        self.extractor = DiffusionFeatureExtractor(unet.to(self.device), self.model_cfg.timesteps, blocks, self.model_cfg.noise_seed,
                                                   autocast_dtype=accelerator_autocast_dtype(self.device))
        if self.model_cfg.use_text and self.text_encoder is None:
            from .text import load_text_encoder

            self.text_encoder = load_text_encoder(self.model_cfg.text_encoder, self.model_cfg.max_length, self.device)
            if not self.info.has_text:
                print(f"notice: dataset {self.info.name} has no text; TextDiff's text branch sees empty sentences")

    def _build_model(self) -> None:
        assert self.extractor is not None
        context_dim = self.text_encoder.dim if self.text_encoder is not None else 1
        model = TextDiffModel(self.extractor.feature_dims(), self.info.num_classes, self.model_cfg.dim, context_dim,
                              self.model_cfg.heads, self.model_cfg.dim_head, self.model_cfg.use_text, self.model_cfg.use_xattn, self.model_cfg.head_hidden,
                              self.model_cfg.head_norm)
        self.nets["textdiff"] = model.to(self.device)
        self.optimizers["adam"] = torch.optim.Adam(model.parameters(), lr=self.model_cfg.lr)

    def _encode(self, texts: Sequence[str]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Text tokens ``(B, L, D)`` and mask ``(B, L)`` (None, None without text); sentences cached."""
        if not self.model_cfg.use_text:
            return None, None
        assert self.text_encoder is not None
        missing = sorted({t for t in texts if t not in self._tokens})
        if missing:
            tok, mask = self.text_encoder.encode(missing)
            for i, t in enumerate(missing):
                self._tokens[t] = (tok[i], mask[i])
        tokens = torch.stack([self._tokens[t][0] for t in texts]).to(self.device)
        mask = torch.stack([self._tokens[t][1] for t in texts]).to(self.device)
        return tokens, (mask if self.model_cfg.mask_padding else None)

    def prepare(self, train_cases: Sequence[Any], run_dir: Path | None) -> None:
        """Backbone (pre-trained here or loaded), text encoder, features/tokens of the chosen images, model."""
        if not self.selected_ids:  # called without select_training_cases: use the cases given
            self.selected_ids = [c.id for c in train_cases]
        t0 = time.perf_counter()
        if is_adm_spec(self.model_cfg.backbone):
            unet = load_backbone(self.model_cfg.backbone, self.info.in_channels, self.model_cfg.image_size, self.device)
            self.backbone_path = f"{ADM_SPEC}:{adm_spec_path(self.model_cfg.backbone).resolve()}"
            self.backbone_source = backbone_label(self.backbone_path).removeprefix("backbone: ") + \
                ("" if unet.config == ADM256 else f" [reduced architecture: {unet.config}]")
        elif self.model_cfg.backbone:
            unet = load_backbone(self.model_cfg.backbone, self.info.in_channels, self.model_cfg.image_size, self.device)
            self.backbone_path, self.backbone_source = str(Path(self.model_cfg.backbone).resolve()), "user checkpoint"
        else:
            pool = self._unlabelled or list(train_cases)
            unet, self.ddpm_losses = pretrain_ddpm(
                self._image_tensor(pool), self.model_cfg.backbone_preset, steps=self.model_cfg.ddpm_steps, run_dir=run_dir,
                seed=self.cfg.seed, progress=self.progress, batch_size=self.model_cfg.ddpm_batch, crop=self.model_cfg.ddpm_crop,
                lr=self.model_cfg.ddpm_lr, device=self.device)
            self.backbone_path = str((Path(run_dir) / BACKBONE_FILE).resolve()) if run_dir is not None else None
            self.backbone_source = f"DDPM pre-trained here on {len(pool)} unlabelled training images"
        self.timings["backbone_seconds"] = round(time.perf_counter() - t0, 2)
        self._setup_frozen(unet)
        # features of the fixed training images, extracted once (no per-epoch re-extraction), several images
        # per U-Net pass; images are resized a pass at a time and features beyond the memory bound go to disk
        t0 = time.perf_counter()
        per = self.extractor.images_per_pass(self.model_cfg.image_size, self.model_cfg.image_size)
        for s in range(0, len(train_cases), per):
            chunk = train_cases[s:s + per]
            self.train_cache.features([c.id for c in chunk], self._image_tensor(chunk), self.extractor.extract, keep=False)
        for case in train_cases:
            label = torch.from_numpy(np.ascontiguousarray(case.label)).long()
            if tuple(label.shape) != (self.model_cfg.image_size,) * 2:
                label = F.interpolate(label[None, None].float(), size=(self.model_cfg.image_size,) * 2,
                                      mode="nearest")[0, 0].long()
            self.train_labels[case.id] = label
        self.timings["feature_seconds_per_image"] = round((time.perf_counter() - t0) / max(1, len(train_cases)), 3)
        texts = [c.text for c in train_cases]
        if self.model_cfg.shuffle_text:
            perm = derangement(len(texts), self.cfg.seed + 1)
            texts = [texts[j] for j in perm]
        self.train_text = {c.id: t for c, t in zip(train_cases, texts)}
        self._encode(texts)
        self._build_model()

    def restore(self, run_dir: Path, run_info: dict[str, Any]) -> None:
        """Rebuild the frozen backbone (``run_dir/backbone.pt``, else the recorded path) and text encoder."""
        adm = next((p for p in (run_info.get("backbone_path"), self.model_cfg.backbone) if is_adm_spec(p)), None)
        if adm is not None:  # the ADM-256 file is not copied into the run folder: it is read where it was
            unet = load_backbone(adm, self.info.in_channels, self.model_cfg.image_size, self.device)
            self.backbone_path, self.backbone_source = adm, run_info.get("backbone_source", backbone_label(adm))
        else:
            candidates = [Path(run_dir) / BACKBONE_FILE]
            for p in (run_info.get("backbone_path"), self.model_cfg.backbone):
                if p:
                    candidates.append(Path(p))
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                raise FileNotFoundError(f"textdiff: no backbone checkpoint found (looked for "
                                        f"{', '.join(str(p) for p in candidates)}); it is written by training")
            unet = load_backbone(path, self.info.in_channels, self.model_cfg.image_size, self.device)
            self.backbone_path, self.backbone_source = str(path), run_info.get("backbone_source", "restored")
        self.selected_ids = list(run_info.get("selected_ids", []))
        if self.model_cfg.use_text:
            from .text import load_text_encoder

            loaded = run_info.get("text_encoder_loaded", self.model_cfg.text_encoder)
            self.text_encoder = load_text_encoder(loaded, self.model_cfg.max_length, self.device)
        self._setup_frozen(unet)
        self._build_model()

    def run_info(self) -> dict[str, Any]:
        ex = self.extractor
        return {
            "selected_ids": list(self.selected_ids),
            "backbone_path": self.backbone_path, "backbone_source": self.backbone_source,
            "backbone": "adm256" if is_adm_spec(self.backbone_path) else ("substitute" if not self.model_cfg.backbone
                                                                          else "user checkpoint"),
            "ddpm_steps_done": len(self.ddpm_losses),
            "ddpm_loss_first_last": [self.ddpm_losses[0], float(np.mean(self.ddpm_losses[-20:]))] if self.ddpm_losses else None,
            "text_encoder_requested": self.model_cfg.text_encoder if self.model_cfg.use_text else None,
            "text_encoder_loaded": self.text_encoder.name if self.text_encoder is not None else None,
            "blocks": ex.blocks if ex else None, "block_fractions": ex.fractions() if ex else None,
            "feature_dims": ex.feature_dims() if ex else None,
            "feature_precision": self._feature_precision(),
            "train_text": dict(self.train_text) if self.model_cfg.use_text else None,
            "timings": dict(self.timings),
        }

    # ---- training ------------------------------------------------------------------------
    def train_batches(self, cases: Sequence[Any], seed: int) -> Iterator[dict[str, Any]]:
        """Endless batches of cached cases: a seeded shuffle per epoch, ``batch_size`` ids per batch.

        Each batch is ``{"id": [ids], "label": (B, S, S) int64, "aug": (B, 2) int64 (rot90 k, flip)}``.
        """
        ids = [c.id for c in cases]
        rng = np.random.default_rng(seed)
        bs = self.model_cfg.batch_size
        while True:
            order = rng.permutation(len(ids))
            for i in range(0, len(order), bs):
                chunk = [ids[j] for j in order[i:i + bs]]
                aug = np.zeros((len(chunk), 2), dtype=np.int64)
                if self.model_cfg.augment:
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
        model = self.train_net("textdiff")  # DDP-wrapped under torchrun
        logits = model(feats, tokens, mask, out_size=tuple(label.shape[-2:]))
        loss, parts = ce_dice_loss(logits, label, self.model_cfg.dice_weight, self.model_cfg.dice_softmax, return_parts=True)
        opt = self.optimizers["adam"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach()), **parts}

    # ---- inference -----------------------------------------------------------------------
    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Diffusion features of images ``(B, C, h, w)`` in [0, 1] after resizing to ``image_size`` (cached by
        content; the missing ones extracted together, every noise level and several images per U-Net pass)."""
        self._check_ready()
        x = self._resize(image.float())
        keys = [image_key(x[i]) for i in range(x.shape[0])]
        return [f.to(self.device) for f in self.eval_cache.features(keys, x, self.extractor.extract)]

    @torch.no_grad()
    def predict(self, image: torch.Tensor, text: Sequence[str] | None = None) -> torch.Tensor:
        """Class probabilities ``(B, K, h, w)`` for images ``(B, C, h, w)`` in [0, 1] and their sentences.

        The image is resized to ``image_size`` (whole image, as in the paper), segmented, and the
        probabilities resized back to ``(h, w)``. Seconds per image and peak memory (extraction of an unseen
        image included): ``benchmarks/textdiff.py``.
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
        s = self.model_cfg.image_size
        probs = torch.softmax(model(feats, tokens, mask, out_size=(s, s)), dim=1)
        if (h, w) != (s, s):
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
        return probs

    @classmethod
    def inference_window(cls, cfg: Any) -> int | None:
        """Whole images: features are read from the frozen backbone over the full working size."""
        return None

    def _feature_precision(self) -> str:
        dt = self.extractor.autocast_dtype if self.extractor is not None and self.device.type != "cpu" else None
        return {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}.get(dt, "fp32")

    def inference_note(self) -> str:
        """How the frozen backbone ran, for the protocol sentence (precision, images per U-Net pass)."""
        s = self.model_cfg.image_size
        per = self.extractor.images_per_pass(s, s) if self.extractor is not None else 1
        return (f"TextDiff features: {self._feature_precision()}, {len(self.model_cfg.timesteps)} noise levels and up to "
                f"{per} images per backbone pass.")

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
