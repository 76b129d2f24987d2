"""Per-member predictions over whole images: the cDAL ensemble, MC dropout and test-time augmentation.

Every function returns the foreground probability of each member, ``(N, H, W)`` float32 in [0, 1], for one
case of a **binary** task at the working resolution, tiled by MONAI's sliding window exactly as
:func:`diffseg_core.evaluate.predict_case` tiles it (the method's ``inference_roi()`` and the data
``overlap``); the members travel through the window as channels, so each member is stitched on its own.

* ``ensemble`` (cDAL): N chains of Algorithm 2 (:func:`diffseg_core.cdal.sample_cdal`) per tile, each
  member the last x0 prediction mapped to [0, 1]; N x T network evaluations per pixel.
* ``mc_dropout`` (Gal and Ghahramani, ICML 2016): N forward passes with the dropout layers sampling and
  everything else in evaluation mode (batch-norm statistics frozen); N evaluations per pixel. The
  networks must contain dropout (the U-Net built with ``dropout > 0``).
* ``tta``: the first N of the eight flips and rotations (:func:`diffseg_core.uncertainty.dihedral_transforms`),
  each prediction mapped back by the inverse transform; N <= 8 evaluations per pixel.
* ``single``: the method's own deterministic ``predict`` (N = 1).

Noise is drawn from generators seeded with ``seed`` inside the call (dropout under
``torch.random.fork_rng``), so the caller's random streams are untouched and a call is reproducible.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from .data import Case
from .methods.base import SegMethod
from .uncertainty import dihedral_transforms

__all__ = ["KINDS", "member_probs", "evaluations_per_pixel", "dropout_active"]

#: the kinds of member predictions :func:`member_probs` makes
KINDS: tuple[str, ...] = ("ensemble", "mc_dropout", "tta", "single")


@contextmanager
def dropout_active(module: nn.Module) -> Iterator[int]:
    """Within the block, ``module`` is in eval mode except its dropout layers, which sample (train mode).

    Yields the number of dropout layers switched on; the previous train/eval flags are restored after.
    """
    before = {m: m.training for m in module.modules()}
    module.eval()
    drops = [m for m in module.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    for m in drops:
        m.train()
    try:
        yield len(drops)
    finally:
        for m, flag in before.items():
            m.train(flag)


def evaluations_per_pixel(method: SegMethod, kind: str, n: int) -> int:
    """Network evaluations that see each pixel (not counting window overlap): N x T for the cDAL ensemble,
    N for MC dropout and TTA, 1 for ``single``."""
    _check_kind(kind, n)
    if kind == "ensemble":
        return n * int(_cdal_parts(method)[1].T)
    return 1 if kind == "single" else n


def member_probs(method: SegMethod, case: Case, kind: str, n: int, seed: int = 0) -> np.ndarray:
    """Foreground probability of ``n`` members, ``(n, H, W)`` float32, for ``case`` (image ``(C, H, W)``).

    ``kind`` is one of :data:`KINDS` (see the module docstring). Raises ``ValueError`` for a multiclass
    dataset, a cDAL-only kind on another method, MC dropout on networks without dropout, or more than 8
    TTA members.
    """
    _check_kind(kind, n)
    if method.info.num_classes != 2:
        raise ValueError(f"member_probs: binary tasks only; {method.info.name} has {method.info.num_classes} classes")
    method.eval()
    image = torch.from_numpy(np.ascontiguousarray(case.image))[None].to(method.device)
    if kind == "ensemble":
        G, sched, mc = _cdal_parts(method)
        from .cdal import normalize_image, sample_cdal

        gen = torch.Generator(device=method.device)
        gen.manual_seed(int(seed))

        def members(x: torch.Tensor) -> torch.Tensor:
            out = sample_cdal(G, sched, normalize_image(x.float(), mc.image_norm), n_samples=n,
                              use_latent=mc.use_latent, generator=gen)
            return out["samples"][:, :, 0].transpose(0, 1)             # (N, b, 1, h, w) -> (b, N, h, w)

        return _slide(method, image, members)
    if kind == "single":
        return _slide(method, image, lambda x: method.predict(x, [case.text] * x.shape[0])[:, 1:2])
    if kind == "tta":
        if image.shape[-1] != image.shape[-2]:
            raise ValueError(f"member_probs: TTA rotates the image, which must be square, got {tuple(image.shape[-2:])}")
        outs = []
        for _, fwd, inv in dihedral_transforms()[:n]:
            p = _slide(method, fwd(image), lambda x: method.predict(x, [case.text] * x.shape[0])[:, 1:2])
            outs.append(inv(torch.from_numpy(p))[0].numpy())
        return np.stack(outs)
    # mc_dropout
    on_accelerator = method.device.type != "cpu"
    with torch.random.fork_rng(devices=[method.device] if on_accelerator else [],
                               device_type=method.device.type if on_accelerator else None):
        torch.manual_seed(int(seed))
        with dropout_active(method.nets) as n_drop:
            if n_drop == 0:
                raise ValueError(f"member_probs: MC dropout needs dropout layers; {method.name}'s networks have none "
                                 "(build the U-Net with dropout > 0, e.g. get_config('unet', ..., dropout=0.1))")
            return _slide(method, image, lambda x: torch.cat(
                [method.predict(x, [case.text] * x.shape[0])[:, 1:2] for _ in range(n)], dim=1))


def _check_kind(kind: str, n: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"member_probs: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if n < 1 or (kind == "single" and n != 1):
        raise ValueError(f"member_probs: {kind} needs n >= 1 (n = 1 for 'single'), got {n}")
    if kind == "tta" and n > 8:
        raise ValueError(f"member_probs: a square has 8 flips and rotations; TTA cannot make {n} distinct members")


def _cdal_parts(method: SegMethod) -> tuple[Any, Any, Any]:
    if "G" not in method.nets or not hasattr(method, "sched"):
        raise ValueError(f"member_probs: 'ensemble' samples cDAL's generator; {method.name} has none "
                         "(use 'mc_dropout' or 'tta' for other methods)")
    G = method.sampling_generator() if hasattr(method, "sampling_generator") else method.nets["G"]  # EMA if kept
    return G, method.sched, method.model_cfg


def _slide(method: SegMethod, image: torch.Tensor, members: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """``members`` maps tiles (b, C, h, w) to (b, N, h, w) probabilities; stitched over ``image`` (1, C, H, W)."""
    roi = method.inference_roi()
    with torch.inference_mode():  # the samplers return inference tensors, which the window stitching updates in place
        if roi is None:
            out = members(image)
        else:
            out = sliding_window_inference(image, roi_size=(roi, roi), sw_batch_size=16, predictor=members,
                                           overlap=method.cfg.data.overlap, mode="constant")
    return out[0].float().clamp(0.0, 1.0).cpu().numpy()
