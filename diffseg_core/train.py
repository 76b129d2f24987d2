"""The one training loop. Every method plugs in through :class:`~diffseg_core.methods.base.SegMethod`.

What the loop guarantees, whatever the method:

* a progress bar, seeded batches, the config printed at the start and saved with every checkpoint;
* validation on the **validation** split every ``cfg.train.val_every`` steps (Dice, per-image mean);
  the best checkpoint is chosen on validation, never on test (the official cDAL code chooses on test;
  we do not: book/decisions.md, D15);
* atomic checkpoints (``last.pt`` at every validation, ``best.pt`` on improvement) and ``--resume`` from
  ``last.pt``; Ctrl-C writes ``last.pt`` before stopping, so nothing is lost;
* **exact resume**: the checkpoint holds the torch, numpy and Python RNG states, and the training batches
  are drawn in segments of ``val_every`` steps, each from a generator seeded by ``(seed, segment)``, so a
  run resumed from ``last.pt`` (after a crash, a kill or Ctrl-C) draws the same batches and computes the
  same losses as an uninterrupted run; a killed run loses at most one validation interval; Ctrl-C
  finishes the current step before it saves (a second Ctrl-C stops at once, keeping the previous
  ``last.pt``), so the saved state is never that of a half-done optimiser step;
* validation before anything is written: a run folder is created only once the data, the options and
  (with ``resume``) the checkpoint, its config and its training images have been checked; a run that fails
  before its first checkpoint removes what it created; a lock file keeps a second run out of the folder;
* a NaN/inf guard that stops with a message naming the step, the loss and the last good checkpoint;
* an optional wall-clock budget (``cfg.train.max_minutes``), so methods can be compared at equal time;
* a record of the software and machine (``environment.json``: versions, git commit, device, seed);
* **several processes** with the same code path: launched by ``torchrun``, every process (rank) trains a
  DDP copy of the networks (:mod:`diffseg_core.distributed`; gradients averaged across ranks before each
  optimiser step, for every optimiser of a method) on its own shard of the training cases with its own
  seeded stream of batches (seed, segment, rank); logged losses are means over ranks, validation is split
  across ranks and gathered; only rank 0 prints, holds the lock and writes the run folder, and a checkpoint
  written by N processes resumes with any number of processes (one included).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch

from . import distributed
from .checkpoint import CheckpointError, RunLock, load_checkpoint, save_checkpoint, write_json
from .config import ConfigError, RunConfig
from .data import Case, DataError, DatasetInfo, SegDataset
from .device import describe_device, pick_device, seed_everything
from .methods import SegMethod, get_method_class
from .provenance import environment

#: files that make a folder a run folder (``train`` refuses to start a new run over them without ``--resume``)
RUN_FILES: tuple[str, ...] = ("last.pt", "best.pt", "config.json", "run.json", "history.json")
#: settings a resumed run may change (a longer run, another time budget); every other setting must match
RESUMABLE_CHANGES: tuple[str, ...] = ("train.steps", "train.max_minutes")


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite. The message names the step, the loss and the last good checkpoint."""


class RunFolderError(ValueError):
    """The run folder cannot be used: not writable, holds another run, nothing to resume, or a mismatch."""


@dataclass
class History:
    """What happened during training (saved as ``history.json`` in the run folder)."""

    steps: list[dict[str, float]] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)
    best_step: int | None = None
    best_score: float = -math.inf
    seconds: float = 0.0
    last_step: int = 0
    stopped: str = ""
    resumed_at: list[int] = field(default_factory=list)
    #: ``[[first step, number of processes], ...]``: one entry per start (fresh or resumed) of :func:`fit`
    processes: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def step_seconds(self) -> list[float]:
        """Seconds per training step between consecutive logged steps, leaving out intervals that hold a
        validation (or a restart): the pure cost of a step, for timing comparisons at a fixed number of steps."""
        val_steps = {int(v["step"]) for v in self.val}
        starts = {int(s) for s in self.resumed_at}
        out = []
        for a, b in zip(self.steps, self.steps[1:]):
            first, last = int(a["step"]), int(b["step"])
            if last <= first or any(first <= k < last for k in val_steps | starts):
                continue
            out.append((float(b["seconds"]) - float(a["seconds"])) / (last - first))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "History":
        return cls(**d)


