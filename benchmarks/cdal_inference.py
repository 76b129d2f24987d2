"""cDAL inference, seconds per whole image: today's sampler path against the first implementation, same run.

Run from the repository root::

    OMP_NUM_THREADS=2 python benchmarks/cdal_inference.py --run RUN_DIR --data ../shared/data/monuseg
    python benchmarks/cdal_inference.py                      # cpu preset, random weights, synthetic images
    python benchmarks/cdal_inference.py --tiny               # seconds: only checks the script runs (tests)

What it measures, on the same images, in this run:

* **baseline**: a faithful copy of the first implementation (below, ``baseline_*``): MONAI's sliding window
  with 16 tiles per ``predict`` call, each call re-seeded, Algorithm 2 with the image encoder recomputed
  inside every generator call (every step and every member), one batch of 5 x 16 chains, fp32, NCHW;
* **now**: :func:`diffseg_core.evaluate.predict_case` with the method's default plan
  (:func:`diffseg_core.cdal.sampling.default_plan`), and the same with every other plan in ``--plans`` (chains
  per generator call, channels-last, bf16 autocast where the CPU has native bf16; fp16/bf16 on an
  accelerator), so a layout or precision choice is kept only where this table shows it helps;
* per plan: seconds per image (wall and process CPU seconds; CPU seconds are robust to other jobs on a shared
  machine, wall seconds are what a user waits), images per second, the speed-up over the baseline, the
  largest probability difference against the baseline, the fraction of pixels whose mask differs and the Dice
  against the ground truth;
* peak resident memory of the process and, on an accelerator, its peak allocated memory;
* with ``--windows 128 512``: the default plan with larger windows than the training crop (whole 512-px images
  at 512), which change what the network computes (its self-attention and GroupNorm see the whole window,
  see :mod:`diffseg_core.cdal.sampling`): their Dice next to the tile path's, and their cost.

Targets (issue "Speed"): ``cpu`` preset <= 2 s per 512 x 512 MoNuSeg image on 2 idle cores, >= 3x faster than
the baseline measured here, predictions identical (fp32: equal up to float rounding; the Dice of both is
printed). With ``--device auto`` on a machine with an accelerator, the accelerator is measured after the CPU.
"""
from __future__ import annotations

import argparse
import math
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from monai.inferers import sliding_window_inference

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffseg_core.cdal import normalize_image, x0_to_probs  # noqa: E402
from diffseg_core.cdal.generator import draw_latent  # noqa: E402
from diffseg_core.cdal.sampling import (ACCELERATOR_BATCH_PIXELS, SamplerPlan, cpu_supports_bf16,  # noqa: E402
                                        default_plan, summarise_samples)
from diffseg_core.device import accelerator_available, describe_device, pick_device, seed_everything  # noqa: E402
from diffseg_core.evaluate import predict_case  # noqa: E402
from diffseg_core.metrics import segmentation_scores  # noqa: E402
from diffseg_core.schedule import sample_posterior  # noqa: E402


# ------------------------------------------------------------------------------------------------
# the baseline: the first implementation, copied faithfully (commit 1059d8a, cdal/sampling.py, method.py and
# evaluate.py); do not "improve" it, it is what the speed-up is measured against
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def baseline_sample_cdal(G, sched, image, n_samples=5, use_latent=True, generator=None):
    b, _, h, w = image.shape
    n = n_samples
    img = image.repeat(n, 1, 1, 1)                                     # (N*B, Ci, H, W), member-major
    x = torch.randn(n * b, G.label_channels, h, w, device=image.device, dtype=image.dtype, generator=generator)
    for code_t in reversed(range(sched.T)):
        t = torch.full((n * b,), code_t, dtype=torch.long, device=image.device)
        z = draw_latent(G, n * b, use_latent, image, generator)           # a fresh z at every step
        x0_hat = G(x, t, img, z)                                          # the encoder runs inside, every call
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        x = sample_posterior(sched, x0_hat, x, t, noise)
    return summarise_samples(x.reshape(n, b, *x.shape[1:]))


