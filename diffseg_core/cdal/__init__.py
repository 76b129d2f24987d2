"""cDAL (Hejrati et al., MICCAI 2024): Part II of the book.

One module per idea, in the order the chapters teach them:

* :mod:`.labels` — labels and images to and from diffusion space (chapter 03);
* :mod:`.layers`, :mod:`.generator` — the conditional generator with AdaGN and the light image encoder
  (chapter 04);
* :mod:`.discriminator` — the time-conditioned discriminator and its spatial attention map (chapter 05);
* :mod:`.training` — Algorithm 1, :mod:`.sampling` — Algorithm 2 (chapters 05-06);
* :mod:`.config` — the presets, :mod:`.method` — the plug-in for the shared loop (chapter 06);
* :mod:`.official` — the authors' released checkpoints to our networks and back (chapter 16);
* :mod:`.ema` — the moving average of the generator's weights (Hippocampus, chapter 08). Every network
  layer also builds in 3-D (``spatial_dims=3``) for the native 3-D cDAL of chapter 08.

The schedule and forward process are shared with TextDiff and live in :mod:`diffseg_core.schedule`.
"""
from .config import CDALConfig
from .discriminator import TimeConditionedDiscriminator, build_discriminator, spatial_attention
from .ema import ema_decay_at, update_ema
from .generator import ConditionalGenerator, build_generator, draw_latent
from .labels import MONUSEG_MEAN, MONUSEG_STD, label_channels, labels_to_x0, normalize_image, x0_to_probs
from .method import CDALMethod
from .sampling import ddpm_sample_same_net, nearest_time_map, sample_cdal, summarise_samples
from .training import attention_map, d_step, g_step

__all__ = [
    "CDALConfig", "TimeConditionedDiscriminator", "build_discriminator", "spatial_attention", "ConditionalGenerator",
    "build_generator", "draw_latent", "MONUSEG_MEAN", "MONUSEG_STD", "label_channels", "labels_to_x0",
    "normalize_image", "x0_to_probs", "CDALMethod", "ddpm_sample_same_net", "nearest_time_map", "sample_cdal",
    "summarise_samples", "attention_map", "d_step", "g_step", "ema_decay_at", "update_ema",
]
