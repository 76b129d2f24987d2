"""Seconds per full cDAL training step (D real + R1 + D fake + G) per preset, against the U-Net step.

Run from the repository root::

    python benchmarks/train_step.py                      # smoke and cpu (+ gpu, paper on an accelerator)
    python benchmarks/train_step.py --preset cpu --repeats 30
    python benchmarks/train_step.py --preset smoke --repeats 1 --warmup 0   # the test's tiny mode

Both methods are timed in the same run, on the same device, with batches of the preset's batch size and
crop (random images and labels: a step's cost does not depend on the pixel values), and the table prints
cDAL / U-Net as a ratio. R1 is lazy (every ``lazy_reg`` steps), so the median over consecutive steps is
an R1-free step and the mean includes R1 at its real frequency; both are printed. The ``cpu`` target
(<= 0.25 s per step at batch 8 on 2 CPU cores) is checked on the mean and reported, not asserted.

On a shared machine wall time depends on what else runs (with 2 OpenMP threads on 2 busy cores it can be
10x worse than 1 thread). The table therefore also prints the process CPU seconds per step. With **one**
thread they barely move with contention (a robust measure of the work); CPU seconds / threads is then the
wall time on an idle machine with perfect scaling. With several threads on a busy machine OpenMP
spin-waiting inflates CPU seconds too (``OMP_WAIT_POLICY=PASSIVE`` limits that). Report both.

Speed targets live here, never in unit tests.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffseg_core.methods import get_config  # noqa: E402
from diffseg_core.device import accelerator_available, describe_device, pick_device, seed_everything  # noqa: E402
from diffseg_core.methods import get_method_class  # noqa: E402
from diffseg_core.data import DatasetInfo  # noqa: E402

CPU_TARGET_S = 0.25
INFO = {
    "monuseg": DatasetInfo("monuseg", 3, 2, ("background", "nucleus")),
    "cxr": DatasetInfo("cxr", 1, 2, ("background", "lung")),
    "hippocampus": DatasetInfo("hippocampus", 1, 3, ("background", "anterior", "posterior")),
}


def _sync(device: torch.device) -> None:
    if device.type != "cpu":
        acc = getattr(torch, "accelerator", None)
        if acc is not None and hasattr(acc, "synchronize"):
            acc.synchronize()


def time_steps(method_name: str, dataset: str, preset: str, device: torch.device, repeats: int, warmup: int,
               batch: int | None = None) -> dict:
    """Build ``method_name`` at ``preset`` and time ``repeats`` consecutive ``train_step`` calls."""
    seed_everything(0)
    cfg = get_config(method_name, dataset, preset)
    info = INFO[dataset]
    method = get_method_class(method_name)(cfg, info, device)
    b = batch or cfg.data.batch_size
    c = cfg.data.crop
    gen = torch.Generator().manual_seed(0)
    data = {"image": torch.rand(b, info.in_channels, c, c, generator=gen).to(device),
            "label": torch.randint(0, info.num_classes, (b, c, c), generator=gen).to(device),
            "text": [""] * b, "id": [str(i) for i in range(b)]}
    method.train()
    step = 0
    for _ in range(warmup):
        step += 1
        method.train_step(data, step)
    _sync(device)
    times, cpu = [], []
    for _ in range(repeats):
        step += 1
        t0, c0 = time.perf_counter(), time.process_time()
        method.train_step(data, step)
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"method": method_name, "preset": preset, "batch": b, "crop": c, "params": method.num_parameters(),
            "median": statistics.median(times), "mean": statistics.fmean(times), "cpu": statistics.fmean(cpu)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", action="append", choices=["smoke", "cpu", "gpu", "paper"],
                    help="preset(s) to time (repeatable); default smoke, cpu and, on an accelerator, gpu and paper")
    ap.add_argument("--dataset", default="monuseg", choices=sorted(INFO))
    ap.add_argument("--repeats", type=int, default=20, help="timed steps per method and preset (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument("--batch", type=int, default=None, help="override the preset's batch size")
    ap.add_argument("--device", default="auto", help="'auto' (default), 'cpu', ...")
    args = ap.parse_args(argv)

    device = pick_device(args.device)
    presets = args.preset or ["smoke", "cpu", "gpu", "paper"]
    has_acc = device.type != "cpu" and accelerator_available()
    print(f"device: {describe_device(device)} | torch {torch.__version__} | dataset {args.dataset} | "
          f"{args.repeats} timed steps after {args.warmup} warm-up")
    rows = []
    for preset in presets:
        if preset in ("gpu", "paper") and not has_acc:
            print(f"skipped preset {preset}: no accelerator on this machine (one {preset} step on 2 CPU threads takes "
                  f"seconds to minutes; the official paper-size G takes ~7.6 s per forward, book/decisions.md)")
            continue
        cd = time_steps("cdal", args.dataset, preset, device, args.repeats, args.warmup, args.batch)
        un = time_steps("unet", args.dataset, preset, device, args.repeats, args.warmup, args.batch)
        rows.append((cd, un))

    print()
    threads = torch.get_num_threads()
    print(f"{'preset':<7} {'batch':>5} {'crop':>5} {'cDAL params':>12} {'U-Net params':>12} "
          f"{'cDAL s/step (median / mean)':>28} {'cDAL CPU-s':>10} {'U-Net s/step':>13} {'U-Net CPU-s':>11} "
          f"{'ratio cDAL/U-Net':>17}")
    for cd, un in rows:
        print(f"{cd['preset']:<7} {cd['batch']:>5} {cd['crop']:>5} {cd['params']:>12,} {un['params']:>12,} "
              f"{cd['median']:>13.4f} / {cd['mean']:<12.4f} {cd['cpu']:>10.4f} {un['mean']:>13.4f} {un['cpu']:>11.4f} "
              f"{cd['mean'] / un['mean']:>16.1f}x")
    for cd, un in rows:
        print(f"ratio {cd['preset']}: cDAL step / U-Net step = {cd['mean'] / un['mean']:.2f} "
              f"(CPU seconds: {cd['cpu'] / max(un['cpu'], 1e-9):.2f})")
        if cd["preset"] == "cpu" and device.type == "cpu":
            verdict = "meets" if cd["mean"] <= CPU_TARGET_S else "MISSES"
            ideal = cd["cpu"] / threads
            print(f"cpu target: {cd['mean']:.3f} s wall per full step at batch {cd['batch']} on {threads} thread(s) "
                  f"{verdict} the <= {CPU_TARGET_S} s target; CPU seconds / threads = {ideal:.3f} s "
                  f"({'meets' if ideal <= CPU_TARGET_S else 'misses'} it on an idle machine with perfect scaling)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
