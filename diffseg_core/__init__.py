"""diffseg_core: the thin library under the diffseg book.

One module per idea (see ``../shared/design/style.md``):

* ``config`` (presets ``smoke``/``cpu``/``gpu``/``paper``/``auto``), ``device`` (device choice, seeding);
* ``data`` (real loaders for MoNuSeg, chest X-ray lungs, MSD Hippocampus, QaTa-COV19; synthetic stand-ins;
  MONAI transforms and training batches), ``metrics`` (Dice/IoU/precision/recall, per-image and pooled);
* ``train`` (the one training loop), ``evaluate`` (sliding-window inference and scoring), ``checkpoint``;
* cDAL: ``schedule``, ``generator``, ``discriminator``, ``cdal``;
* TextDiff: ``features``, ``text``, ``cross_attention``, ``textdiff``;
* ``methods`` (the registry and the U-Net baseline), ``plots``, ``notebook`` (chapter set-up helpers),
  ``pipeline`` (the main job), ``cli`` (``python -m diffseg_core``).
"""

__version__ = "0.1.0"
