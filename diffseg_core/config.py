"""One configuration system for every method, dataset and preset: dataclasses and preset tables.

This module is a leaf: it imports nothing from the methods, the data layer or the papers' packages.
A run is described by a :class:`RunConfig` (data, training loop, method-specific model options). It is
built by :func:`diffseg_core.methods.get_config` (beside the method registry) from three names:

* ``preset``: ``smoke`` (seconds, for tests), ``cpu`` (minutes on 2 CPU cores), ``gpu`` (one GPU, under
  an hour per notebook), ``paper`` (the papers' hyper-parameters) or ``auto`` (``gpu`` when an accelerator
  is present, else ``cpu``);
* ``dataset``: ``monuseg``, ``cxr``, ``hippocampus``, ``qata`` or ``synthetic`` (the offline default);
* ``method``: ``unet``, ``cdal`` or ``textdiff``.

The same config is printed at the top of every run and saved in every checkpoint, so a result can
always be traced back to the exact settings that produced it.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .device import accelerator_available

PRESETS: tuple[str, ...] = ("smoke", "cpu", "gpu", "paper")


def resolve_preset(preset: str | None = None) -> str:
    """Map ``auto``/``None`` (or ``$DIFFSEG_PRESET``) to a concrete preset name.

    >>> resolve_preset("smoke")
    'smoke'
    """
    if preset in (None, ""):
        preset = os.environ.get("DIFFSEG_PRESET", "auto") or "auto"
    if preset == "auto":
        return "gpu" if accelerator_available() else "cpu"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} or 'auto'")
    return preset


@dataclass
class DataConfig:
    """How images are read, resized, cropped and batched.

    Images are resized to ``working_size`` x ``working_size`` (``None`` keeps the native size, e.g. the
    hippocampus slices) and metrics are computed at that working resolution. Training uses random
    ``crop`` x ``crop`` patches; inference tiles images larger than ``crop`` with a sliding window
    (``overlap`` between windows). ``augment`` names the training augmentation policy (see
    :data:`AUGMENT_POLICIES`); ``"official"`` is the dataset's official pipeline, resolved per dataset by
    :func:`resolve_augment` when a run config is built. ``True``/``False`` (old run configs) mean ``"basic"``/``"none"``.
    """

    working_size: int | None = 256
    crop: int = 64
    batch_size: int = 8
    augment: str = "official"
    overlap: float = 0.25
    max_train_cases: int | None = None
    max_eval_cases: int | None = None
    #: what to segment where a dataset offers a choice (``cxr``: ``"lung"`` or ``"lesion"``); ``None``: the default
    target: str | None = None
    synthetic_cases: int = 24
    synthetic_size: int = 256
    hippocampus_max_volumes: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.augment, bool):  # run configs written before augmentation policies had names
            self.augment = "basic" if self.augment else "none"
        if self.augment != "official" and self.augment not in AUGMENT_POLICIES:
            raise ValueError(f"unknown augmentation policy {self.augment!r}; choose 'official' or one of "
                             f"{', '.join(AUGMENT_POLICIES)}")


#: training augmentation policies (``DataConfig.augment``), built with MONAI in :mod:`diffseg_core.data.batches`
AUGMENT_POLICIES: dict[str, str] = {
    "none": "no augmentation",
    "basic": "flips, 90-degree rotations, mild intensity jitter for RGB",
    "affine": "random affine: rotation +-22 deg, zoom 0.75-1.25, no flips",
    "flip-affine-jitter": "flips, random affine (rotation +-22 deg, zoom 0.75-1.25), colour jitter "
                          "(brightness/contrast/saturation 0.4, hue 0.1)",
}

#: ``augment="official"`` per dataset: the official cDAL/SegDiff train pipelines (MoNuSeg: flips, affine and colour
#: jitter; CXR: affine only, flips commented out; Hippocampus: crops only). QaTa (chest X-rays, no cDAL pipeline)
#: follows CXR; the synthetic stand-ins keep the generic "basic" policy.
OFFICIAL_AUGMENT: dict[str, str] = {"monuseg": "flip-affine-jitter", "cxr": "affine", "qata": "affine",
                                    "hippocampus": "none", "synthetic": "basic"}


def resolve_augment(policy: str | bool, dataset: str) -> str:
    """The concrete augmentation policy: ``"official"`` becomes the dataset's (:data:`OFFICIAL_AUGMENT`).

    >>> resolve_augment("official", "cxr"), resolve_augment("none", "cxr")
    ('affine', 'none')
    """
    policy = DataConfig(augment=policy).augment  # validates, maps old booleans
    return OFFICIAL_AUGMENT.get(dataset, "basic") if policy == "official" else policy


@dataclass
class TrainConfig:
    """The single training loop's settings (see :mod:`diffseg_core.train`).

    Learning rates are not here: each method owns its optimisers and reads its rates from its own model
    config (cDAL ``lr_g``/``lr_d``, TextDiff ``lr``, U-Net ``lr``).
    """

    steps: int = 1000
    val_every: int = 100
    log_every: int = 10
    max_minutes: float | None = None


@dataclass
class RunConfig:
    """Everything that defines a run. ``model`` holds the method's own dataclass as a dict."""

    method: str
    dataset: str
    preset: str
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.augment == "official":  # a run config always names the concrete policy it trains with
            self.data = replace(self.data, augment=resolve_augment("official", self.dataset))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """Rebuild a config saved by :meth:`to_dict`; a key this version does not know raises :class:`ConfigError`.

        Unknown keys are refused rather than dropped: they come from a newer version of diffseg (or a
        hand edit), and silently ignoring a setting would train or evaluate something else than recorded.
        """
        d = dict(d)
        unknown = [k for k in d if k not in _names(cls)]
        for section, sub in (("data", DataConfig), ("train", TrainConfig)):
            unknown += [f"{section}.{k}" for k in dict(d.get(section) or {}) if k not in _names(sub)]
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; this config was probably written by a newer "
                              "version of diffseg: upgrade diffseg (pip install -U -e . in its checkout), or remove "
                              "these keys to run it with this version")
        missing = [k for k in ("method", "dataset", "preset") if k not in d]
        if missing:
            raise ConfigError(f"missing setting(s) {', '.join(missing)}; this is not a run config written by diffseg")
        d["data"] = DataConfig(**dict(d.get("data") or {}))
        d["train"] = TrainConfig(**dict(d.get("train") or {}))
        return cls(**d)

    def summary(self) -> str:
        """A short multi-line description printed at the top of every run."""
        lines = [f"method={self.method} dataset={self.dataset} preset={self.preset} seed={self.seed}"]
        lines.append("data:  " + ", ".join(f"{k}={v}" for k, v in asdict(self.data).items()))
        lines.append("train: " + ", ".join(f"{k}={v}" for k, v in asdict(self.train).items()))
        if self.model:
            lines.append("model: " + ", ".join(f"{k}={v}" for k, v in self.model.items()))
        return "\n".join(lines)


