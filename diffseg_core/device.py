"""Device choice and seeding, shared by the CLI, the training loop and every notebook.

No device string is written anywhere else in the project: everything asks :func:`pick_device`.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def accelerator_available() -> bool:
    """True when PyTorch sees a GPU-like accelerator (CUDA, ROCm, XPU, MPS)."""
    acc = getattr(torch, "accelerator", None)
    if acc is not None and hasattr(acc, "is_available"):
        return bool(acc.is_available())
    return torch.cuda.is_available()


def pick_device(preference: str | torch.device | None = "auto") -> torch.device:
    """Return the device to compute on.

    ``preference`` is ``"auto"``/``None`` (the accelerator when one is present, else the CPU),
    ``"cpu"``, or anything :class:`torch.device` accepts. The environment variable
    ``DIFFSEG_DEVICE`` overrides ``"auto"``.
    """
    if isinstance(preference, torch.device):
        return preference
    if preference in (None, "auto"):
        preference = os.environ.get("DIFFSEG_DEVICE", "auto")
    if preference != "auto":
        return torch.device(preference)
    if accelerator_available():
        acc = getattr(torch, "accelerator", None)
        if acc is not None and hasattr(acc, "current_accelerator"):
            return torch.device(acc.current_accelerator())
        return torch.device(torch.cuda.current_device())
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def describe_device(device: torch.device) -> str:
    """Human-readable device name, e.g. ``'cpu (2 threads)'`` or the GPU model."""
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    try:
        props = torch.cuda.get_device_properties(device)
        return f"{device.type}:{device.index or 0} {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    except Exception:  # pragma: no cover - non-CUDA accelerators
        return str(device)
