"""Interrupted and concurrent work: SIGKILL and --resume, a full disk while saving, two runs into one folder."""
from __future__ import annotations

import errno
import json
import os
import random
import select
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from diffseg_core.checkpoint import (CheckpointWriteError, RunLock, RunLocked, load_checkpoint, save_checkpoint,
                                     write_json)
from diffseg_core.cli import main

STEPS, EVERY = 12, 3  # smoke: a checkpoint (validation) every 3 steps
TRAIN = ["train", "--method", "unet", "--dataset", "synthetic", "--preset", "smoke", "--steps", str(STEPS),
         "--minutes", "30", "--no-progress"]

CHILD = """
import sys, torch
torch.set_num_threads({threads})
from diffseg_core.methods.unet import UNetMethod
from diffseg_core.cli import main
original = UNetMethod.train_step
def step(self, batch, k):
    print(f"STEP {{k}}", flush=True)
    if k == {kill_at}:
        sys.stdin.readline()  # wait here until the parent kills us
    return original(self, batch, k)
UNetMethod.train_step = step
sys.exit(main({argv!r}))
"""


def _weights(path):
    return load_checkpoint(path)["method"]["nets"]


def _same_tensors(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _losses(history: dict) -> dict[int, dict]:
    return {s["step"]: {k: v for k, v in s.items() if k != "seconds"} for s in history["steps"]}


def test_sigkill_at_a_random_step_then_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    kill_at = random.Random().randint(EVERY + 1, STEPS - 1)
    argv = TRAIN + ["--out", "RUN"]
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(threads=torch.get_num_threads(), kill_at=kill_at,
                                                                 argv=argv)],
                             cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert main(TRAIN + ["--out", "REF"]) == 0  # the same run, never interrupted (while the child starts up)
        deadline, seen = time.monotonic() + 300, []
        while f"STEP {kill_at}" not in seen:
            assert time.monotonic() < deadline and child.poll() is None, f"child never reached step {kill_at}: {seen}"
            if select.select([child.stdout], [], [], 5)[0]:
                seen.append(child.stdout.readline().strip())
        # the child is alive at step kill_at, holding the folder: a second run into it refuses, naming the pid
        capsys.readouterr()
        assert main(argv + ["--resume"]) == 2
        err = capsys.readouterr().err
        assert f"pid {child.pid}" in err and "another training run is writing into this folder" in err
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert (tmp_path / "RUN" / ".lock").is_file(), "a killed run leaves its lock behind..."

    saved = load_checkpoint(tmp_path / "RUN" / "last.pt")
    lost = kill_at - saved["step"]
    assert 0 < lost <= EVERY, f"(a) killed at step {kill_at}, last checkpoint at step {saved['step']}"

    capsys.readouterr()
    assert main(argv + ["--resume"]) == 0  # ...which the resumed run recognises as stale
    out = capsys.readouterr().out
    assert "stale lock" in out and f"resumed from RUN/last.pt at step {saved['step']}" in out
    assert not (tmp_path / "RUN" / ".lock").exists()

    resumed = json.loads((tmp_path / "RUN" / "history.json").read_text())
    reference = json.loads((tmp_path / "REF" / "history.json").read_text())
    assert resumed["resumed_at"] == [saved["step"]] and reference["resumed_at"] == []
    # (b) the losses from the resume point on are those of the uninterrupted run (and so are the ones before)
    assert _losses(resumed) == _losses(reference) and len(_losses(resumed)) == STEPS
    assert [v["dice"] for v in resumed["val"]] == [v["dice"] for v in reference["val"]]
    assert _same_tensors(_weights(tmp_path / "RUN" / "last.pt"), _weights(tmp_path / "REF" / "last.pt"))
    # (c) the best-checkpoint bookkeeping survived the kill
    assert (resumed["best_step"], resumed["best_score"]) == (reference["best_step"], reference["best_score"])
    assert _same_tensors(_weights(tmp_path / "RUN" / "best.pt"), _weights(tmp_path / "REF" / "best.pt"))
    assert load_checkpoint(tmp_path / "RUN" / "best.pt")["step"] == reference["best_step"]


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    """ENOSPC on the step-6 last.pt: the run stops with a clear message, last.pt of step 3 stays loadable."""
    monkeypatch.chdir(tmp_path)
    real_save = torch.save

    def full_disk(obj, fh, *a, **k):
        if isinstance(obj, dict) and obj.get("step") == 6 and "val" not in obj:  # last.pt at step 6
            fh.write(b"partial bytes")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, fh, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    capsys.readouterr()
    assert main(TRAIN + ["--out", "RUN"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("error: RUN/last.pt: could not be saved because the disk is full; the previous version of it is "
                   "intact. Free some space (or fix the folder's permissions) and run again; a training run continues "
                   "with --resume")
    assert load_checkpoint(tmp_path / "RUN" / "last.pt")["step"] == 3
    assert sorted(p.name for p in (tmp_path / "RUN").iterdir() if p.name.startswith(".")) == [], \
        "no temporary file and no lock left behind"
    monkeypatch.setattr(torch, "save", real_save)
    assert main(TRAIN + ["--out", "RUN", "--resume"]) == 0
    assert load_checkpoint(tmp_path / "RUN" / "last.pt")["step"] == STEPS


def test_atomic_write_errors_name_the_file(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    save_checkpoint({"a": 1}, path)
    write_json({"a": 1}, tmp_path / "r.json")

    def quota(obj, fh):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(torch, "save", quota)
    with pytest.raises(CheckpointWriteError, match=r"x.pt: could not be saved because the disk is full; the previous"):
        save_checkpoint({"a": 2}, path)
    with pytest.raises(CheckpointWriteError, match="new.pt: could not be saved .* nothing was written"):
        save_checkpoint({"a": 2}, tmp_path / "new.pt")
    assert load_checkpoint(path) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "x.pt"]


def test_run_lock_refuses_a_live_owner_and_takes_over_a_stale_one(tmp_path, capsys):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        lock = tmp_path / "run" / ".lock"
        with RunLock(tmp_path / "run") as held:
            assert json.loads(lock.read_text())["pid"] == os.getpid() and not held.stale_notice
            with pytest.raises(RunLocked, match=f"pid {os.getpid()} on"):
                RunLock(tmp_path / "run").acquire()
        assert not lock.exists(), "the lock is removed on exit"
        import socket
        lock.write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "started": time.time()}))
        with pytest.raises(RunLocked, match=f"pid {live.pid} .* delete .*\\.lock"):
            RunLock(tmp_path / "run").check()
        lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": time.time()}))
        with RunLock(tmp_path / "run") as taken:
            assert f"pid {dead.pid} no longer runs" in taken.stale_notice
        lock.write_text("{not json")
        with RunLock(tmp_path / "run") as taken:
            assert "unreadable lock" in taken.stale_notice
        lock.write_text(json.dumps({"pid": 1, "host": "another-machine", "started": time.time()}))
        with pytest.raises(RunLocked, match="another-machine"):  # cannot be checked from here: counts as live
            RunLock(tmp_path / "run").check()
    finally:
        live.kill()
        live.wait()