@torch.no_grad()
def baseline_predict(method, image):
    gen = torch.Generator(device=image.device)
    gen.manual_seed(int(method.cfg.seed))
    # the one post-merge change: sample the generator predict samples (the EMA copy when the run keeps one, as
    # main's predict does), so both paths use the same weights; the sampling itself is the first implementation
    r = baseline_sample_cdal(method.sampling_generator(), method.sched, normalize_image(image.float(), method.model_cfg.image_norm),
                             n_samples=method.n_ensemble, use_latent=method.model_cfg.use_latent, generator=gen)
    return x0_to_probs(r["mean"] * 2.0 - 1.0)


@torch.no_grad()
def baseline_predict_case(method, case) -> np.ndarray:
    method.eval()
    image = torch.from_numpy(np.ascontiguousarray(case.image))[None].to(method.device)
    roi = method.cfg.data.crop
    probs = sliding_window_inference(image, roi_size=(roi, roi), sw_batch_size=16,
                                     predictor=lambda x: baseline_predict(method, x),
                                     overlap=method.cfg.data.overlap, mode="constant")
    return probs[0].float().cpu().numpy()


# ------------------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 2**10


def _sync(device: torch.device) -> None:
    if device.type != "cpu" and accelerator_available():
        torch.accelerator.synchronize()


def _time_cases(fn: Callable[[Any], np.ndarray], cases, device, repeats: int) -> tuple[float, float, list[np.ndarray]]:
    """(median wall s / image, median CPU s / image, predictions): one warm-up image, then ``repeats`` passes."""
    fn(cases[0])
    _sync(device)
    walls, cpus, preds = [], [], []
    for r in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = [fn(c) for c in cases]
        _sync(device)
        walls.append((time.perf_counter() - w0) / len(cases))
        cpus.append((time.process_time() - c0) / len(cases))
        if r == 0:
            preds = out
    return statistics.median(walls), statistics.median(cpus), preds


def _dice(preds: list[np.ndarray], cases, k: int) -> float:
    return float(segmentation_scores([p.argmax(0).astype(np.int64) for p in preds], [c.label for c in cases], k)["dice_mean"])


def _load(args, device):
    from diffseg_core.data import load_dataset
    from diffseg_core.methods import get_config
    from diffseg_core.methods import get_method_class

    if args.run:
        from diffseg_core.train import load_run

        method, cfg, _ = load_run(args.run, device=device)
        source = f"trained run {args.run}"
    else:
        cfg = get_config("cdal", args.dataset, args.preset)
        ds = load_dataset("synthetic", None, cfg.data, seed=0)
        seed_everything(0)
        method = get_method_class("cdal")(cfg, ds.info(), device)
        with torch.no_grad():      # move G off its near-zero init so samples differ (the speed does not depend on it)
            for p in method.nets["G"].parameters():
                p.add_(torch.randn_like(p) * 0.05)
        method.n_ensemble = method.model_cfg.ensemble
        source = f"random weights, {args.preset} preset"
    if args.data:
        ds = load_dataset(cfg.dataset, args.data, cfg.data, seed=cfg.seed)
    else:
        ds = load_dataset("synthetic", None, cfg.data, seed=cfg.seed)
    cases = ds.split(args.split) or ds.split("all")
    return method, cfg, cases[: args.images], f"{source}; {ds.source} images ({ds.name}, {args.split})"


