"""The method registry, and :func:`get_config`, which joins a method's options to the shared presets.

A method is a subclass of :class:`~diffseg_core.methods.base.SegMethod`, registered here by name (the
U-Net baseline lives in this package; cDAL, the SegDiff-style baseline and TextDiff in their own packages), so the
CLI, the notebooks and the evaluation code never import a method directly.
"""
from __future__ import annotations

import importlib
from dataclasses import asdict, replace
from typing import Any

from ..config import TARGETS, TRAIN_PRESETS, RunConfig, TrainConfig, check_model_options, data_config, resolve_preset
from .base import MethodOption, SegMethod

#: name -> "module:class" (imported on first use, so importing the registry stays cheap)
REGISTRY: dict[str, str] = {
    "unet": "diffseg_core.methods.unet:UNetMethod",
    "cdal": "diffseg_core.cdal.method:CDALMethod",
    "segdiff": "diffseg_core.segdiff.method:SegDiffMethod",
    "textdiff": "diffseg_core.textdiff.method:TextDiffMethod",
}
METHODS: tuple[str, ...] = tuple(REGISTRY)


def get_method_class(name: str) -> type[SegMethod]:
    """Return the :class:`SegMethod` subclass registered under ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    module, _, attr = REGISTRY[name].partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"method {name!r} is registered as {REGISTRY[name]} but could not be imported: {exc}") from exc


def get_config(method: str = "unet", dataset: str = "synthetic", preset: str | None = "auto", seed: int = 0,
               **model_overrides: Any) -> RunConfig:
    """Build the full :class:`~diffseg_core.config.RunConfig` for ``method`` on ``dataset`` at ``preset``.

    The method contributes its model dataclass (``default_config``); ``model_overrides`` replace fields of
    it (unknown names raise); then the method adjusts the dataset's data settings and the loop's settings
    from the **final** model config (``data_overrides``/``train_overrides``), so a user's override (e.g. a
    different ``image_size`` or ``train_images``) reaches the crop, the working size and the step count.
    """
    preset = resolve_preset(preset)
    cls = get_method_class(method)
    model = cls.default_config(preset, dataset)
    if model_overrides:
        check_model_options(type(model), model_overrides, method)
        model = replace(model, **model_overrides)
    data = replace(data_config(dataset, preset), **cls.data_overrides(preset, dataset, model))
    if data.target is None and dataset in TARGETS:  # the run config names the target (cxr: lung unless told)
        data = replace(data, target=TARGETS[dataset][0])
    train = replace(TrainConfig(**TRAIN_PRESETS[preset]), **cls.train_overrides(preset, dataset, model))
    return RunConfig(method=method, dataset=dataset, preset=preset, seed=seed, data=data, train=train,
                     model=asdict(model))


__all__ = ["SegMethod", "MethodOption", "REGISTRY", "METHODS", "get_method_class", "get_config"]