def test_a_failed_run_removes_what_it_created(tmp_path, monkeypatch):
    """A run that fails before its first checkpoint leaves no run folder behind (it keeps one that has last.pt)."""
    from diffseg_core.methods.unet import UNetMethod

    monkeypatch.chdir(tmp_path)

    def boom(self, batch, step):
        raise RuntimeError("a bug in a method")

    monkeypatch.setattr(UNetMethod, "train_step", boom)
    with pytest.raises(RuntimeError, match="a bug in a method"):  # a bug keeps its traceback (not a usage error)
        main(TRAIN + ["--out", "RUN"])
    assert not (tmp_path / "RUN").exists()
    (tmp_path / "MINE").mkdir()
    (tmp_path / "MINE" / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        main(TRAIN + ["--out", "MINE"])
    assert sorted(p.name for p in (tmp_path / "MINE").iterdir()) == ["notes.txt"], "only what the run created goes"


def test_ctrl_c_inside_a_step_finishes_it_saves_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    """Ctrl-C in the middle of step 5 (inside a checkpoint interval): the step completes, last.pt holds step 5,
    and --resume (which skips the interval's batches already used) continues exactly like an uninterrupted run."""
    from diffseg_core.methods.unet import UNetMethod

    monkeypatch.chdir(tmp_path)
    original = UNetMethod.train_step

    def interrupted(self, batch, k):
        if k == 5:
            os.kill(os.getpid(), signal.SIGINT)  # delivered while the step runs
        return original(self, batch, k)

    monkeypatch.setattr(UNetMethod, "train_step", interrupted)
    assert main(TRAIN + ["--out", "RUN"]) == 130
    ckpt = load_checkpoint(tmp_path / "RUN" / "last.pt")
    assert ckpt["step"] == 5 and ckpt["history"]["stopped"] == "interrupted at step 5"
    assert "finishing this step" in capsys.readouterr().out
    monkeypatch.setattr(UNetMethod, "train_step", original)
    assert main(TRAIN + ["--out", "RUN", "--resume"]) == 0
    assert main(TRAIN + ["--out", "REF"]) == 0
    resumed = json.loads((tmp_path / "RUN" / "history.json").read_text())
    reference = json.loads((tmp_path / "REF" / "history.json").read_text())
    assert resumed["resumed_at"] == [5] and resumed["stopped"] == reference["stopped"] == f"completed {STEPS} steps"
    assert _losses(resumed) == _losses(reference)
    assert _same_tensors(_weights(tmp_path / "RUN" / "last.pt"), _weights(tmp_path / "REF" / "last.pt"))