class LoopHooks(Protocol):
    """What the training loop calls on each hook object it is given (a hook may define any subset).

    * ``on_step(step, logs, method)`` every ``log_every`` steps with the step's float losses;
    * ``on_validate(step, entry, method)`` after each validation (``entry``: step, seconds, dice, iou, ...);
    * ``on_end(history, method)`` once, with the method holding its best-on-validation weights.
    """

    def on_step(self, step: int, logs: dict[str, float], method: SegMethod) -> None: ...

    def on_validate(self, step: int, entry: dict[str, float], method: SegMethod) -> None: ...

    def on_end(self, history: History, method: SegMethod) -> None: ...


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def batch_seed(seed: int, segment: int, rank: int = 0) -> int:
    """The seed of the training batches of segment ``segment`` (steps ``segment * val_every + 1 ...``) on
    process ``rank`` (rank 0, and a single process, use ``(seed, segment)``; rank r > 0 ``(seed, segment, r)``)."""
    entropy = [int(seed) % 2**32, int(segment)] + ([int(rank)] if rank else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _rank_rng_seed(seed: int, rank: int, step: int) -> int:
    """The seed of rank ``rank``'s torch/NumPy/Python generators when it starts (or resumes) at ``step``."""
    return int(np.random.SeedSequence([int(seed) % 2**32, int(step), int(rank), 1]).generate_state(1)[0])


def data_fingerprint(cases: Sequence[Case]) -> str:
    """A SHA-256 of the cases' ids, images and labels (what a resumed run checks it trains on)."""
    h = hashlib.sha256()
    for c in cases:
        h.update(c.id.encode() + b"\0" + str(c.image.shape).encode())
        h.update(np.ascontiguousarray(c.image, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(c.label, dtype=np.int64).tobytes())
    return h.hexdigest()


def training_data_record(chosen: Sequence[Case], split: Sequence[Case]) -> dict[str, Any]:
    """What a checkpoint records about its training data: the chosen ids and a fingerprint of the whole
    training split (TextDiff pre-trains its backbone on all of it, not only on the chosen images)."""
    return {"train_ids": [c.id for c in chosen], "fingerprint": data_fingerprint(split)}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_differences(saved: RunConfig, now: RunConfig, ignore: Sequence[str] = ()) -> list[str]:
    """``["seed: 0 (saved) vs 1 (now)", ...]`` for every setting that differs (``ignore``: dotted keys to skip)."""
    a, b = _flatten(saved.to_dict()), _flatten(now.to_dict())
    return [f"{k}: {a.get(k)!r} (saved) vs {b.get(k)!r} (now)" for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k) != b.get(k)]


def load_run_config(path: str | Path) -> RunConfig:
    """Read a run's ``config.json``; :class:`~diffseg_core.config.ConfigError` naming the file when it cannot be used."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable JSON config; restore it from the run's last.pt or best.pt (they "
                          "hold the config too) or train again") from exc
    try:
        return RunConfig.from_dict(d)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _checkpoint_config(ckpt: Any, path: Path) -> RunConfig:
    if not isinstance(ckpt, dict) or "config" not in ckpt or "method" not in ckpt:
        raise CheckpointError(f"{path}: not a diffseg training checkpoint (no config or weights in it); point at a "
                              "run folder written by train")
    try:
        return RunConfig.from_dict(ckpt["config"])
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _call_hooks(hooks: Iterable[LoopHooks], name: str, *args: Any) -> None:
    for hook in hooks:
        fn = getattr(hook, name, None)
        if fn is not None:
            fn(*args)


def fit(method: SegMethod, train_cases: Sequence[Case], val_cases: Sequence[Case], run_dir: str | Path | None = None,
        resume: bool = False, hooks: Sequence[LoopHooks] = (), progress: bool = True,
        data_record: dict[str, Any] | None = None) -> History:
    """Train ``method`` for ``cfg.train.steps`` steps (or until ``cfg.train.max_minutes``).

    Returns the :class:`History`; the method is left holding the **best-on-validation** weights.
    ``data_record`` (saved in every checkpoint, checked by :func:`check_resume`) describes the training
    data; by default the ids and :func:`data_fingerprint` of ``train_cases``.

    Inside a process group (``torchrun``; :func:`diffseg_core.distributed.current`) every rank calls this
    with the same arguments: each trains on its shard of ``train_cases`` through DDP wrappers
    (:meth:`~diffseg_core.methods.base.SegMethod.distribute`), and rank 0 alone writes ``run_dir``.
    """
    from tqdm.auto import tqdm

    from .evaluate import evaluate_cases

    cfg: RunConfig = method.cfg
    tc = cfg.train
    run_dir = Path(run_dir) if run_dir is not None else None
    last_path = run_dir / "last.pt" if run_dir else None
    best_path = run_dir / "best.pt" if run_dir else None
    history = History()
    best_state: dict[str, Any] | None = None
    info = distributed.current()  # SINGLE in a plain process: then every distributed call below is the identity
    main = info.is_main

    restored_rng = False
    if resume:
        def read_last() -> dict[str, Any]:
            if last_path is None or not last_path.is_file():
                raise RunFolderError(f"{run_dir}: no checkpoint last.pt to resume from (--resume); train into it "
                                     "without --resume, or resume the folder you meant")
            return load_checkpoint(last_path, map_location="cpu" if info.active else method.device)

        ckpt = distributed.on_main(read_last)  # rank 0 reads it, every rank gets it (no shared disk needed)
        method.load_state_dict(ckpt["method"])
        history = History.from_dict(ckpt["history"])
        _set_rng_state(ckpt["rng"])  # rank 0's random state (a single process's)
        if info.rank > 0 and len(ckpt.get("rng_ranks") or []) == info.world_size:
            _set_rng_state(ckpt["rng_ranks"][info.rank])  # same number of processes: each rank continues its own
            restored_rng = True
        history.resumed_at.append(history.last_step)
        history.stopped = ""
        if main:
            print(f"resumed from {last_path} at step {history.last_step} ({history.seconds:.0f} s already trained)")
    if info.rank > 0 and not restored_rng:  # ranks > 0 draw their own noise (cDAL's t and z), seeded by rank
        seed_everything(_rank_rng_seed(cfg.seed, info.rank, history.last_step))
    history.processes.append([history.last_step, info.world_size])
    data_record = data_record or training_data_record(train_cases, train_cases)

    def checkpoint_payload() -> dict[str, Any]:
        rng = _rng_state()
        payload = {"format": "diffseg-run/2", "config": cfg.to_dict(), "dataset_info": asdict(method.info),
                   "method": method.state_dict(), "history": history.to_dict(), "data": data_record,
                   "rng": rng, "step": history.last_step}
        if info.active:  # every rank's random state, for a resume with as many processes
            payload["rng_ranks"] = distributed.all_gather_objects(rng, info)
        return payload

    def save(payload: dict[str, Any], path: Path) -> None:
        distributed.on_main(save_checkpoint, payload, path)  # rank 0 writes; a failure stops every rank

    def save_last() -> None:
        if last_path is not None:
            save(checkpoint_payload(), last_path)

    # batches come in segments of val_every steps, each seeded by (seed, segment): a run resumed at any step
    # rebuilds its segment's stream and skips the batches already used, so it sees the batches it would have seen
    segment_len = max(1, int(tc.val_every))

    # with several processes, rank r draws from its shard of the cases, seeded by (seed, segment, r)
    shard = distributed.shard(train_cases, info)

    def batches_from(done: int) -> Iterator[dict[str, Any]]:
        segment, skip = divmod(done, segment_len)
        it = method.train_batches(shard, seed=batch_seed(cfg.seed, segment, info.rank))
        for _ in range(skip):
            next(it)
        return it

    start_step = history.last_step
    batches = batches_from(start_step)
    clock0 = time.perf_counter() - history.seconds
    budget = tc.max_minutes * 60 if tc.max_minutes else None
    bar = tqdm(total=tc.steps, initial=start_step, desc=f"train {cfg.method}", disable=not (progress and main),
               dynamic_ncols=True)
    step = start_step

    def validate() -> None:
        nonlocal best_state
        entry: dict[str, float] = {"step": step, "seconds": round(time.perf_counter() - clock0, 2)}
        if val_cases:
            scores = evaluate_cases(method, val_cases)
            entry.update(dice=scores["dice_mean"], iou=scores["iou_mean"], dice_global=scores["dice_global"])
            score = scores["dice_mean"]
        else:  # no validation split: keep the latest weights
            score = float(step)
        history.val.append(entry)
        if score > history.best_score:
            history.best_score, history.best_step = score, step
            if best_path is not None:
                save(checkpoint_payload() | {"val": entry}, best_path)
            if best_path is None or not main:  # ranks > 0 keep it in memory (rank 0's best.pt may be on another machine)
                best_state = copy.deepcopy(method.state_dict())
        _call_hooks(hooks, "on_validate", step, entry, method)
        bar.set_postfix_str(f"val dice {entry.get('dice', float('nan')):.3f} (best {history.best_score:.3f} @ {history.best_step})")
        save_last()

    # Ctrl-C is deferred to the end of the current step, so that last.pt never holds a half-done update
    interrupt = {"asked": False, "at_boundary": True}

    def on_sigint(signum: int, frame: Any) -> None:
        # several processes always finish the step, so that they all stop at the same one
        if interrupt["asked"] or (interrupt["at_boundary"] and not info.active):
            raise KeyboardInterrupt
        interrupt["asked"] = True
        if main:
            print("\ninterrupt: finishing this step, then saving last.pt (Ctrl-C again to stop at once)", flush=True)

    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGINT, on_sigint)
    method.distribute(info)  # DDP wrappers for train_step (nothing in a single process)
    try:
        while step < tc.steps:
            if step > start_step and step % segment_len == 0:
                batches = batches_from(step)
            interrupt["at_boundary"] = False
            step += 1
            method.train()
            logs = method.train_step(_to_device(next(batches), method.device), step)
            seconds = time.perf_counter() - clock0
            out_of_time = budget is not None and seconds >= budget
            if info.active:  # every rank logs the mean over ranks, sees the same NaN and stops on the same step
                logs, out_of_time = distributed.reduce_step(logs, out_of_time, info)
            for name, value in logs.items():
                if not math.isfinite(float(value)):
                    where = f"{last_path} (step {history.last_step})" if last_path and last_path.is_file() else "none written yet"
                    raise TrainingDiverged(
                        f"{cfg.method} step {step}: loss '{name}' = {value} is not finite. Last good checkpoint: {where}. "
                        f"Lower the method's learning rate(s) (see the model config) or check the data; resume with --resume.")
            history.last_step = step
            history.seconds = seconds
            if step % tc.log_every == 0 or step == 1:
                history.steps.append({"step": step, "seconds": round(history.seconds, 3), **{k: float(v) for k, v in logs.items()}})
                _call_hooks(hooks, "on_step", step, logs, method)
            bar.update(1)
            bar.set_description_str(f"train {cfg.method} " + " ".join(f"{k}={float(v):.3g}" for k, v in list(logs.items())[:3]))
            if step % tc.val_every == 0 or step == tc.steps or out_of_time:
                validate()
            interrupt["at_boundary"] = True
            if distributed.any_rank(interrupt["asked"], info):
                raise KeyboardInterrupt
            if out_of_time:
                history.stopped = f"time budget of {tc.max_minutes} min reached at step {step}"
                break
        else:
            history.stopped = history.stopped or f"completed {tc.steps} steps"
        if not history.val:  # resumed a finished run, or zero steps
            validate()
    except KeyboardInterrupt:
        if interrupt["at_boundary"]:  # a consistent state: save it
            history.stopped = f"interrupted at step {history.last_step}"
            save_last()
            if main:
                print(f"\ninterrupted: state saved to {last_path}; continue with --resume" if last_path
                      else "\ninterrupted")
        elif main:  # stopped inside a step: the previous last.pt is the last consistent state
            print(f"\ninterrupted inside step {step}: {last_path} (step {history.last_step}) is kept; continue with "
                  "--resume" if last_path and last_path.is_file() else "\ninterrupted")
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        bar.close()
        method.distribute(None)

    history.seconds = time.perf_counter() - clock0
    # leave the method holding the best-on-validation weights
    if best_path is not None and main and best_path.is_file():
        method.load_state_dict(load_checkpoint(best_path, map_location=method.device)["method"])
    elif best_state is not None:
        method.load_state_dict(best_state)
    _call_hooks(hooks, "on_end", history, method)
    if run_dir is not None:
        distributed.on_main(write_json, history.to_dict(), run_dir / "history.json")
    return history


def build_method(cfg: RunConfig, dataset: SegDataset, device: torch.device | None = None) -> SegMethod:
    """Instantiate ``cfg.method`` for ``dataset`` on ``device`` (auto-picked when ``None``)."""
    cls = get_method_class(cfg.method)
    return cls(cfg, dataset.info(), device or pick_device())


def check_training_cases(dataset: SegDataset, train_cases: Sequence[Case]) -> None:
    """Refuse training data that cannot teach anything: no training case, or only empty (all-background) masks."""
    where = dataset.root or dataset.name
    if not train_cases:
        raise DataError(f"{where}: the {dataset.name} dataset has no training cases; check the split column of "
                        "cases.csv (or the Train_Folder), which must give some cases the split 'train'")
    if not any(np.any(c.label > 0) for c in train_cases):
        raise DataError(f"{where}: every training mask is empty (all background in {len(train_cases)} of "
                        f"{len(train_cases)} training images), so a model could only learn to predict background; "
                        "check that the masks mark the structure with values above 0, and that --dataset is right")


def check_run_folder(run_dir: str | Path) -> None:
    """Raise :class:`RunFolderError` unless ``run_dir`` exists as a writable folder or can be created as one.

    Nothing is created: the nearest existing ancestor must be a folder in which a file can be written.
    """
    run_dir = Path(run_dir)
    probe = run_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise RunFolderError(f"{run_dir}: cannot create the run folder (--out) there, {probe} is a file, not a "
                             "folder; choose another --out")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".diffseg-write-test.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise RunFolderError(f"{run_dir}: cannot write the run folder (--out) there, {probe} is not writable "
                             f"({exc.strerror or exc}); choose another --out, or fix the folder's permissions") from exc


def check_resume(run_dir: str | Path, cfg: RunConfig, data_record: dict[str, Any]) -> dict[str, Any]:
    """Check, before anything is written, that ``run_dir/last.pt`` can be resumed with ``cfg`` on the data
    described by ``data_record`` (:func:`training_data_record`).

    The checkpoint must be readable, hold the same settings as ``cfg`` (except :data:`RESUMABLE_CHANGES`)
    and record the same training images (ids and pixels). Returns the checkpoint.
    """
    run_dir = Path(run_dir)
    last = run_dir / "last.pt"
    if not last.is_file():
        raise RunFolderError(f"{run_dir}: no checkpoint last.pt to resume from (--resume); train into it without "
                             "--resume, or resume the folder you meant")
    ckpt = load_checkpoint(last)
    saved = _checkpoint_config(ckpt, last)
    if saved.method != cfg.method:
        raise RunFolderError(f"{last}: holds a {saved.method} run, so it cannot be resumed with --method {cfg.method}; "
                             f"resume it with --method {saved.method}, or train {cfg.method} into another --out")
    diffs = config_differences(saved, cfg, ignore=RESUMABLE_CHANGES)
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise RunFolderError(f"{last}: was trained with other settings ({shown}); resume with the options it was "
                             "trained with (only --steps and --minutes may change), or train into another --out")
    data = ckpt.get("data") or {}
    if data and data != data_record:
        what = ("other training images than" if data.get("train_ids") != data_record["train_ids"]
                else "training images of the same names as, but other pixels than,")
        raise RunFolderError(f"{last}: was trained on {what} the data given now; resume with the --data it was "
                             "trained on, or train into another --out")
    return ckpt


def run_training(cfg: RunConfig, dataset: SegDataset, run_dir: str | Path | None = None, resume: bool = False,
                 hooks: Sequence[LoopHooks] = (), progress: bool = True, device: torch.device | None = None,
                 verbose: bool = True) -> tuple[SegMethod, History]:
    """Build the method, choose its training cases, prepare it and run :func:`fit`.

    The run folder (when given) receives ``config.json``, ``environment.json`` (package versions, git
    commit, device, seed), ``run.json`` (dataset, device, chosen case ids, best step, wall time),
    ``history.json``, ``last.pt`` and ``best.pt``. Before the folder is touched, the training data
    (:func:`check_training_cases`), the folder (:func:`check_run_folder`) and, with ``resume``, the
    checkpoint (:func:`check_resume`) are checked. While training, ``run_dir/.lock`` keeps other runs
    out (:class:`~diffseg_core.checkpoint.RunLock`); a run that fails before its first checkpoint removes
    what it created.

    Launched by ``torchrun`` (``torchrun --nproc_per_node N -m diffseg_core train ...``), every process runs
    this same function: the process group is started here if the caller has not
    (:func:`diffseg_core.distributed.session`), each rank computes on its own device, rank 0 alone checks,
    locks and writes the run folder (the others get its result or its error) and prepares the method first
    (e.g. TextDiff's backbone; the other ranks then prepare, reading what rank 0 cached in the folder).
    """
    seed_everything(cfg.seed)
    with distributed.session(device or pick_device()) as info:
        return _run_training(cfg, dataset, run_dir, resume, hooks, progress, device, verbose, info)


def _prepare(method: SegMethod, train_cases: Sequence[Case], run_dir: Path | None, info: distributed.DistInfo) -> None:
    """``method.prepare`` on rank 0 first (it may write caches into ``run_dir``), then on the other ranks."""
    distributed.on_main(method.prepare, train_cases, run_dir)
    if not info.is_main:
        method.prepare(train_cases, run_dir if run_dir is not None and run_dir.is_dir() else None)


def _run_training(cfg: RunConfig, dataset: SegDataset, run_dir: str | Path | None, resume: bool,
                  hooks: Sequence[LoopHooks], progress: bool, device: torch.device | None, verbose: bool,
                  info: distributed.DistInfo) -> tuple[SegMethod, History]:
    device = distributed.place(device or pick_device(), info)  # under torchrun: this rank's accelerator
    main = info.is_main
    verbose = verbose and main
    if verbose:
        print(cfg.summary())
        print(f"device: {describe_device(device)} | data: {dataset.description or dataset.name} ({dataset.source})")
        if info.active:
            print(f"processes: {info.world_size} ({info.backend}); per-process batch {cfg.data.batch_size}, global "
                  f"batch {cfg.data.batch_size * info.world_size}")
    split = dataset.split("train")
    check_training_cases(dataset, split)
    val_cases = dataset.split("val")
    method = build_method(cfg, dataset, device)
    method.progress = progress
    train_cases = method.select_training_cases(split, cfg.seed)
    data_record = training_data_record(train_cases, split)
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is None:
        _prepare(method, train_cases, None, info)
        history = fit(method, train_cases, val_cases, run_dir=None, hooks=hooks, progress=progress,
                      data_record=data_record)
    else:
        env = environment(device, cfg.seed) | {"processes": info.world_size}
        lock = RunLock(run_dir)

        def open_run_folder() -> tuple[bool, set[str]]:  # rank 0 only: check, then lock
            check_run_folder(run_dir)
            lock.check()
            if resume:
                check_resume(run_dir, cfg, data_record)
            created = not run_dir.exists()
            before = set(os.listdir(run_dir)) if not created else set()
            lock.acquire()
            if lock.stale_notice:
                print(lock.stale_notice)
            return created, before

        def write_header() -> None:
            write_json(cfg.to_dict(), run_dir / "config.json")
            if not (resume and (run_dir / "environment.json").is_file()):
                write_json(env, run_dir / "environment.json")

        created, before = distributed.on_main(open_run_folder)
        try:
            distributed.on_main(write_header)
            _prepare(method, train_cases, run_dir, info)
            history = fit(method, train_cases, val_cases, run_dir=run_dir, resume=resume, hooks=hooks,
                          progress=progress, data_record=data_record)
        except BaseException:
            if main and not (run_dir / "last.pt").is_file():  # nothing to resume: remove what this call created
                lock.release()
                if created:
                    shutil.rmtree(run_dir, ignore_errors=True)
                else:
                    for name in set(os.listdir(run_dir)) - before:
                        target = run_dir / name
                        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
            raise
        finally:
            if main:
                lock.release()
    facts = {
        "method": cfg.method, "dataset": cfg.dataset, "preset": cfg.preset, "seed": cfg.seed,
        "data_source": dataset.source, "data_root": str(dataset.root) if dataset.root else None,
        "device": describe_device(device), "train_ids": [c.id for c in train_cases], "val_ids": [c.id for c in val_cases],
        "best_step": history.best_step, "best_val_dice": history.best_score, "steps_done": history.last_step,
        "train_seconds": round(history.seconds, 1), "stopped": history.stopped, "resumed_at": history.resumed_at,
        "parameters": method.num_parameters(), "trainable_parameters": method.num_parameters(trainable_only=True),
        "method_info": method.run_info(), "processes": info.world_size, "backend": info.backend,
        "global_batch": cfg.data.batch_size * info.world_size,
    }
    method.last_run_info = facts
    if run_dir is not None:
        distributed.on_main(write_json, {**facts, "environment": env}, run_dir / "run.json")
    if verbose:
        print(f"done: {history.stopped}; best val Dice {history.best_score:.4f} at step {history.best_step}; "
              f"{history.seconds:.0f} s")
    return method, history


def load_run(run_dir: str | Path, dataset: SegDataset | None = None, device: torch.device | None = None,
             which: str = "best") -> tuple[SegMethod, RunConfig, dict[str, Any]]:
    """Rebuild a trained method from a run folder (``best.pt`` by default) for evaluation.

    Raises a clear error (naming the file) when the folder is not a run, the checkpoint is missing,
    corrupt, from another method than ``config.json`` says, or does not fit its model, and when
    ``dataset`` has another number of channels or classes than the model was trained for.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run folder not found; pass the --out folder of a train command")
    path = run_dir / f"{which}.pt"
    ckpt = load_checkpoint(path, map_location="cpu")
    cfg = _checkpoint_config(ckpt, path)
    cfg_path = run_dir / "config.json"
    if cfg_path.is_file():
        described = load_run_config(cfg_path)
        if described.method != cfg.method:
            raise CheckpointError(f"{path}: holds a {cfg.method} checkpoint, but {cfg_path} describes a "
                                  f"{described.method} run; the folder mixes two runs: evaluate the folder each came "
                                  "from, or train again into an empty --out")
    info_path = run_dir / "run.json"
    run_info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    device = device or pick_device()
    d = dict(ckpt["dataset_info"])
    trained = DatasetInfo(**{**d, "class_names": tuple(d["class_names"])})
    if dataset is not None:
        info = dataset.info()
        if (info.in_channels, info.num_classes) != (trained.in_channels, trained.num_classes):
            raise DataError(f"{run_dir}: the model takes {trained.in_channels}-channel images and predicts "
                            f"{trained.num_classes} classes, but the {dataset.name} data at {dataset.root or 'synthetic'} "
                            f"have {info.in_channels}-channel images and {info.num_classes} classes; evaluate it on "
                            "data of the kind it was trained on")
    else:
        info = trained
    method = get_method_class(cfg.method)(cfg, info, device)
    method.restore(run_dir, run_info.get("method_info", {}))
    try:
        method.load_state_dict(ckpt["method"], with_optimizers=False)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: its weights do not fit the {cfg.method} model its config describes (was the "
                              "file edited, or written by another version?); train again") from exc
    return method, cfg, run_info
