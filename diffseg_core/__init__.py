"""diffseg_core: the thin library under the diffseg book.

One package per paper and shared infrastructure around them (the book's page "How the code is
organised", ``book/code.md``, draws the layers):

* ``config`` (dataclasses and presets ``smoke``/``cpu``/``gpu``/``paper``/``auto``; a leaf), ``device``
  (device choice, seeding), ``checkpoint`` (atomic files), ``metrics`` (Dice/IoU/precision/recall, per image
  and pooled), ``schedule`` (noise schedules, forward process and posterior, shared by both papers);
* ``data`` (real loaders for MoNuSeg, chest X-ray lungs, MSD Hippocampus, QaTa-COV19; synthetic stand-ins;
  MONAI training batches), ``weights`` (where the authors' weights and the papers' backbones come from),
  ``plots`` (every figure);
* ``methods`` (the socket every method plugs into, the registry, ``get_config`` and the U-Net baseline);
* ``cdal`` (Part II: generator, discriminator, Algorithms 1-2, the method, the authors' checkpoint format) and
  ``textdiff`` (Part III: backbone and ADM-256, features, text encoders, cross-attention, head, the method);
* ``train`` (the one training loop), ``evaluate`` (sliding-window inference, scoring, result rows),
  ``released`` (the authors' cDAL generators scored with the book's protocol);
* ``notebook`` (chapter set-up helpers), ``book`` (the main job) and ``cli`` (``python -m diffseg_core``).
"""

__version__ = "0.1.0"
