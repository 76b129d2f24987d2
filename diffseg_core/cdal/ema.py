"""An exponential moving average (EMA) of the generator's weights, as the official Hippocampus training keeps.

After every generator update, each EMA weight moves a small step towards the live weight:

.. math::  \\theta_{\\mathrm{EMA}} \\leftarrow \\beta\\,\\theta_{\\mathrm{EMA}} + (1 - \\beta)\\,\\theta

with decay :math:`\\beta = 0.999` for Hippocampus (an average over roughly the last 1/(1 - beta) = 1000 steps).
Validation and prediction then use the averaged weights, which are smoother than the last step's. The
paper does not mention it; the official Hippocampus script does (DDGAN's EMA wrapper around Adam), the
MoNuSeg/CXR script does not.

Choices against the official code:

* the EMA is a **separate copy** used for validation and prediction (``G_ema`` in the method); the official
  script swaps the live and the EMA weights whenever the test score improves and keeps training from the
  swapped state, which mixes the two;
* **warm-up**: the decay used at update n is ``min(beta, (1 + n) / (10 + n))`` (TensorFlow's
  ``ExponentialMovingAverage`` with ``num_updates``), so a short run does not average in its untrained
  start (the EMA would otherwise still hold e^-3 = 5 % of the initial weights after 3,000 steps); beyond
  about 9,000 updates it is the plain decay, as in the official runs of 100,000+ steps.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ema_decay_at", "update_ema"]


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay used at update number ``updates`` (0-based): ``min(decay, (1 + n) / (10 + n))``; 0 stays 0."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay_at: decay must be in [0, 1), got {decay}")
    return min(decay, (1.0 + updates) / (10.0 + updates))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta for every parameter; buffers are copied.

    ``ema`` and ``model`` must have the same architecture (``ema`` is typically a deep copy of ``model``).
    """
    e_params, m_params = list(ema.parameters()), list(model.parameters())
    if len(e_params) != len(m_params) or any(a.shape != b.shape for a, b in zip(e_params, m_params)):
        raise ValueError("update_ema: the EMA copy and the model have different parameters")
    for pe, p in zip(e_params, m_params):
        pe.lerp_(p.detach(), 1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)
