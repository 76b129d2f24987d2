"""Training on several processes (torchrun + DistributedDataParallel) with the one training loop.

The central test launches ``torchrun --nproc_per_node 2`` on the CPU (``gloo``) with cDAL on ``smoke`` (two
networks, two optimisers): training runs, both ranks hold identical generator and discriminator weights
after every step while they trained on different batches, rank 0 alone wrote the run folder, and a plain
single process resumes the checkpoint. U-Net and TextDiff are launched the same way, and rank 0 replays
each step in one process on the global batch (both ranks' batches): the U-Net's step is the same to
rounding (its loss is a mean over samples); TextDiff's is not, by design of its batch-pooled Dice, and the
test checks which part agrees. cDAL is not replayed: its t, z and noise are drawn per rank from each rank's
own stream, so two processes equal one process on the global batch in distribution only. The others check
the pieces with numbers worked out by hand, the backend and device choice (pure functions, so the GPU
paths are checked on the CPU), and that a process group of one trains bit for bit as the plain loop (one
code path).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from conftest import REPO
from diffseg_core import distributed
from diffseg_core.checkpoint import load_checkpoint
from diffseg_core.cli import main
from diffseg_core.config import override
from diffseg_core.data import load_dataset
from diffseg_core.methods import get_config
from diffseg_core.train import History, batch_seed, run_training

STEPS = 3  # smoke: validation (and a checkpoint) every 3 steps
TRAIN = ["train", "--method", "cdal", "--dataset", "synthetic", "--preset", "smoke", "--minutes", "30", "--no-progress"]

# the real CLI, with the method's train_step wrapped to record each rank's weights before and after every step
# and its batch; with REPLAY=1, rank 0 also replays the step in one process, without DDP, on the global batch
# (every rank's batch concatenated) from the same weights, optimiser state and random state, then restores
# its own state: what a single process with the global batch would have done
CHILD = """
import copy, os, sys, torch
from diffseg_core import distributed
from diffseg_core.cli import main
from diffseg_core.methods import get_method_class
dump, name, replay = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
cls = get_method_class(name)
original = cls.train_step

def concat(parts):
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return [v for part in parts for v in part]

def step(self, batch, k):
    before = copy.deepcopy(self.state_dict())
    rng = torch.get_rng_state()
    out = original(self, batch, k)
    record = {"before": before["nets"], "after": {n: v.detach().clone() for n, v in self.nets.state_dict().items()},
              "ids": list(batch["id"]), "label": batch["label"].cpu(), "threads": torch.get_num_threads(), "out": out}
    if replay:
        cpu = {key: v.cpu() if isinstance(v, torch.Tensor) else v for key, v in batch.items()}
        batches = distributed.all_gather_objects(cpu)
        if distributed.current().is_main:
            after, rng_after, wrapped = copy.deepcopy(self.state_dict()), torch.get_rng_state(), self._train_nets
            self._train_nets = {}  # the plain networks: no DDP, no collective
            self.load_state_dict(before)
            torch.set_rng_state(rng)
            record["global_out"] = original(self, {key: concat([b[key] for b in batches]) for key in cpu}, k)
            record["global"] = {n: v.detach().clone() for n, v in self.nets.state_dict().items()}
            record["global_ids"] = [i for b in batches for i in b["id"]]
            self.load_state_dict(after)
            torch.set_rng_state(rng_after)
            self._train_nets = wrapped
    torch.save(record, os.path.join(dump, f"rank{os.environ['RANK']}_step{k}.pt"))
    return out
