"""The socket every method plugs into: the shared loop, the CLI and the evaluation only know this interface.

Conventions (all methods):

* a training batch is a dict with ``image`` ``(B, C, h, w)`` float in [0, 1], ``label`` ``(B, h, w)``
  int64 class indices in ``0..K-1`` (K = ``info.num_classes``, 2 for binary tasks), ``text`` (list of
  ``B`` strings, ``""`` when the dataset has none) and ``id`` (list of ``B`` case ids);
* :meth:`SegMethod.predict` returns class probabilities ``(B, K, h, w)`` that sum to one over ``K``;
* optimisation happens inside :meth:`SegMethod.train_step` (a method may own several optimisers,
  e.g. cDAL's generator and discriminator, each with its own learning rate from the method's model
  config); the loop only calls it, logs the returned floats, guards against NaN/inf and checkpoints
  :meth:`state_dict`;
* a training step calls a network whose weights it updates as ``self.train_net(name)``: under
  ``torchrun`` that is the network wrapped in DistributedDataParallel (:meth:`SegMethod.distribute`), so
  its gradients are averaged across processes; in a single process it is ``self.nets[name]``. Reading a
  network without updating it (cDAL's attention map from D) and prediction use ``self.nets[name]``;
* a method's options live in its own model dataclass (``config_class``), exposed as ``self.model_cfg``;
  the ones a user may set from the command line are declared in ``cli_options``, from which the CLI
  builds its flags (one source for names).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import torch
from torch import nn

from ..data import DatasetInfo
from ..distributed import DistInfo, wrap

__all__ = ["SegMethod", "MethodOption"]


@dataclass(frozen=True)
class MethodOption:
    """One command-line option of a method, mapped onto a field of its model dataclass.

    ``flag`` is the option as typed (``--attn-scale``); ``field`` the model-config field it sets. A switch
    (``const`` given) sets ``field`` to ``const`` when present (e.g. ``--no-latent`` sets
    ``use_latent=False``); otherwise the option takes a value of ``type`` (restricted to ``choices``); an
    ``int`` value below ``minimum`` is refused by the CLI.
    """

    flag: str
    field: str
    help: str
    type: type | None = None
    choices: tuple[Any, ...] | None = None
    const: Any = None
    metavar: str | None = None
    minimum: int = 1

    @property
    def dest(self) -> str:
        """The ``argparse`` destination of the flag (``--attn-scale`` -> ``attn_scale``)."""
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def is_switch(self) -> bool:
        return self.const is not None


class SegMethod:
    """Base class. Subclasses set ``name``, ``config_class`` (and ``cli_options``) and implement
    :meth:`train_step` and :meth:`predict`.

    Subclasses keep their networks in ``self.nets`` (a :class:`torch.nn.ModuleDict`) and their optimisers
    in ``self.optimizers`` (a dict) so the default :meth:`state_dict` checkpoints everything.
    """

    name: ClassVar[str] = "base"
    #: the method's model dataclass; it provides ``for_preset(preset, dataset)`` and ``from_dict(d)``
    config_class: ClassVar[type]
    #: command-line options of this method (see :class:`MethodOption`)
    cli_options: ClassVar[tuple[MethodOption, ...]] = ()

    def __init__(self, cfg: Any, info: DatasetInfo, device: torch.device) -> None:
        self.cfg = cfg
        self.info = info
        self.device = device
        #: the method's own options (an instance of ``config_class``), rebuilt from ``cfg.model``
        self.model_cfg = self.config_class.from_dict(dict(cfg.model))
        self.nets = nn.ModuleDict()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        #: what :func:`diffseg_core.train.run_training` recorded about the last run (also in ``run.json``)
        self.last_run_info: dict[str, Any] = {}
        #: whether long steps inside :meth:`prepare` (e.g. a backbone's pre-training) show a progress bar;
        #: :func:`diffseg_core.train.run_training` sets it from its ``progress`` argument (CLI ``--no-progress``)
        self.progress = True
        #: DDP wrappers of ``nets`` while the loop trains in a process group (:meth:`distribute`)
        self._train_nets: dict[str, nn.Module] = {}

    # ---- configuration -------------------------------------------------------------------
    @classmethod
    def default_config(cls, preset: str, dataset: str) -> Any:
        """The method's model dataclass for a preset (the papers' values at ``paper``)."""
        return cls.config_class.for_preset(preset, dataset)

    @classmethod
    def data_overrides(cls, preset: str, dataset: str, model: Any) -> dict[str, Any]:
        """Changes to the dataset's :class:`~diffseg_core.config.DataConfig` this method needs.

        ``model`` is the final model dataclass (after user overrides)."""
        return {}

    @classmethod
    def train_overrides(cls, preset: str, dataset: str, model: Any) -> dict[str, Any]:
        """Changes to :class:`~diffseg_core.config.TrainConfig` (steps, validation interval, budget).

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

    @classmethod
    def inference_window(cls, cfg: Any) -> int | None:
        """Window side for sliding-window inference under run config ``cfg`` (``None``: whole images at once).

        A class method so that a protocol sentence can say how images were predicted from the config alone.
        """
        return cfg.data.crop

    def inference_roi(self) -> int | None:
        """Window size for sliding-window inference of this method (``None``: whole image at once)."""
        return type(self).inference_window(self.cfg)

    # ---- several processes (torchrun) -----------------------------------------------------
    def distribute(self, info: DistInfo | None) -> None:
        """Wrap every network with trainable weights in DistributedDataParallel for the process group
        ``info`` (rank 0's weights are broadcast to every rank now); ``None`` or a single plain process
        drops the wrappers. Called by :func:`diffseg_core.train.fit` before and after training.

        ``self.nets`` always holds the plain networks, so checkpoints, :meth:`predict` and anything that
        reads a network's attributes are the same with one process or many; only :meth:`train_net` differs.
        """
        self._train_nets = {}
        if info is None or not info.active:
            return
        for name, net in self.nets.items():
            if any(p.requires_grad for p in net.parameters()):
                self._train_nets[name] = wrap(net, self.device)

    def train_net(self, name: str) -> nn.Module:
        """``self.nets[name]`` as a training step calls it when it updates its weights: the DDP wrapper under
        ``torchrun`` (gradients averaged across ranks in ``backward``), the network itself otherwise."""
        wrapped = getattr(self, "_train_nets", {}).get(name)
        return wrapped if wrapped is not None else self.nets[name]

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
