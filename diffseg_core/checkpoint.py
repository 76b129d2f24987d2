"""Atomic, resumable checkpoints, and the lock that keeps two runs out of one folder.

A checkpoint is written to a temporary file in the same folder and then renamed over the target
(``os.replace`` is atomic on POSIX and Windows), so an interrupted write never leaves a truncated file:
the previous checkpoint stays intact until the new one is complete. A write that fails (a full disk,
``ENOSPC``; a quota, ``EDQUOT``; any other ``OSError``) removes its temporary file and raises
:class:`CheckpointWriteError`, whose message names the file and says that the previous version is intact.

:class:`RunLock` is a lock file (``.lock``, holding the owner's pid, host and start time) in a run folder:
a second run into the same folder refuses with :class:`RunLocked`; a lock left by a process that no longer
exists (killed, machine rebooted) is recognised as stale and taken over.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "CheckpointWriteError", "RunLocked", "RunLock", "atomic_write_bytes", "save_checkpoint",
           "load_checkpoint", "write_json", "LOCK_FILE"]

LOCK_FILE = ".lock"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or does not belong to the run. The message names the file."""


class CheckpointWriteError(OSError):
    """Writing a file failed (e.g. the disk is full); the previous version of the file is intact."""


class RunLocked(RuntimeError):
    """Another live process is writing into the run folder (see :class:`RunLock`)."""


def atomic_write_bytes(path: str | Path, writer) -> Path:
    """Call ``writer(file_object)`` on a temp file next to ``path``, then atomically move it into place.

    On any failure the temp file is removed and ``path`` is left as it was; an ``OSError`` (disk full,
    quota, read-only file system) becomes a :class:`CheckpointWriteError` that names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, CheckpointWriteError):
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            what = "the disk is full" if full else f"the write failed ({exc.strerror or exc})"
            before = "the previous version of it is intact" if path.exists() else "nothing was written"
            raise CheckpointWriteError(
                exc.errno, f"{path}: could not be saved because {what}; {before}. Free some space (or fix the "
                           f"folder's permissions) and run again; a training run continues with --resume") from exc
        raise
    return path


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` ``payload`` to ``path`` atomically."""
    return atomic_write_bytes(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with a clear error when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (was the run trained into this folder?)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint is empty (0 bytes) and cannot be read; use the run's other "
                              "checkpoint (evaluate --checkpoint best|last) or train again")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # truncated zip, pickle garbage, foreign file
        raise CheckpointError(f"{path}: checkpoint is truncated or corrupt and cannot be read; use the run's other "
                              "checkpoint (evaluate --checkpoint best|last) or train again") from exc


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


# ---------------------------------------------------------------------------------------------------
# One writer per run folder
# ---------------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (a zombie counts as alive until it is reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``with RunLock(folder):`` holds ``folder/.lock`` for this process; the folder is created if needed.

    The lock file holds ``{"pid", "host", "started"}``. A lock whose process is alive on this host raises
    :class:`RunLocked` naming the pid; a lock whose process is gone (or whose file is unreadable) is
    stale and is taken over with a notice. A lock from another host cannot be checked and counts as
    live (the message says how to remove it when no run is going). The file is removed on exit.
    """

    def __init__(self, folder: str | Path, what: str = "training run") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self.stale_notice = ""

    def _owner(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _refuse(self, owner: dict[str, Any]) -> None:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("started", 0))))
        raise RunLocked(f"{self.folder}: another {self.what} is writing into this folder (pid {owner.get('pid')} on "
                        f"{owner.get('host')}, started {started}); wait for it to finish or choose another --out. If no "
                        f"such run is going, delete {self.path} and try again")

    def check(self) -> None:
        """Raise :class:`RunLocked` when a live process holds the lock (nothing is created or removed)."""
        if self.path.is_file():
            owner = self._owner()
            if owner is not None and (owner.get("host") != socket.gethostname() or _pid_alive(int(owner.get("pid", -1)))):
                self._refuse(owner)

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and (owner.get("host") != me["host"] or _pid_alive(int(owner.get("pid", -1)))):
                    self._refuse(owner)
                self.stale_notice = (f"notice: removed a stale lock {self.path} (pid {owner.get('pid')} no longer runs)"
                                     if owner else f"notice: removed an unreadable lock file {self.path}")
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            return self
        owner = self._owner() or {}
        self._refuse(owner)
        return self  # pragma: no cover - _refuse raises

    def release(self) -> None:
        owner = self._owner()
        if owner is not None and owner.get("pid") == os.getpid():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
