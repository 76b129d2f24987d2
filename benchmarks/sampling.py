"""Seconds per image: cDAL's T-step sampler vs a 100-step DDPM sampler with the **same network** (D22).

Run from the repository root::

    python benchmarks/sampling.py                        # cpu preset, T = 4, 5 samples vs DDPM T = 100
    python benchmarks/sampling.py --preset smoke --ddpm-steps 10 --samples 2 --repeats 1   # the test's tiny mode
    python benchmarks/sampling.py --run /tmp/runs/cdal_cpu   # a trained generator (speed does not depend on it)

Both samplers run the same generator on the same window (the preset's training crop, the unit the sliding-
window evaluation feeds to ``predict``) in one run, both as Algorithm 2 is written (one batch of all members,
the image encoder once per window). A third row times the same cDAL samples arranged for the hardware
(:func:`~diffseg_core.cdal.sampling.sample_cdal_ensemble` with the device's default plan); whole-image
timings against the first implementation are in ``benchmarks/cdal_inference.py``. The paper's claim (1 s vs 60 s per MoNuSeg image on a
Quadro RTX 6000, T = 4 vs SegDiff's T = 100) is a ratio of network evaluations; this script prints the
measured ratio next to the ratio of network evaluations per image, and the estimated seconds per full
working-size image (tiles x seconds per window). Expect a ratio close to 100/4 = 25.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffseg_core.cdal import CDALConfig, build_generator, ddpm_sample_same_net, sample_cdal  # noqa: E402
from diffseg_core.cdal.sampling import default_plan, sample_cdal_ensemble  # noqa: E402
from diffseg_core.methods import get_config  # noqa: E402
from diffseg_core.device import describe_device, pick_device, seed_everything  # noqa: E402
from diffseg_core.schedule import vp_schedule  # noqa: E402

CHANNELS = {"monuseg": (1, 3), "cxr": (1, 1), "hippocampus": (3, 1)}


def _sync(device: torch.device) -> None:
    if device.type != "cpu":
        acc = getattr(torch, "accelerator", None)
        if acc is not None and hasattr(acc, "synchronize"):
            acc.synchronize()


def _time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    _sync(device)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "gpu", "paper"])
    ap.add_argument("--dataset", default="monuseg", choices=sorted(CHANNELS))
    ap.add_argument("--run", default=None, help="run folder with best.pt (optional; default: random weights)")
    ap.add_argument("--samples", type=int, default=5, help="ensemble members per image (default 5)")
    ap.add_argument("--timesteps", type=int, default=None, help="cDAL T (default: the preset's, 4 for MoNuSeg)")
    ap.add_argument("--ddpm-steps", type=int, default=100, help="steps of the many-step sampler (default 100)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions (median; default 3)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    device = pick_device(args.device)
    seed_everything(0)
    if args.run:
        from diffseg_core.train import load_run

        method, cfg, _ = load_run(args.run, device=device)
        G = method.nets["G"]
        mc = method.model_cfg
    else:
        cfg = get_config("cdal", args.dataset, args.preset)
        mc = CDALConfig.from_dict(cfg.model)
        label_ch, image_ch = CHANNELS[args.dataset]
        G = build_generator(mc, label_ch, image_ch).to(device)
    G.eval()
    T = args.timesteps or mc.timesteps
    sched = vp_schedule(T).to(device)
    crop = cfg.data.crop
    size = cfg.data.working_size or crop
    tiles = math.ceil(size / crop) ** 2
    image = torch.randn(1, G.image_channels, crop, crop, device=device)
    print(f"device: {describe_device(device)} | G {G.num_parameters():,} parameters ({'trained: ' + args.run if args.run else 'random weights'}) "
          f"| window {crop}x{crop}, {tiles} windows per {size}x{size} image | {args.samples} samples")

    t_cdal = _time(lambda: sample_cdal(G, sched, image, n_samples=args.samples), args.repeats, device)
    plan = default_plan(device)
    t_fast = _time(lambda: sample_cdal_ensemble(G, sched, image, n_samples=args.samples, plan=plan), args.repeats, device)
    t_ddpm = _time(lambda: ddpm_sample_same_net(G, image, T=args.ddpm_steps, n_samples=args.samples, net_sched=sched),
                   args.repeats, device)
    nfe_cdal, nfe_ddpm = args.samples * T, args.samples * args.ddpm_steps
    print()
    print(f"{'sampler':<28} {'NFE/window':>10} {'NFE/image':>10} {'s/window':>10} {'s/image (est.)':>15}")
    print(f"{'cDAL (T=' + str(T) + ')':<28} {nfe_cdal:>10} {nfe_cdal * tiles:>10} {t_cdal:>10.4f} {t_cdal * tiles:>15.2f}")
    print(f"{'DDPM same net (T=' + str(args.ddpm_steps) + ')':<28} {nfe_ddpm:>10} {nfe_ddpm * tiles:>10} "
          f"{t_ddpm:>10.4f} {t_ddpm * tiles:>15.2f}")
    print(f"{'cDAL, arranged (T=' + str(T) + ')':<28} {nfe_cdal:>10} {nfe_cdal * tiles:>10} {t_fast:>10.4f} "
          f"{t_fast * tiles:>15.2f}   <- sample_cdal_ensemble, plan: {plan.resolved(device).describe(crop, crop)}")
    print(f"ratio DDPM/cDAL: {t_ddpm / t_cdal:.1f}x measured, {nfe_ddpm / nfe_cdal:.1f}x in network evaluations "
          f"(paper: 60 s vs 1 s per MoNuSeg image)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
