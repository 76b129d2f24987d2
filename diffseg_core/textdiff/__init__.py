"""TextDiff (C.-M. Feng, MICCAI 2024): Part III of the book.

One module per idea, in the order the chapters teach them:

* :mod:`.backbone` — the frozen diffusion U-Net (a substitute for ADM-256), :mod:`.pretrain` — its DDPM
  pre-training on unlabelled images, :mod:`.features` — the decoder blocks read at a few noise levels,
  :mod:`.cache` — features computed once (chapter 10);
* :mod:`.text` — the frozen text encoders, :mod:`.cross_attention` — TextDiff Eq. 3 and the multi-scale
  cross-modal block (chapter 11);
* :mod:`.head` — the "pixel classifier" and its loss, :mod:`.config` — the presets, :mod:`.method` — the
  plug-in for the shared loop (chapter 12);
* :mod:`.adm` — the paper's own backbone, ADM-256, loadable from the released file (chapter 16).

The forward process is shared with cDAL and lives in :mod:`diffseg_core.schedule`. The text encoders are
imported lazily (``transformers`` is slow to import).
"""
from .adm import ADM256, ADMConfig, ADMUNet, load_adm
from .backbone import BACKBONE_ARCHS, BACKBONE_FILE, build_backbone, freeze, load_backbone
from .cache import FeatureCache, image_key
from .config import TextDiffConfig
from .cross_attention import CrossAttention, CrossModalBlock, MultiScaleCrossModalFusion, cross_attention, masked_mean
from .features import DecoderBlock, DiffusionFeatureExtractor, ddpm_signal_levels, decoder_blocks, select_blocks_by_resolution
from .head import SegHead, TextDiffModel, ce_dice_loss, soft_dice_loss
from .method import TextDiffMethod, derangement
from .pretrain import DDPM_TRAINING, pretrain_ddpm

__all__ = [
    "ADM256", "ADMConfig", "ADMUNet", "load_adm",
    "BACKBONE_ARCHS", "BACKBONE_FILE", "build_backbone", "freeze", "load_backbone", "FeatureCache", "image_key",
    "TextDiffConfig", "CrossAttention", "CrossModalBlock", "MultiScaleCrossModalFusion", "cross_attention",
    "masked_mean", "DecoderBlock", "DiffusionFeatureExtractor", "ddpm_signal_levels", "decoder_blocks",
    "select_blocks_by_resolution", "SegHead", "TextDiffModel", "ce_dice_loss", "soft_dice_loss", "TextDiffMethod",
    "derangement", "DDPM_TRAINING", "pretrain_ddpm",
]