def _plans(device: torch.device, only_default: bool) -> list[tuple[str, SamplerPlan]]:
    d = default_plan(device)
    if only_default:
        return [("default", d)]
    if device.type == "cpu":
        plans = [("default", d),
                 ("fp32 NCHW, 80 chains (encoder once only)", SamplerPlan(80 * 64 * 64, False, "fp32")),
                 ("fp32 NCHW, 16 chains", SamplerPlan(16 * 64 * 64, False, "fp32")),
                 ("fp32 CL, 1 chain", SamplerPlan(64 * 64, True, "fp32")),
                 ("fp32 CL, 4 chains", SamplerPlan(4 * 64 * 64, True, "fp32")),
                 ("fp32 CL, 80 chains", SamplerPlan(80 * 64 * 64, True, "fp32"))]
        if cpu_supports_bf16():
            plans += [("bf16 CL, 16 chains", SamplerPlan(16 * 64 * 64, True, "bf16")),
                      ("bf16 NCHW, 16 chains", SamplerPlan(16 * 64 * 64, False, "bf16"))]
        return plans
    return [("default", d), ("fp32 CL, large", SamplerPlan(ACCELERATOR_BATCH_PIXELS, True, "fp32")),
            ("fp16 CL, large", SamplerPlan(ACCELERATOR_BATCH_PIXELS, True, "fp16"))]


def bench_device(args, device: torch.device) -> list[dict[str, Any]]:
    method, cfg, cases, source = _load(args, device)
    k = method.info.num_classes
    if device.type != "cpu":
        torch.accelerator.reset_peak_memory_stats()
    crop = cfg.data.crop
    print(f"\n== {describe_device(device)} | {source} | {len(cases)} image(s) of {cases[0].image.shape[1]}x"
          f"{cases[0].image.shape[2]} | {crop}-px tiles, {method.n_ensemble} members x T={method.model_cfg.timesteps}")
    print(f"{'path':<72} {'s/img wall':>10} {'CPU-s/img':>9} {'img/s':>6} {'speed-up':>8} {'max|dp|':>8} "
          f"{'mask diff':>9} {'Dice':>7}", flush=True)

    def show(r: dict[str, Any]) -> None:
        print(f"{r['path']:<72} {r['wall']:>10.3f} {r['cpu']:>9.3f} {1 / r['wall']:>6.2f} {base_wall / r['wall']:>7.2f}x "
              f"{r['max_dp']:>8.1e} {r['mask_diff']:>9.2e} {r['dice']:>7.4f}", flush=True)

    base_wall, base_cpu, base_preds = _time_cases(lambda c: baseline_predict_case(method, c), cases, device, args.repeats)
    rows = [{"path": "baseline (first implementation)", "wall": base_wall, "cpu": base_cpu, "max_dp": 0.0,
             "mask_diff": 0.0, "dice": _dice(base_preds, cases, k)}]
    show(rows[-1])
    for name, plan in _plans(device, args.tiny or args.plans == "default"):
        method.plan = plan
        wall, cpu, preds = _time_cases(lambda c: predict_case(method, c), cases, device, args.repeats)
        rows.append({"path": f"now: {name} ({plan.resolved(device).describe(crop, crop)})", "wall": wall, "cpu": cpu,
                     "max_dp": max(float(np.abs(p - q).max()) for p, q in zip(preds, base_preds)),
                     "mask_diff": float(np.mean([(p.argmax(0) != q.argmax(0)).mean() for p, q in zip(preds, base_preds)])),
                     "dice": _dice(preds, cases, k)})
        show(rows[-1])
    method.plan = default_plan(device)
    for win in args.windows:
        if win % method.nets["G"].divisor:
            print(f"window {win}: skipped (not divisible by {method.nets['G'].divisor})")
            continue
        method.inference_roi = lambda w=win: w      # an experiment: larger windows than the training crop
        wall, cpu, preds = _time_cases(lambda c: predict_case(method, c), cases, device, 1)
        rows.append({"path": f"window {win} px (default plan)", "wall": wall, "cpu": cpu,
                     "max_dp": max(float(np.abs(p - q).max()) for p, q in zip(preds, base_preds)),
                     "mask_diff": float(np.mean([(p.argmax(0) != q.argmax(0)).mean() for p, q in zip(preds, base_preds)])),
                     "dice": _dice(preds, cases, k)})
        show(rows[-1])
        del method.inference_roi
    peak_acc = torch.accelerator.max_memory_allocated() / 2**20 if device.type != "cpu" else float("nan")
    now = rows[1]
    print(f"{device.type}: default plan {now['wall']:.3f} s per image ({1 / now['wall']:.2f} images/s) vs baseline "
          f"{base_wall:.3f} s: speed-up {base_wall / now['wall']:.2f}x wall, {base_cpu / now['cpu']:.2f}x CPU seconds "
          f"(target >= 3x); Dice {now['dice']:.4f} vs {rows[0]['dice']:.4f} (|diff| {abs(now['dice'] - rows[0]['dice']):.4f}); "
          f"peak RSS {peak_rss_mb():.0f} MiB" + (f", peak accelerator memory {peak_acc:.0f} MiB" if device.type != "cpu" else ""))
    for r in rows:
        r.update(device=device.type, peak_rss_mb=peak_rss_mb(), peak_accel_mb=peak_acc)
    if device.type == "cpu" and (args.breakdown or args.tiny):
        breakdown(method, cases, device)
    return rows


