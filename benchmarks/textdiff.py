"""TextDiff speed benchmark: feature extraction, training and prediction cost per preset, plus peak memory.

Run from the repository root::

    OMP_NUM_THREADS=2 python benchmarks/textdiff.py            # cpu preset (and gpu when an accelerator is present)
    python benchmarks/textdiff.py --tiny                       # seconds: only checks the script runs (used by the tests)

Everything is measured in this run on random images of the preset's size (costs do not depend on the
content) with freshly built, untrained networks of the preset's architecture:

* DDPM pre-training: seconds per optimiser step of the substitute backbone, projected to the preset's steps;
* feature extraction: seconds per image, one image per U-Net pass (its 3 noise levels batched) and
  ``images_per_pass`` images per pass (images and noise levels batched, what training uses), and the
  features' size per image;
* training: seconds per step of the trainable part (fusion + head on cached features), x images per epoch,
  against the baseline of the official code, which re-extracts the features at every step
  (``uncached_s_per_step`` = extraction + step; ``cache_speedup`` = the ratio);
* prediction: seconds per image with cached features (``predict_s_per_image``), and for an unseen image,
  extraction included (``predict_unseen_s_per_image``: what evaluation pays);
* streaming: features of more images than the cache's memory bound (2 images here) are written to disk and
  read back; the memory they hold stays at the bound (``stream_mb_in_memory``) and the read-back costs
  ``stream_s_per_image`` (the training loop reads each image's features once per epoch);
* the projected whole MoNuSeg run (pre-training + extraction of train/val/test images + training +
  validations + test prediction) against the 20-minute CPU budget of the ``cpu`` preset;
* peak resident memory of the process (``resource.getrusage``) and, on an accelerator, its peak
  allocated memory.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffseg_core.methods import get_config  # noqa: E402
from diffseg_core.device import accelerator_available, describe_device, pick_device  # noqa: E402
from diffseg_core.textdiff import (DDPM_TRAINING, DiffusionFeatureExtractor, FeatureCache,  # noqa: E402
                                   build_backbone, select_blocks_by_resolution)
from diffseg_core.textdiff import TextDiffConfig, TextDiffModel, ce_dice_loss  # noqa: E402

# MoNuSeg developer subset (../shared/data/monuseg): 12 train (5 labelled used), 3 val, 6 test images
N_UNLABELLED, N_VAL, N_TEST = 12, 3, 6
CPU_BUDGET_MIN = 20.0


def _sync(device: torch.device) -> None:
    if device.type != "cpu" and accelerator_available():
        torch.accelerator.synchronize()


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Mean seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / max(1, repeats)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 2**10


def bench_preset(preset: str, device: torch.device, repeats: int, ddpm_repeats: int,
                 image_size: int | None = None) -> dict[str, float]:
    """Measure one preset on ``device``; returns the figures of one table row."""
    cfg = get_config("textdiff", "monuseg", preset)
    mc = TextDiffConfig.from_dict(cfg.model)
    size = image_size or mc.image_size
    torch.manual_seed(0)
    if device.type != "cpu" and accelerator_available():
        torch.accelerator.reset_peak_memory_stats()
    # DDPM pre-training step of the substitute backbone
    unet = build_backbone(mc.backbone_preset, 3, size).to(device)
    opt = torch.optim.Adam(unet.parameters(), lr=mc.ddpm_lr)
    crop = min(mc.ddpm_crop, size)
    x = torch.randn(mc.ddpm_batch, 3, crop, crop, device=device)
    t = torch.randint(0, 1000, (mc.ddpm_batch,), device=device)

    def ddpm_step() -> None:
        loss = (unet(x, t) - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ddpm_s = _timed(ddpm_step, device, ddpm_repeats)
    # feature extraction (frozen)
    blocks = select_blocks_by_resolution(unet, size, mc.block_fractions)
    ex = DiffusionFeatureExtractor(unet, mc.timesteps, blocks, mc.noise_seed)
    img = torch.rand(1, 3, size, size, device=device)
    extract_s = _timed(lambda: ex.extract(img), device, repeats)
    per_pass = ex.images_per_pass(size, size)          # images x noise levels in one U-Net pass
    imgs = torch.rand(per_pass, 3, size, size, device=device)
    extract_batched_s = _timed(lambda: ex.extract(imgs), device, repeats) / per_pass
    feats = ex.extract(img)
    feature_mb = sum(f.numel() * f.element_size() for f in feats) / 2**20
    # streaming: a training set larger than the cache's memory bound (here 2 images) goes to disk and comes back
    n_stream = 6
    with tempfile.TemporaryDirectory() as spill:
        cache = FeatureCache(max_bytes=int(2 * feature_mb * 2**20), spill_dir=spill)
        for i in range(n_stream):
            cache.put(f"image{i}", [f[0].cpu() for f in feats])
        stream_s = _timed(lambda: [cache.get(f"image{i}") for i in range(n_stream)], device, 1) / n_stream
        stream = cache.stats()
    # training step of the trainable part on cached features (tokens: 10 x 384, as the MiniLM fallback)
    model = TextDiffModel(ex.feature_dims(), 2, mc.dim, 384, mc.heads, mc.dim_head, True, True, mc.head_hidden).to(device)
    topt = torch.optim.Adam(model.parameters(), lr=mc.lr)
    tokens = torch.randn(1, mc.max_length, 384, device=device)
    label = (torch.rand(1, size, size, device=device) < 0.25).long()

    def train_step() -> None:
        loss = ce_dice_loss(model(feats, tokens, None, (size, size)), label, mc.dice_weight)
        topt.zero_grad(set_to_none=True)
        loss.backward()
        topt.step()

    step_s = _timed(train_step, device, repeats)
    model.eval()

    @torch.no_grad()
    def predict() -> None:
        torch.softmax(model(feats, tokens, None, (size, size)), 1)

    predict_s = _timed(predict, device, repeats)

    @torch.no_grad()
    def predict_unseen() -> None:                       # what evaluation pays for an image it has not seen
        torch.softmax(model(ex.extract(img), tokens, None, (size, size)), 1)

    predict_unseen_s = _timed(predict_unseen, device, repeats)
    steps_per_epoch = -(-mc.train_images // mc.batch_size)
    epoch_s = step_s * steps_per_epoch
    n_vals = max(1, cfg.train.steps // cfg.train.val_every)
    whole = (ddpm_s * mc.ddpm_steps + extract_batched_s * mc.train_images + extract_s * (N_VAL + N_TEST)
             + epoch_s * mc.epochs + predict_s * N_VAL * n_vals + predict_s * N_TEST)
    row = {
        "preset": preset, "device": describe_device(device), "image_size": size,
        "ddpm_s_per_step": ddpm_s, "ddpm_steps": mc.ddpm_steps, "extract_s_per_image": extract_s,
        "train_s_per_step": step_s, "train_s_per_epoch": epoch_s, "epochs": mc.epochs,
        # baseline in the same run: the official code re-extracts features at every step (no cache)
        "uncached_s_per_step": extract_s + step_s, "cache_speedup": (extract_s + step_s) / step_s,
        "extract_batched_s_per_image": extract_batched_s, "images_per_pass": per_pass,
        "predict_s_per_image": predict_s, "predict_unseen_s_per_image": predict_unseen_s,
        "feature_mb_per_image": feature_mb, "stream_images": n_stream, "stream_mb_in_memory": stream["mb_in_memory"],
        "stream_mb_on_disk": stream["mb_on_disk"], "stream_s_per_image": stream_s,
        "whole_run_min": whole / 60, "peak_rss_mb": peak_rss_mb(),
        "peak_accel_mb": (torch.accelerator.max_memory_allocated() / 2**20
                          if device.type != "cpu" and accelerator_available() else float("nan")),
        "trainable_params": sum(p.numel() for p in model.parameters()),
        "backbone_params": sum(p.numel() for p in unet.parameters()),
    }
    return row


def print_table(rows: list[dict]) -> None:
    cols = [("preset", "{}"), ("image_size", "{}"), ("ddpm_s_per_step", "{:.3f}"), ("extract_s_per_image", "{:.3f}"),
            ("images_per_pass", "{}"), ("extract_batched_s_per_image", "{:.3f}"), ("feature_mb_per_image", "{:.1f}"),
            ("predict_unseen_s_per_image", "{:.3f}"),
            ("train_s_per_step", "{:.3f}"), ("uncached_s_per_step", "{:.3f}"), ("cache_speedup", "{:.1f}x"),
            ("train_s_per_epoch", "{:.2f}"), ("predict_s_per_image", "{:.3f}"),
            ("stream_mb_in_memory", "{:.0f}"), ("stream_mb_on_disk", "{:.0f}"), ("stream_s_per_image", "{:.3f}"),
            ("whole_run_min", "{:.1f}"), ("peak_rss_mb", "{:.0f}"), ("peak_accel_mb", "{:.0f}"),
            ("trainable_params", "{:,}"), ("backbone_params", "{:,}")]
    cells = [[fmt.format(r[c]) for c, fmt in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, (c, _) in enumerate(cols)]
    print("  ".join(c.ljust(w) for (c, _), w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="smoke preset, 1 repeat: only checks that the script runs")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions per measurement (after one warm-up)")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    rows = []
    if args.tiny:
        rows.append(bench_preset("smoke", torch.device("cpu"), 1, 1))
    else:
        rows.append(bench_preset("cpu", torch.device("cpu"), args.repeats, args.repeats))
        if accelerator_available():
            rows.append(bench_preset("gpu", pick_device(), args.repeats, args.repeats))
        else:
            print("gpu: skipped (no accelerator present)")
    print_table(rows)
    for r in rows:
        line = (f"{r['preset']} on {r['device']}: projected whole 5-image MoNuSeg run {r['whole_run_min']:.1f} min "
                f"(DDPM {r['ddpm_s_per_step'] * r['ddpm_steps'] / 60:.1f} min + features + "
                f"{r['epochs']} epochs x {r['train_s_per_epoch']:.1f} s + evaluation)")
        if r["preset"] == "cpu":
            line += f"; {r['whole_run_min'] / CPU_BUDGET_MIN:.2f} of the {CPU_BUDGET_MIN:.0f}-minute budget"
        print(line)
    return rows


if __name__ == "__main__":
    main()
