"""The interface every method implements to use the shared loop, CLI and evaluation.

Conventions (all methods):

* a training batch is a dict with ``image`` ``(B, C, h, w)`` float in [0, 1], ``label`` ``(B, h, w)``
  int64 class indices in ``0..K-1`` (K = ``info.num_classes``, 2 for binary tasks), ``text`` (list of
  ``B`` strings, ``""`` when the dataset has none) and ``id`` (list of ``B`` case ids);
* :meth:`SegMethod.predict` returns class probabilities ``(B, K, h, w)`` that sum to one over ``K``;
* optimisation happens inside :meth:`SegMethod.train_step` (a method may own several optimisers,
  e.g. cDAL's generator and discriminator); the loop only calls it, logs the returned floats, guards
  against NaN/inf and checkpoints :meth:`state_dict`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class DatasetInfo:
    """What a method needs to know about the data to build its networks."""

    name: str
    in_channels: int
    num_classes: int
    class_names: tuple[str, ...]
    has_text: bool = False


class SegMethod:
    """Base class. Subclasses set ``name`` and implement the abstract methods.

    Subclasses keep their networks in ``self.nets`` (a :class:`torch.nn.ModuleDict`) and their
    optimisers in ``self.optimizers`` (a dict) so the default :meth:`state_dict` checkpoints everything.
    """

    name: ClassVar[str] = "base"

    def __init__(self, cfg: Any, info: DatasetInfo, device: torch.device) -> None:
        self.cfg = cfg
        self.info = info
        self.device = device
        self.nets = nn.ModuleDict()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    # ---- configuration -------------------------------------------------------------------
    @classmethod
    def default_config(cls, preset: str, dataset: str) -> Any:
        """The method's model dataclass for a preset (the papers' values at ``paper``)."""
        raise NotImplementedError

    @classmethod
    def data_overrides(cls, preset: str, dataset: str) -> dict[str, Any]:
        """Changes to the dataset's :class:`~diffseg_core.config.DataConfig` this method needs."""
        return {}

    @classmethod
    def train_overrides(cls, preset: str, dataset: str, model: Any = None) -> dict[str, Any]:
        """Changes to :class:`~diffseg_core.config.TrainConfig` (steps, lr, ...) for this method.

        ``model`` is the final model dataclass (after user overrides such as ``--train-images``)."""
        return {}

    # ---- life cycle ----------------------------------------------------------------------
    def prepare(self, train_cases: Sequence[Any], run_dir: Path | None) -> None:
        """Called once before training (e.g. pre-train a frozen backbone, cache features)."""

    def select_training_cases(self, cases: Sequence[Any], seed: int) -> list[Any]:
        """Which training cases to fit on (default: all). TextDiff picks a seeded few here."""
        return list(cases)

    def train_batches(self, cases: Sequence[Any], seed: int) -> Iterator[dict[str, Any]]:
        """Endless training batches (default: random crops from :func:`diffseg_core.data.train_batches`)."""
        from ..data import train_batches

        return train_batches(cases, self.cfg.data, seed=seed)

    def restore(self, run_dir: Path, run_info: dict[str, Any]) -> None:
        """Called by :func:`diffseg_core.train.load_run` before the checkpoint is loaded, to rebuild frozen
        parts that are not in ``self.nets`` (e.g. a cached backbone). ``run_info`` is what
        :meth:`run_info` returned at training time. Default: nothing to rebuild."""

    def run_info(self) -> dict[str, Any]:
        """Method-specific facts saved in ``run.json`` (e.g. which training cases were chosen)."""
        return {}

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        """One optimisation step on ``batch``; returns named scalar losses (floats)."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, image: torch.Tensor, text: Sequence[str] | None = None) -> torch.Tensor:
        """Class probabilities ``(B, K, h, w)`` for images ``(B, C, h, w)`` in [0, 1]."""
        raise NotImplementedError

    def inference_roi(self) -> int | None:
        """Window size for sliding-window inference (``None``: whole image at once)."""
        return self.cfg.data.crop

    def train(self) -> None:
        self.nets.train()

    def eval(self) -> None:
        self.nets.eval()

    # ---- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "nets": self.nets.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
        }

    def load_state_dict(self, state: dict[str, Any], with_optimizers: bool = True) -> None:
        self.nets.load_state_dict(state["nets"])
        if with_optimizers:
            for k, o in self.optimizers.items():
                if k in state.get("optimizers", {}):
                    o.load_state_dict(state["optimizers"][k])

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.nets.parameters() if p.requires_grad or not trainable_only)
