"""The one training loop. Every method plugs in through :class:`~diffseg_core.methods.base.SegMethod`.

What the loop guarantees, whatever the method:

* a progress bar, seeded batches, the config printed at the start and saved with every checkpoint;
* validation on the **validation** split every ``cfg.train.val_every`` steps (Dice, per-image mean);
  the best checkpoint is chosen on validation, never on test (the official cDAL code chooses on test;
  we do not: book/decisions.md, D15);
* atomic checkpoints (``last.pt`` at every validation, ``best.pt`` on improvement) and ``--resume`` from
  ``last.pt``; Ctrl-C writes ``last.pt`` before stopping, so nothing is lost;
* a NaN/inf guard that stops with a message naming the step, the loss and the last good checkpoint;
* an optional wall-clock budget (``cfg.train.max_minutes``), so methods can be compared at equal time.
"""
from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
import torch

from .checkpoint import load_checkpoint, save_checkpoint, write_json
from .config import RunConfig
from .data import Case, DataError, DatasetInfo, SegDataset
from .device import describe_device, pick_device, seed_everything
from .methods import SegMethod, get_method_class


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite. The message names the step, the loss and the last good checkpoint."""


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _call_hooks(hooks: Iterable[LoopHooks], name: str, *args: Any) -> None:
    for hook in hooks:
        fn = getattr(hook, name, None)
        if fn is not None:
            fn(*args)


def fit(method: SegMethod, train_cases: Sequence[Case], val_cases: Sequence[Case], run_dir: str | Path | None = None,
        resume: bool = False, hooks: Sequence[LoopHooks] = (), progress: bool = True) -> History:
    """Train ``method`` for ``cfg.train.steps`` steps (or until ``cfg.train.max_minutes``).

    Returns the :class:`History`; the method is left holding the **best-on-validation** weights.
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

    if resume:
        if last_path is None or not last_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint {last_path} to resume from; train without --resume first")
        ckpt = load_checkpoint(last_path, map_location=method.device)
        method.load_state_dict(ckpt["method"])
        history = History.from_dict(ckpt["history"])
        _set_rng_state(ckpt["rng"])
        print(f"resumed from {last_path} at step {history.last_step} ({history.seconds:.0f} s already trained)")

    def checkpoint_payload() -> dict[str, Any]:
        return {"config": cfg.to_dict(), "dataset_info": asdict(method.info), "method": method.state_dict(),
                "history": history.to_dict(),
                "rng": _rng_state(), "step": history.last_step}

    def save_last() -> None:
        if last_path is not None:
            save_checkpoint(checkpoint_payload(), last_path)

    batches = method.train_batches(train_cases, seed=cfg.seed + history.last_step)
    start_step = history.last_step
    clock0 = time.perf_counter() - history.seconds
    budget = tc.max_minutes * 60 if tc.max_minutes else None
    bar = tqdm(total=tc.steps, initial=start_step, desc=f"train {cfg.method}", disable=not progress, dynamic_ncols=True)
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
                save_checkpoint(checkpoint_payload() | {"val": entry}, best_path)
            else:
                best_state = copy.deepcopy(method.state_dict())
        _call_hooks(hooks, "on_validate", step, entry, method)
        bar.set_postfix_str(f"val dice {entry.get('dice', float('nan')):.3f} (best {history.best_score:.3f} @ {history.best_step})")
        save_last()

    try:
        while step < tc.steps:
            step += 1
            method.train()
            logs = method.train_step(_to_device(next(batches), method.device), step)
            for name, value in logs.items():
                if not math.isfinite(float(value)):
                    where = f"{last_path} (step {history.last_step})" if last_path and last_path.is_file() else "none written yet"
                    raise TrainingDiverged(
                        f"{cfg.method} step {step}: loss '{name}' = {value} is not finite. Last good checkpoint: {where}. "
                        f"Lower the method's learning rate(s) (see the model config) or check the data; resume with --resume.")
            history.last_step = step
            history.seconds = time.perf_counter() - clock0
            if step % tc.log_every == 0 or step == 1:
                history.steps.append({"step": step, "seconds": round(history.seconds, 3), **{k: float(v) for k, v in logs.items()}})
                _call_hooks(hooks, "on_step", step, logs, method)
            bar.update(1)
            bar.set_description_str(f"train {cfg.method} " + " ".join(f"{k}={float(v):.3g}" for k, v in list(logs.items())[:3]))
            out_of_time = budget is not None and history.seconds >= budget
            if step % tc.val_every == 0 or step == tc.steps or out_of_time:
                validate()
            if out_of_time:
                history.stopped = f"time budget of {tc.max_minutes} min reached at step {step}"
                break
        else:
            history.stopped = history.stopped or f"completed {tc.steps} steps"
        if not history.val:  # resumed a finished run, or zero steps
            validate()
    except KeyboardInterrupt:
        history.stopped = f"interrupted at step {step}"
        save_last()
        print(f"\ninterrupted: state saved to {last_path}; continue with --resume" if last_path else "\ninterrupted")
        raise
    finally:
        bar.close()

    history.seconds = time.perf_counter() - clock0
    # leave the method holding the best-on-validation weights
    if best_path is not None and best_path.is_file():
        method.load_state_dict(load_checkpoint(best_path, map_location=method.device)["method"])
    elif best_state is not None:
        method.load_state_dict(best_state)
    _call_hooks(hooks, "on_end", history, method)
    if run_dir is not None:
        write_json(history.to_dict(), run_dir / "history.json")
    return history


