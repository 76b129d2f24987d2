"""Training on several processes with PyTorch's own engine: ``torchrun`` and DistributedDataParallel (DDP).

Data parallelism in one paragraph: N processes (ranks) each hold a full copy of the networks, draw their
own batch of B samples, compute the gradient of their own batch-mean loss, g_r, and **average** the
gradients before every optimiser step, g = (1/N) sum_r g_r (chapter 15, Eq. ch15-allreduce). Each rank then
takes the same step from the same weights, so the copies stay identical, and one step has used a global
batch of N x B samples. DDP performs the average as an all-reduce of gradient buckets that overlaps the
backward pass (Li et al., VLDB 2020).

This module holds the few pieces the one training loop (:func:`diffseg_core.train.fit`) needs. Every
function is a no-op, or the identity, in a plain single process, so the loop has one code path:

* :func:`session` starts the process group when the program was launched by ``torchrun`` (which sets
  ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), with the backend chosen from
  the device (:func:`backend_for`, from the pure :func:`choose_backend`: ``nccl`` for GPUs, ``gloo`` for
  the CPU), and ends it afterwards;
* :func:`current` says which rank of how many this process is (:class:`DistInfo`);
* :func:`place` puts each rank on its own accelerator (``LOCAL_RANK``; the pure :func:`rank_device`), the
  CPU stays the CPU;
* :func:`wrap` / :func:`unwrap`: a network in DDP (:class:`DistributedNet`) and back;
* :func:`shard`: a rank's share of a list (training cases, evaluation cases);
* collectives on Python values: :func:`reduce_step` (mean losses, "any rank wants to stop"),
  :func:`any_rank`, :func:`all_gather_objects`, :func:`broadcast_object`, :func:`on_main` (rank 0 does
  something, e.g. writes the run folder; the others get its result or its exception).

No process but rank 0 writes into a run folder; the others read only what rank 0 wrote (book/decisions.md
records no paper choice here: neither paper trains on several devices in its published code paths).
"""
from __future__ import annotations

import os
import pickle
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .device import pick_device

__all__ = ["DistInfo", "SINGLE", "DistributedNet", "launched", "backend_for", "current", "session", "place",
           "wrap", "unwrap", "shard", "reduce_step", "any_rank", "all_gather_objects", "broadcast_object",
           "on_main", "barrier", "env_rank", "accelerator_count", "choose_backend", "rank_device", "torchrun_command", "TIMEOUT_VAR"]

T = TypeVar("T")
#: environment variable: minutes a rank waits in a collective (e.g. while rank 0 pre-trains TextDiff's backbone)
TIMEOUT_VAR = "DIFFSEG_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 120.0


