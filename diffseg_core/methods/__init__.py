"""Registry of segmentation methods. Each plugs into the single training loop (:mod:`diffseg_core.train`).

A method is a subclass of :class:`~diffseg_core.methods.base.SegMethod`; it is looked up by name so the
CLI, the notebooks and the evaluation code never import a method directly.
"""
from __future__ import annotations

import importlib

from .base import SegMethod

_REGISTRY: dict[str, str] = {
    "unet": "diffseg_core.methods.unet:UNetMethod",
    "cdal": "diffseg_core.cdal:CDALMethod",
    "textdiff": "diffseg_core.textdiff:TextDiffMethod",
}


def get_method_class(name: str) -> type[SegMethod]:
    """Return the :class:`SegMethod` subclass registered under ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    module, _, attr = _REGISTRY[name].partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"method {name!r} is registered as {_REGISTRY[name]} but could not be imported: {exc}") from exc


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


__all__ = ["SegMethod", "get_method_class", "available_methods"]