def build_method(cfg: RunConfig, dataset: SegDataset, device: torch.device | None = None) -> SegMethod:
    """Instantiate ``cfg.method`` for ``dataset`` on ``device`` (auto-picked when ``None``)."""
    cls = get_method_class(cfg.method)
    return cls(cfg, dataset.info(), device or pick_device())


def run_training(cfg: RunConfig, dataset: SegDataset, run_dir: str | Path | None = None, resume: bool = False,
                 hooks: Sequence[LoopHooks] = (), progress: bool = True, device: torch.device | None = None,
                 verbose: bool = True) -> tuple[SegMethod, History]:
    """Build the method, choose its training cases, prepare it and run :func:`fit`.

    The run folder (when given) receives ``config.json``, ``run.json`` (dataset, device, chosen case ids,
    best step, wall time), ``history.json``, ``last.pt`` and ``best.pt``.
    """
    seed_everything(cfg.seed)
    device = device or pick_device()
    if verbose:
        print(cfg.summary())
        print(f"device: {describe_device(device)} | data: {dataset.description or dataset.name} ({dataset.source})")
    train_cases = dataset.split("train")
    if not train_cases:
        raise DataError(f"dataset {dataset.name} at {dataset.root} has no training cases (check cases.csv's split column)")
    val_cases = dataset.split("val")
    method = build_method(cfg, dataset, device)
    train_cases = method.select_training_cases(train_cases, cfg.seed)
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(cfg.to_dict(), run_dir / "config.json")
    method.prepare(train_cases, run_dir)
    history = fit(method, train_cases, val_cases, run_dir=run_dir, resume=resume, hooks=hooks, progress=progress)
    info = {
        "method": cfg.method, "dataset": cfg.dataset, "preset": cfg.preset, "seed": cfg.seed,
        "data_source": dataset.source, "data_root": str(dataset.root) if dataset.root else None,
        "device": describe_device(device), "train_ids": [c.id for c in train_cases], "val_ids": [c.id for c in val_cases],
        "best_step": history.best_step, "best_val_dice": history.best_score, "steps_done": history.last_step,
        "train_seconds": round(history.seconds, 1), "stopped": history.stopped,
        "parameters": method.num_parameters(), "trainable_parameters": method.num_parameters(trainable_only=True),
        "method_info": method.run_info(),
    }
    method.last_run_info = info
    if run_dir is not None:
        write_json(info, run_dir / "run.json")
    if verbose:
        print(f"done: {history.stopped}; best val Dice {history.best_score:.4f} at step {history.best_step}; "
              f"{history.seconds:.0f} s")
    return method, history


def load_run(run_dir: str | Path, dataset: SegDataset | None = None, device: torch.device | None = None,
             which: str = "best") -> tuple[SegMethod, RunConfig, dict[str, Any]]:
    """Rebuild a trained method from a run folder (``best.pt`` by default) for evaluation."""
    import json

    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir / f"{which}.pt", map_location="cpu")
    cfg = RunConfig.from_dict(ckpt["config"])
    info_path = run_dir / "run.json"
    run_info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    device = device or pick_device()
    if dataset is not None:
        info = dataset.info()
    else:
        d = dict(ckpt["dataset_info"])
        info = DatasetInfo(**{**d, "class_names": tuple(d["class_names"])})
    method = get_method_class(cfg.method)(cfg, info, device)
    method.restore(run_dir, run_info.get("method_info", {}))
    method.load_state_dict(ckpt["method"], with_optimizers=False)
    return method, cfg, run_info