@dataclass(frozen=True)
class DistInfo:
    """Which process this is: ``rank`` of ``world_size`` (``local_rank`` on its machine), ``backend`` of the
    process group (``None``: a plain single process, no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        """True inside a process group (launched by ``torchrun``, even with one process)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that prints, shows progress bars and writes the run folder."""
        return self.rank == 0

    def describe(self) -> str:
        return (f"{self.world_size} process(es), rank {self.rank}, backend {self.backend}" if self.active
                else "1 process (no process group)")


#: a plain single process
SINGLE = DistInfo()


def launched() -> bool:
    """True when ``torchrun`` (or another launcher with the same variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def env_rank() -> int:
    """The rank the launcher gave this process (0 without a launcher); readable before and after :func:`session`."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def accelerator_count() -> int:
    """How many accelerators (GPUs) this machine has: at most one process per accelerator (0 without one)."""
    from .device import accelerator_available

    if not accelerator_available():
        return 0
    acc = getattr(torch, "accelerator", None)
    if acc is not None and hasattr(acc, "device_count"):
        return int(acc.device_count())
    return int(torch.cuda.device_count())  # pragma: no cover - torch < 2.6


def torchrun_command(nproc: int, args: Sequence[str], python: str | None = None) -> list[str]:
    """The command that runs ``python -m diffseg_core ARGS`` on ``nproc`` processes of this machine.

    ``torchrun --standalone --nproc_per_node N -m diffseg_core ARGS`` (spelt ``python -m torch.distributed.run``
    so that it is this Python's torchrun; ``--standalone`` picks a free port, so two runs on one machine do
    not collide); ``nproc == 1`` gives the plain single-process command. Several machines:
    chapter 15 gives the ``--nnodes``/``--rdzv_endpoint`` form.
    """
    python = python or sys.executable
    if nproc < 1:
        raise ValueError(f"nproc {nproc}: at least one process")
    if nproc == 1:
        return [python, "-m", "diffseg_core", *args]
    return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "diffseg_core", *args]


def choose_backend(device_type: str, nccl_available: bool = True) -> str:
    """The communication backend for a device type (a pure function: no hardware is queried).

    PyTorch's own default for the type (``torch.distributed.Backend.default_device_backend_map``): ``gloo``
    for ``cpu``, ``nccl`` for ``cuda`` (NVIDIA, and AMD GPUs through ROCm's RCCL under the same name), ``xccl``
    for Intel ``xpu``. A build without NCCL (``nccl_available=False``, e.g. PyTorch on Windows) falls back to
    ``gloo``, which also all-reduces GPU tensors, more slowly.
    """
    table = getattr(dist.Backend, "default_device_backend_map", {})
    backend = table.get(device_type, "gloo" if device_type == "cpu" else "nccl")
    return "gloo" if backend == "nccl" and not nccl_available else backend


def backend_for(device: torch.device) -> str:
    """:func:`choose_backend` for ``device`` on this PyTorch build: ``gloo`` on the CPU, ``nccl`` on GPUs."""
    return choose_backend(device.type, dist.is_available() and dist.is_nccl_available())


def rank_device(device_type: str, local_rank: int, count: int | None) -> torch.device:
    """The device of the process with ``local_rank`` on its machine (a pure function).

    The CPU is shared by every process (``cpu``); on accelerators each process takes its own,
    ``device_type:local_rank``, and a machine with ``count`` of them takes at most ``count`` processes
    (``ValueError`` naming the launcher's option otherwise).
    """
    if device_type == "cpu":
        return torch.device("cpu")
    if local_rank < 0:
        raise ValueError(f"LOCAL_RANK {local_rank}: must be 0 or more")
    if count is not None and local_rank >= count:
        raise ValueError(f"LOCAL_RANK {local_rank}: this machine has {count} {device_type} device(s); start at most "
                         f"{count} processes per machine (torchrun --nproc_per_node {count})")
    return torch.device(device_type, local_rank)


def current() -> DistInfo:
    """This process's :class:`DistInfo` (``SINGLE`` when no process group is running)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")), backend=str(dist.get_backend()))


def place(device: torch.device, info: DistInfo | None = None) -> torch.device:
    """The device this rank computes on: the accelerator numbered ``LOCAL_RANK`` (made the current one) in a
    process group, ``device`` unchanged on the CPU or in a single process."""
    info = current() if info is None else info
    if device.type == "cpu" or (not info.active and not launched()):
        return device
    index = info.local_rank if info.active else int(os.environ.get("LOCAL_RANK", "0"))
    acc = getattr(torch, "accelerator", None)
    if acc is not None and hasattr(acc, "set_device_index"):
        chosen = rank_device(device.type, index, acc.device_count() if hasattr(acc, "device_count") else None)
        acc.set_device_index(chosen.index)
    else:  # pragma: no cover - torch < 2.6
        chosen = rank_device(device.type, index, torch.cuda.device_count())
        torch.cuda.set_device(chosen.index)
    return chosen


@contextmanager
def session(device: torch.device | None = None) -> Iterator[DistInfo]:
    """``with session() as info:`` runs the block inside a process group when launched by ``torchrun``.

    The group is started here (backend from :func:`backend_for` of this rank's device) unless one is
    already running, and ended on exit only if it was started here. In a plain process nothing happens
    and ``info`` is :data:`SINGLE`. Collectives wait at most ``$DIFFSEG_DIST_TIMEOUT_MIN`` minutes (default 120).
    """
    started = False
    if launched() and dist.is_available() and not dist.is_initialized():
        device = place(device if device is not None else pick_device())
        minutes = float(os.environ.get(TIMEOUT_VAR, DEFAULT_TIMEOUT_MIN))
        dist.init_process_group(backend=backend_for(device), timeout=timedelta(minutes=minutes))
        started = True
    try:
        yield current()
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (no-op in a single process)."""
    if current().active:
        dist.barrier()


# ---------------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------------
class DistributedNet(DistributedDataParallel):
    """DDP whose attribute reads reach the wrapped network (``G.nz``, ``D.stage_for_scale``).

    Calling it (``forward``) runs the wrapped network and registers the pass, so that ``backward`` averages
    the gradients of its weights across ranks; nothing else differs from
    :class:`torch.nn.parallel.DistributedDataParallel`.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("module")
            if inner is None:
                raise
            return getattr(inner, name)


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` in DistributedDataParallel (weights broadcast from rank 0 now; gradients averaged in every backward).

    Calling the result runs ``net`` and registers it for gradient averaging; reading an attribute
    (``wrapped.nz``) reaches ``net``. A method that only *reads* a network (no gradient to its weights, e.g.
    cDAL's attention map from D) calls ``net`` itself: a forward pass outside the wrapper is not averaged.
    """
    ids = [device.index if device.index is not None else 0] if device.type != "cpu" else None
    return DistributedNet(net, device_ids=ids)


def unwrap(net: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (``net.module``), or ``net`` itself."""
    return net.module if isinstance(net, DistributedDataParallel) else net


# ---------------------------------------------------------------------------------------------------
# Data and values
# ---------------------------------------------------------------------------------------------------
def shard(items: Sequence[T], info: DistInfo | None = None) -> list[T]:
    """Rank r's share of ``items``: ``items[r::N]`` (every item on exactly one rank; sizes differ by at most one).

    With fewer items than ranks, every rank gets all of them (a rank cannot train on nothing); a single
    process gets everything, in order.
    """
    info = current() if info is None else info
    items = list(items)
    if info.world_size <= 1 or len(items) < info.world_size:
        return items
    return items[info.rank::info.world_size]


def _comm_device() -> torch.device:
    if str(dist.get_backend()) == "gloo":
        return torch.device("cpu")
    return place(pick_device())


def reduce_step(logs: dict[str, float], stop: bool, info: DistInfo | None = None) -> tuple[dict[str, float], bool]:
    """The mean of each logged float over ranks, and whether **any** rank asks to ``stop``, in one all-reduce.

    Every rank gets the same answer, so every rank logs the same losses, sees the same NaN and stops on
    the same step. In a single process: ``(logs, stop)`` unchanged.
    """
    info = current() if info is None else info
    if not info.active:
        return logs, stop
    keys = list(logs)
    values = torch.tensor([float(logs[k]) for k in keys] + [1.0 if stop else 0.0], dtype=torch.float64,
                          device=_comm_device())
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    values = values.cpu().tolist()
    return {k: v / info.world_size for k, v in zip(keys, values)}, values[-1] > 0


def any_rank(flag: bool, info: DistInfo | None = None) -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    return reduce_step({}, flag, info)[1]


def all_gather_objects(obj: T, info: DistInfo | None = None) -> list[T]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled Python objects); ``[obj]`` in a single process."""
    info = current() if info is None else info
    if not info.active:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, info: DistInfo | None = None) -> T:
    """Rank 0's ``obj`` on every rank (the others' ``obj`` is ignored); ``obj`` in a single process."""
    info = current() if info is None else info
    if not info.active:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _sendable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # an exception that does not pickle travels as its message
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` on rank 0 only; every rank returns its result or raises its exception.

    This is how the loop writes the run folder (lock, config, checkpoints) from one process while the
    others wait: a refusal or a full disk on rank 0 stops every rank with the same message, instead of
    leaving them waiting in the next collective. In a single process it is just ``fn(*args, **kwargs)``.
    """
    info = current()
    if not info.active:
        return fn(*args, **kwargs)
    result: Any = None
    error: BaseException | None = None
    if info.is_main:
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - forwarded to every rank, then re-raised
            error = exc
    sent = broadcast_object((None, _sendable(error)) if error is not None else (result, None), info)
    if error is not None:
        raise error
    if sent[1] is not None:
        raise sent[1]
    return result if info.is_main else sent[0]