class ConfigError(ValueError):
    """A saved config cannot be used by this version (unknown or missing settings)."""


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


# --------------------------------------------------------------------------------------------
# Data presets per dataset: the official pipelines at ``paper`` (book/decisions.md, D20) and smaller
# settings for small CPU scale. MoNuSeg keeps the 512 working scale so nuclei stay 10-15 px wide, and
# trains on crops.
# --------------------------------------------------------------------------------------------
DATA_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "monuseg": {
        "smoke": dict(working_size=128, crop=32, batch_size=4, max_train_cases=2, max_eval_cases=1, overlap=0.0),
        "cpu": dict(working_size=512, crop=64, batch_size=8, overlap=0.0),
        "gpu": dict(working_size=512, crop=256, batch_size=8, overlap=0.0),
        "paper": dict(working_size=512, crop=256, batch_size=4, overlap=0.0),
    },
    "cxr": {
        "smoke": dict(working_size=64, crop=64, batch_size=4, max_train_cases=4, max_eval_cases=2),
        "cpu": dict(working_size=64, crop=64, batch_size=8),  # chapter 07: lungs at 64 px, a quarter of the cost of 128
        "gpu": dict(working_size=256, crop=256, batch_size=8),
        "paper": dict(working_size=256, crop=256, batch_size=3),
    },
    # Hippocampus: small rotations and zooms ("affine"), no flips: flips and 90-degree rotations of an axial slice
    # would move the anterior part (larger index on the second axis in every stored volume) to the posterior side.
    # The official pipeline has no augmentation ("paper" keeps none); on the 26 training volumes of a small subset
    # "affine" raised the validation Dice (the book's decisions page, "Hippocampus augmentation").
    "hippocampus": {
        "smoke": dict(working_size=None, crop=32, batch_size=8, hippocampus_max_volumes=4, max_eval_cases=40,
                      augment="affine"),
        "cpu": dict(working_size=None, crop=32, batch_size=32, augment="affine"),
        "gpu": dict(working_size=None, crop=32, batch_size=64, augment="affine"),
        "paper": dict(working_size=None, crop=32, batch_size=128, overlap=0.75, augment=False),
    },
    "qata": {
        "smoke": dict(working_size=64, crop=64, batch_size=4, max_train_cases=4, max_eval_cases=2),
        "cpu": dict(working_size=128, crop=128, batch_size=8, max_train_cases=300, max_eval_cases=200),
        "gpu": dict(working_size=256, crop=256, batch_size=8),
        "paper": dict(working_size=256, crop=256, batch_size=8),
    },
    "synthetic": {
        "smoke": dict(working_size=64, crop=32, batch_size=4, synthetic_cases=8, synthetic_size=64, overlap=0.0),
        "cpu": dict(working_size=256, crop=64, batch_size=8, synthetic_cases=24, synthetic_size=256, overlap=0.0),
        "gpu": dict(working_size=256, crop=128, batch_size=8, synthetic_cases=64, synthetic_size=256, overlap=0.0),
        "paper": dict(working_size=512, crop=256, batch_size=4, synthetic_cases=64, synthetic_size=512, overlap=0.0),
    },
}

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(steps=6, val_every=3, log_every=1, max_minutes=1.0),
    "cpu": dict(steps=1500, val_every=100, log_every=10, max_minutes=8.0),
    "gpu": dict(steps=20000, val_every=500, log_every=50, max_minutes=50.0),
    "paper": dict(steps=84000, val_every=700, log_every=100, max_minutes=None),
}