def breakdown(method, cases, device: torch.device) -> dict[str, float]:
    """Where the default plan's time goes on a CPU: one image through ``predict_case`` under ``torch.profiler`` on
    one thread (one worker), split into convolutions and everything else (normalisation, element-wise steps,
    attention, Python). The convolutions alone bound the speed from below: on ``c`` cores, with every core busy
    and nothing else left, an image still takes (convolution seconds) / c."""
    from torch.profiler import ProfilerActivity, profile

    method.plan = replace(default_plan(device), workers=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predict_case(method, cases[0])                                   # warm-up
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            predict_case(method, cases[0])
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
        method.plan = default_plan(device)
    ops = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in ops) / 1e6
    conv = sum(e.self_cpu_time_total for e in ops if "convolution" in e.key) / 1e6
    cores = max(1, threads)
    print(f"\n== where the time goes (default plan, 1 thread, 1 image, torch.profiler): {wall:.2f} s per image, "
          f"of which in PyTorch operations {total:.2f} s: convolutions {conv:.2f} s ({conv / total:.0%}), "
          f"the rest {total - conv:.2f} s")
    print(f"   convolutions alone on {cores} core(s): >= {conv / cores:.2f} s per image even if everything else "
          f"took no time; the rest at today's cost adds {(total - conv) / cores:.2f} s")
    return {"one_thread_s": wall, "ops_s": total, "conv_s": conv, "cores": cores}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="trained cDAL run folder (default: random weights of --preset)")
    p.add_argument("--data", default=None, help="dataset folder (default: synthetic images at the working size)")
    p.add_argument("--dataset", default="monuseg", help="dataset of the random-weights network (default monuseg)")
    p.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "gpu", "paper"])
    p.add_argument("--split", default="test")
    p.add_argument("--images", type=int, default=3, help="images timed per path (default 3)")
    p.add_argument("--repeats", type=int, default=1, help="timed passes over the images (median; default 1)")
    p.add_argument("--windows", type=int, nargs="*", default=[], help="also try these window sizes (e.g. 128 512)")
    p.add_argument("--device", default="auto", help="'auto' (default): the CPU, then the accelerator if one is present; 'cpu': the CPU only")
    p.add_argument("--plans", choices=["all", "default"], default="all",
                   help="'all' (default): the default plan and the alternatives; 'default': the default plan only")
    p.add_argument("--tiny", action="store_true", help="smoke preset, 1 image, default plan only")
    p.add_argument("--breakdown", action="store_true",
                   help="also profile one image on one thread: seconds in convolutions (a lower bound) and the rest")
    args = p.parse_args(argv)
    if args.tiny:
        args.preset, args.images, args.repeats, args.run, args.data = "smoke", 1, 1, None, None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CPU native bf16: {cpu_supports_bf16()}")
    rows = bench_device(args, torch.device("cpu"))
    if args.device == "auto":
        if accelerator_available():
            rows += bench_device(args, pick_device("auto"))
        else:
            print("accelerator: skipped (none present)")
    return rows


if __name__ == "__main__":
    main()
