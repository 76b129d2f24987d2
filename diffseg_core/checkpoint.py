"""Atomic, resumable checkpoints.

A checkpoint is written to a temporary file in the same folder and then renamed over the target
(``os.replace`` is atomic on POSIX and Windows), so an interrupted write never leaves a truncated file:
the previous checkpoint stays intact until the new one is complete.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: str | Path, writer) -> Path:
    """Call ``writer(file_object)`` on a temp file next to ``path``, then atomically move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` ``payload`` to ``path`` atomically."""
    return atomic_write_bytes(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with a clear error when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (was the run trained into this folder?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # corrupt or foreign file
        raise RuntimeError(f"checkpoint {path} could not be read ({exc}); delete it and retrain or resume") from exc


def write_json(obj: Any, path: str | Path) -> Path:
    """Write JSON atomically (numbers from numpy/torch are converted to floats)."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_jsonable)
    return atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