#: every dataset name the loaders and presets know (``synthetic`` is the offline default)
DATASETS: tuple[str, ...] = tuple(DATA_PRESETS)

#: ``DataConfig.target`` choices of the datasets that offer one (the first is the default, which
#: :func:`diffseg_core.methods.get_config` writes into every run config of that dataset)
TARGETS: dict[str, tuple[str, ...]] = {"cxr": ("lung", "lesion")}


def data_config(dataset: str, preset: str) -> DataConfig:
    """The :class:`DataConfig` of a dataset at a (resolved) preset."""
    if dataset not in DATA_PRESETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    cfg = DataConfig(**DATA_PRESETS[dataset][resolve_preset(preset)])
    return replace(cfg, augment=resolve_augment(cfg.augment, dataset))


def check_model_options(model_cls: type, names: Any, method: str) -> None:
    """Raise a ``ValueError`` naming every key of ``names`` that is not a field of ``model_cls``."""
    known = [f.name for f in fields(model_cls)]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"{method}: unknown option(s) {unknown}; known: {known}")


def model_config_from_dict(model_cls: type, d: dict[str, Any], method: str) -> Any:
    """Rebuild a method's model dataclass from ``RunConfig.model`` (JSON lists back to tuples; unknown keys raise)."""
    check_model_options(model_cls, d, method)
    return model_cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def override(cfg: RunConfig, **changes: Any) -> RunConfig:
    """Return a copy of ``cfg`` with dotted changes, e.g. ``override(cfg, **{"train.steps": 10})``."""
    cfg = RunConfig.from_dict(cfg.to_dict())
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if not name:
            setattr(cfg, section, value)
        elif section == "model":
            cfg.model[name] = value
        else:
            sub = getattr(cfg, section)
            if name not in {f.name for f in fields(sub)}:
                raise ValueError(f"unknown setting {key!r}")
            if key == "data.augment":
                value = resolve_augment(value, cfg.dataset)
            setattr(cfg, section, replace(sub, **{name: value}))
    return cfg