cls.train_step = step
sys.exit(main(sys.argv[4:]))
"""


def _torchrun(tmp_path, nproc: int, argv: list[str], method: str = "cdal", replay: bool = False) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    (tmp_path / "dump").mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                           str(script), "dump", method, "1" if replay else "0", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)


def test_torchrun_two_cpu_processes_train_cdal_and_a_single_process_resumes(tmp_path, monkeypatch, capsys):
    proc = _torchrun(tmp_path, 2, TRAIN + ["--steps", str(STEPS), "--out", "RUN"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "processes: 2 (gloo); per-process batch 4, global batch 8" in proc.stdout
    assert proc.stdout.count("run written to RUN") == 1, "only rank 0 prints"

    dumps = {(r, k): torch.load(tmp_path / "dump" / f"rank{r}_step{k}.pt") for r in (0, 1) for k in range(1, STEPS + 1)}
    for k in range(1, STEPS + 1):
        a, b = dumps[0, k], dumps[1, k]
        # the two ranks trained on different data (their shards of the cases, their own seeded streams)...
        assert not torch.equal(a["label"], b["label"]) and not set(a["ids"]) & set(b["ids"]), (a["ids"], b["ids"])
        # ...and still hold the same G and D after the step, because DDP averaged both networks' gradients
        assert a["after"].keys() == b["after"].keys()
        different = [n for n in a["after"] if not torch.equal(a["after"][n], b["after"][n])]
        assert not different, f"step {k}: ranks differ in {different[:5]}"
        assert a["threads"] == b["threads"] == 1, "torchrun gives each of the 2 processes one thread"
    moved = [n for n in dumps[0, 2]["after"] if not torch.equal(dumps[0, 2]["after"][n], dumps[0, 1]["before"][n])]
    assert any(n.startswith("G.") for n in moved) and any(n.startswith("D.") for n in moved), "both networks trained"

    run = tmp_path / "RUN"
    assert sorted(os.listdir(run)) == ["best.pt", "config.json", "environment.json", "history.json", "last.pt",
                                       "run.json"], "rank 0 wrote the run folder, nothing else is left (no lock)"
    ckpt = load_checkpoint(run / "last.pt")
    assert all(torch.equal(ckpt["method"]["nets"][n], dumps[1, STEPS]["after"][n]) for n in ckpt["method"]["nets"])
    assert len(ckpt["rng_ranks"]) == 2 and ckpt["step"] == STEPS
    info = json.loads((run / "run.json").read_text())
    assert (info["processes"], info["backend"], info["global_batch"]) == (2, "gloo", 8)
    assert json.loads((run / "environment.json").read_text())["processes"] == 2
    history = json.loads((run / "history.json").read_text())
    assert history["processes"] == [[0, 2]] and [s["step"] for s in history["steps"]] == [1, 2, 3]

    # a single plain process resumes the checkpoint of two and continues it
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(TRAIN + ["--steps", str(STEPS + 1), "--out", "RUN", "--resume"]) == 0
    assert f"resumed from RUN/last.pt at step {STEPS}" in capsys.readouterr().out
    history = json.loads((run / "history.json").read_text())
    assert history["processes"] == [[0, 2], [STEPS, 1]] and history["resumed_at"] == [STEPS]
    assert history["last_step"] == STEPS + 1 and json.loads((run / "run.json").read_text())["processes"] == 1
    resumed = load_checkpoint(run / "last.pt")["method"]["nets"]
    assert any(not torch.equal(resumed[n], ckpt["method"]["nets"][n]) for n in resumed), "it trained on from there"


def _train_args(method: str, steps: int) -> list[str]:
    return ["train", "--method", method, "--dataset", "synthetic", "--preset", "smoke", "--minutes", "30",
            "--no-progress", "--steps", str(steps), "--out", "RUN"]


def _dumps(tmp_path, steps: int) -> dict[tuple[int, int], dict]:
    return {(r, k): torch.load(tmp_path / "dump" / f"rank{r}_step{k}.pt") for r in (0, 1) for k in range(1, steps + 1)}


def _norm(tensors: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    return float(sum(float((tensors[n].double() - other[n].double()).norm() ** 2) for n in tensors) ** 0.5)


def test_torchrun_unet_two_processes_step_as_one_process_on_the_global_batch(tmp_path, monkeypatch):
    """U-Net: every term of the loss is a mean over samples (Dice per image, CE per pixel; MONAI's DiceCELoss,
    batch=False), so Eq. ch15-allreduce holds and two processes of batch B take the step one process takes on
    their 2B samples. Only rounding differs: the all-reduce sums in another order than the 2B-sample mean,
    and Adam's first steps divide by |g| (g / (|g| + eps)), which magnifies rounding in tiny gradient entries
    (measured: about 2e-5 of the step's norm at smoke); tolerance 1e-3 of the step's norm, 1e-5 of the loss."""
    steps = 2
    proc = _torchrun(tmp_path, 2, _train_args("unet", steps), method="unet", replay=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "processes: 2 (gloo); per-process batch" in proc.stdout and proc.stdout.count("run written to RUN") == 1
    dumps = _dumps(tmp_path, steps)
    for k in range(1, steps + 1):
        a, b = dumps[0, k], dumps[1, k]
        assert a["global_ids"] == a["ids"] + b["ids"] and not set(a["ids"]) & set(b["ids"])
        assert all(torch.equal(a["after"][n], b["after"][n]) for n in a["after"]), f"step {k}: the ranks differ"
        step_size = _norm(a["after"], a["before"])
        assert step_size > 0
        assert _norm(a["global"], a["after"]) <= 1e-3 * step_size, (k, _norm(a["global"], a["after"]) / step_size)
        # the loss of the global batch is the mean of the ranks' losses (what the loop logs, reduce_step)
        assert a["global_out"]["loss"] == pytest.approx((a["out"]["loss"] + b["out"]["loss"]) / 2, rel=1e-5)
    history = json.loads((tmp_path / "RUN" / "history.json").read_text())
    assert [s["loss"] for s in history["steps"]] == pytest.approx(
        [(dumps[0, k]["out"]["loss"] + dumps[1, k]["out"]["loss"]) / 2 for k in range(1, steps + 1)], rel=1e-6)

    # evaluation split across two processes and gathered scores every image, as one process does
    proc = _torchrun(tmp_path, 2, ["evaluate", "--run-dir", "RUN", "--split", "test", "--json", "two.json"], method="unet")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("-> two.json") == 1, "rank 0 alone prints and writes"
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--run", "RUN", "--split", "test", "--json", "one.json"]) == 0
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["ids"] == one["ids"] and two["n_images"] == one["n_images"] > 1
    assert two["per_image_dice"] == pytest.approx(one["per_image_dice"], abs=1e-6)
    assert two["row"]["dice_mean"] == pytest.approx(one["row"]["dice_mean"], abs=1e-6)


def test_torchrun_textdiff_two_processes_average_their_batch_losses(tmp_path):
    """TextDiff: rank 0 pre-trains the backbone, the other rank reads it from the run folder; both train the head.

    Its loss is CE + 1.5 x soft Dice with the Dice **pooled over the batch** (the official code's DiceLoss,
    ``textdiff.head.soft_dice_loss``), so the maths does not allow equality with one process on the global
    batch: two processes minimise the mean of their per-batch pooled Dice, one process the Dice pooled over
    all 2B samples. The test checks the part that averages (the CE of the global batch is the mean of the
    ranks' CE), that the pooled Dice is not, and that the ranks stay identical; the weights then differ from
    the one-process step by a fraction of a step (measured about 0.2-0.3 of the step's norm at smoke).
    """
    steps = 2
    proc = _torchrun(tmp_path, 2, _train_args("textdiff", steps), method="textdiff", replay=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "processes: 2 (gloo)" in proc.stdout and proc.stdout.count("run written to RUN") == 1
    assert (tmp_path / "RUN" / "backbone.pt").is_file(), "rank 0 wrote the pre-trained backbone into the run folder"
    dumps = _dumps(tmp_path, steps)
    for k in range(1, steps + 1):
        a, b = dumps[0, k], dumps[1, k]
        assert a["global_ids"] == a["ids"] + b["ids"] and not set(a["ids"]) & set(b["ids"])
        assert all(torch.equal(a["after"][n], b["after"][n]) for n in a["after"]), f"step {k}: the ranks differ"
        trained = [n for n in a["after"] if not torch.equal(a["after"][n], a["before"][n])]
        assert trained, "the head trained"
        assert a["global_out"]["ce"] == pytest.approx((a["out"]["ce"] + b["out"]["ce"]) / 2, rel=1e-5)
        assert a["global_out"]["dice"] != pytest.approx((a["out"]["dice"] + b["out"]["dice"]) / 2, rel=1e-3), \
            "a Dice pooled over the batch is not the mean of the halves' pooled Dice"
        assert 0 < _norm(a["global"], a["after"]) < _norm(a["after"], a["before"])


def test_torchrun_refusal_comes_from_rank_0_once_and_stops_every_rank(tmp_path):
    (tmp_path / "RUN").mkdir()
    (tmp_path / "RUN" / "last.pt").write_bytes(b"an earlier run")
    proc = _torchrun(tmp_path, 2, TRAIN + ["--steps", "1", "--out", "RUN"])
    assert proc.returncode != 0
    assert proc.stderr.count("error: --out RUN: already holds a run") == 1, proc.stderr[-3000:]
    assert "exitcode  : 2" in proc.stderr, "every rank exits with the bad-input status"
    assert sorted(os.listdir(tmp_path / "RUN")) == ["last.pt"] and not list((tmp_path / "dump").iterdir())


# ---- one process group of one: the DDP path is the plain loop ----------------------------------------
@pytest.fixture
def group_of_one():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield distributed.current()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["unet", "cdal", "textdiff"])
def test_a_process_group_of_one_trains_bit_for_bit_as_the_plain_loop(method, tmp_path):
    cfg = override(get_config(method, "synthetic", "smoke", seed=2),
                   **{"train.max_minutes": None, "train.steps": 2, "train.val_every": 2})
    ds = load_dataset("synthetic", None, cfg.data, seed=cfg.seed)
    plain, h_plain = run_training(cfg, ds, run_dir=tmp_path / "plain", progress=False, verbose=False)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        seen = []
        cls = type(plain)
        original = cls.train_step

        def spy(self, batch, k):  # the step really ran through DDP wrappers
            seen.append(sorted(type(v).__name__ for v in self._train_nets.values()))
            return original(self, batch, k)

        cls.train_step = spy
        try:
            ddp, h_ddp = run_training(cfg, ds, run_dir=tmp_path / "ddp", progress=False, verbose=False)
        finally:
            cls.train_step = original
    finally:
        dist.destroy_process_group()
    assert seen and all(names and set(names) == {"DistributedNet"} for names in seen), seen
    assert not ddp._train_nets, "the wrappers are dropped after training"
    strip = [{k: v for k, v in s.items() if k != "seconds"} for s in h_plain.steps]
    assert strip == [{k: v for k, v in s.items() if k != "seconds"} for s in h_ddp.steps]
    a, b = (load_checkpoint(tmp_path / n / "last.pt")["method"] for n in ("plain", "ddp"))
    assert a["nets"].keys() == b["nets"].keys(), "checkpoints hold the plain networks' keys (no 'module.')"
    assert all(torch.equal(a["nets"][k], b["nets"][k]) for k in a["nets"])
    assert h_ddp.processes == [[0, 1]] and [v["dice"] for v in h_plain.val] == [v["dice"] for v in h_ddp.val]


def test_distributed_net_reads_attributes_of_the_wrapped_network(group_of_one):
    class Net(nn.Module):
        nz = 7

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def features(self, x):
            return [self.lin(x)]

        def forward(self, x):
            return self.lin(x).sum()

    net = Net()
    wrapped = distributed.wrap(net, torch.device("cpu"))
    assert wrapped.nz == 7 and wrapped.lin is net.lin and wrapped.features(torch.ones(1, 3))[0].shape == (1, 2)
    assert distributed.unwrap(wrapped) is net and distributed.unwrap(net) is net
    x = torch.randn(4, 3)
    wrapped(x).backward()
    assert torch.allclose(net.lin.weight.grad, x.sum(0).expand(2, 3)), "d/dW of sum(Wx + b): the column sums of x"
    with pytest.raises(AttributeError):
        wrapped.no_such_attribute


def test_collectives_in_a_group_of_one_and_in_a_plain_process(group_of_one):
    assert group_of_one.active and group_of_one.is_main and group_of_one.backend == "gloo"
    assert distributed.reduce_step({"loss": 0.5, "mse": 2.0}, True) == ({"loss": 0.5, "mse": 2.0}, True)
    assert distributed.any_rank(False) is False
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object([1, 2]) == [1, 2]
    assert distributed.on_main(lambda x: x + 1, 1) == 2
    with pytest.raises(ValueError, match="refused"):
        distributed.on_main(lambda: (_ for _ in ()).throw(ValueError("refused")))


def test_plain_process_is_a_single_rank():
    info = distributed.current()
    assert info == distributed.SINGLE and not info.active and info.is_main and info.world_size == 1
    assert distributed.reduce_step({"x": 1.5}, False) == ({"x": 1.5}, False)
    assert distributed.all_gather_objects(3) == [3] and distributed.broadcast_object(4) == 4
    assert distributed.place(torch.device("cpu")) == torch.device("cpu")
    assert distributed.backend_for(torch.device("cpu")) == "gloo"


def test_backend_and_device_choice_is_a_pure_function_of_the_device():
    # the GPU paths cannot run on this machine; their choice is made by pure functions, checked here on the CPU
    assert distributed.choose_backend("cpu") == "gloo"
    assert distributed.choose_backend("cuda") == "nccl"
    assert distributed.choose_backend("cuda", nccl_available=False) == "gloo", "a build without NCCL falls back"
    assert distributed.choose_backend("cpu", nccl_available=False) == "gloo"
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.rank_device("cpu", 3, None) == torch.device("cpu"), "the CPU is shared by every process"
    assert distributed.rank_device("cuda", 0, 4) == torch.device("cuda", 0)
    assert distributed.rank_device("cuda", 3, 4) == torch.device("cuda", 3), "one GPU per process, by LOCAL_RANK"
    with pytest.raises(ValueError, match=r"LOCAL_RANK 4: this machine has 4 cuda device\(s\).*--nproc_per_node 4"):
        distributed.rank_device("cuda", 4, 4)
    with pytest.raises(ValueError, match="LOCAL_RANK -1"):
        distributed.rank_device("cuda", -1, 4)


def test_torchrun_command_spells_this_pythons_launcher():
    args = ["train", "--method", "unet", "--out", "RUN"]
    assert distributed.torchrun_command(1, args, python="py") == ["py", "-m", "diffseg_core", *args]
    assert distributed.torchrun_command(2, args, python="py") == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "diffseg_core", *args]
    with pytest.raises(ValueError, match="nproc 0"):
        distributed.torchrun_command(0, args)
    assert distributed.accelerator_count() >= 0


def test_no_option_of_train_or_evaluate_is_taken_by_torchruns_own_parser():
    # torchrun's parser reads abbreviations of its options even after the program's name: an option of ours
    # that starts one of its options (evaluate --run -> --run-path) never reaches diffseg_core under torchrun
    import argparse

    from torch.distributed import run as torchrun
    from diffseg_core.cli import _parser

    theirs = [o for a in torchrun.get_args_parser()._actions for o in a.option_strings if o.startswith("--")]
    ours = {(name, o) for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)
            for name, sub in a.choices.items() if name in ("train", "evaluate")
            for b in sub._actions for o in b.option_strings if o.startswith("--") and o != "--help"}
    taken = sorted((name, o) for name, o in ours if any(t.startswith(o) for t in theirs))
    assert taken == [("evaluate", "--run")], taken
    assert ("evaluate", "--run-dir") in ours, "the spelling that passes through torchrun"


def test_shard_gives_every_item_to_exactly_one_rank():
    items = list(range(11))
    shards = [distributed.shard(items, distributed.DistInfo(rank=r, world_size=4, backend="gloo")) for r in range(4)]
    assert shards == [[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7]]
    assert sorted(sum(shards, [])) == items
    # fewer items than ranks: every rank gets them all (no rank may train on nothing)
    assert distributed.shard([5, 6], distributed.DistInfo(rank=2, world_size=3, backend="gloo")) == [5, 6]
    assert distributed.shard(items) == items


def test_batch_seeds_keep_the_single_process_stream_and_differ_by_rank():
    # rank 0 (and a plain process) keeps the seed of the single-process loop, so old runs resume exactly
    assert batch_seed(7, 3) == batch_seed(7, 3, rank=0) == int(np.random.SeedSequence([7, 3]).generate_state(1)[0])
    seeds = {batch_seed(7, 3, rank=r) for r in range(8)} | {batch_seed(7, s, rank=1) for s in range(8)}
    assert len(seeds) == 15, "one seed per (segment, rank)"


def test_step_seconds_leave_out_validation_and_restarts():
    h = History(steps=[{"step": 1, "seconds": 1.0}, {"step": 2, "seconds": 1.5}, {"step": 3, "seconds": 2.0},
                       {"step": 4, "seconds": 9.0}, {"step": 6, "seconds": 10.0}, {"step": 8, "seconds": 30.0},
                       {"step": 9, "seconds": 30.25}],
                val=[{"step": 3}], resumed_at=[6])
    # 1->2 and 2->3 are 0.5 s; 3->4 holds the validation after step 3; 4->6 is 0.5 s a step; 6->8 holds the restart
    assert h.step_seconds() == [0.5, 0.5, 0.5, 0.25]
