"""The single training loop: it learns, checkpoints atomically, resumes, stops on NaN, chooses on validation."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from diffseg_core.checkpoint import load_checkpoint, save_checkpoint
from diffseg_core.config import override
from diffseg_core.methods import get_config
from diffseg_core.data import load_dataset
from diffseg_core.methods.unet import UNetMethod
from diffseg_core.train import RunFolderError, TrainingDiverged, load_run, run_training


def _tiny(steps=8, val_every=4, preset="smoke"):
    cfg = get_config("unet", "synthetic", preset, seed=0)
    cfg = override(cfg, **{"train.steps": steps, "train.val_every": val_every, "train.log_every": 1,
                          "train.max_minutes": None})
    ds = load_dataset("synthetic", None, cfg.data, seed=0)
    return cfg, ds


def test_training_writes_a_complete_run_folder(tmp_path):
    cfg, ds = _tiny()
    method, history = run_training(cfg, ds, run_dir=tmp_path, progress=False, verbose=False)
    for name in ("config.json", "run.json", "history.json", "last.pt", "best.pt"):
        assert (tmp_path / name).is_file(), name
    assert history.last_step == 8 and [v["step"] for v in history.val] == [4, 8]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["best_step"] in (4, 8) and run["val_ids"] and run["train_ids"]
    assert not set(run["val_ids"]) & set(run["train_ids"])
    # the best checkpoint is the one with the highest validation Dice
    best = max(history.val, key=lambda v: v["dice"])
    assert history.best_step == best["step"]


def test_loss_decreases_on_a_learnable_task():
    cfg, ds = _tiny(steps=60, val_every=60, preset="smoke")
    _, history = run_training(cfg, ds, progress=False, verbose=False)
    losses = [s["loss"] for s in history.steps]
    assert np.mean(losses[-10:]) < np.mean(losses[:5]), losses


def test_resume_continues_from_last_checkpoint(tmp_path):
    cfg, ds = _tiny(steps=4, val_every=2)
    run_training(cfg, ds, run_dir=tmp_path, progress=False, verbose=False)
    cfg2 = override(cfg, **{"train.steps": 6})
    _, history = run_training(cfg2, ds, run_dir=tmp_path, resume=True, progress=False, verbose=False)
    assert history.last_step == 6
    assert [v["step"] for v in history.val] == [2, 4, 6]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 6


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    cfg, ds = _tiny(steps=2)
    with pytest.raises(RunFolderError, match="no checkpoint"):
        run_training(cfg, ds, run_dir=tmp_path, resume=True, progress=False, verbose=False)


def test_nan_loss_stops_with_a_message(tmp_path, monkeypatch):
    cfg, ds = _tiny(steps=6, val_every=2)
    original = UNetMethod.train_step

    def poisoned(self, batch, step):
        out = original(self, batch, step)
        return {"loss": math.nan} if step == 3 else out

    monkeypatch.setattr(UNetMethod, "train_step", poisoned)
    with pytest.raises(TrainingDiverged, match=r"step 3: loss 'loss' = nan .*last\.pt \(step 2\)"):
        run_training(cfg, ds, run_dir=tmp_path, progress=False, verbose=False)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2  # nothing lost


def test_time_budget_stops_early():
    cfg, ds = _tiny(steps=10_000, val_every=10_000)
    cfg = override(cfg, **{"train.max_minutes": 0.02})
    _, history = run_training(cfg, ds, progress=False, verbose=False)
    assert history.last_step < 10_000 and "time budget" in history.stopped
    assert history.val, "a validation is run when the budget stops training"


def test_load_run_restores_the_best_weights(tmp_path):
    cfg, ds = _tiny()
    method, _ = run_training(cfg, ds, run_dir=tmp_path, progress=False, verbose=False)
    again, cfg2, info = load_run(tmp_path, ds)
    assert cfg2 == cfg and info["best_step"] == method.last_run_info["best_step"]
    for (k, a), (_, b) in zip(method.nets.state_dict().items(), again.nets.state_dict().items()):
        assert torch.equal(a.cpu(), b.cpu()), k


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    save_checkpoint({"a": 1}, path)

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"a": 2}, path)
    assert load_checkpoint(path) == {"a": 1}, "the previous checkpoint must survive a failed write"
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"], "no temporary file left behind"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="truncated or corrupt and cannot be read"):
        load_checkpoint(bad)
