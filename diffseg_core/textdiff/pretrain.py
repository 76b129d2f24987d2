"""Pre-training the substitute backbone as a DDPM on the dataset's unlabelled images (epsilon prediction, MSE).

TextDiff reads a *pre-trained* diffusion U-Net. Without ADM-256's ImageNet weights (offline), the project
trains its own: TextDiff's Eq. 1 (the forward step) composed into the closed-form marginal q(x_t | x_0), on
the 1000-step linear schedule of ADM
(:func:`diffseg_core.schedule.ddpm_linear_schedule`), random crops with flips, Adam, for a number of steps
set by the preset (:data:`DDPM_TRAINING`). This is a second, small training loop on purpose: it trains a
network that the method then freezes, and it has none of the segmentation loop's concerns (labels,
validation, model selection).

Pre-training is the slowest part of a TextDiff chapter at the ``cpu`` preset, and chapters 10, 11 and 12 pre-train
the same backbone (same images, settings and seed). A backbone is therefore cached under a key of everything that
determines its weights (:func:`backbone_cache_key`): in the run folder, and in a shared folder when one is given
(``cache_dir``, or the ``DIFFSEG_CACHE`` environment variable, which the main job sets for its chapters; see the
book's reproducing page). A cached backbone is the one the same call would train.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..device import pick_device
from ..schedule import ddpm_linear_schedule, q_sample
from .backbone import BACKBONE_FILE, CHECKPOINT_FORMAT, backbone_arch, build_from_arch, freeze, jsonable_arch

__all__ = ["DDPM_TRAINING", "CACHE_ENV", "pretrain_ddpm", "backbone_cache_key", "shared_cache_dir"]

#: environment variable naming a folder shared between runs for artefacts keyed by their inputs
#: (pre-trained backbones in ``<folder>/backbones/<key>.pt``); unset: nothing is shared
CACHE_ENV = "DIFFSEG_CACHE"

#: DDPM pre-training per preset: optimiser steps, batch size, crop size (px), learning rate.
DDPM_TRAINING: dict[str, dict[str, Any]] = {
    "smoke": dict(steps=4, batch_size=2, crop=32, lr=1e-3),
    "cpu": dict(steps=400, batch_size=8, crop=64, lr=1e-3),
    "gpu": dict(steps=6000, batch_size=16, crop=128, lr=2e-4),
    "paper": dict(steps=50000, batch_size=8, crop=256, lr=1e-4),
}


def random_crops(images: torch.Tensor, crop: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random ``crop`` x ``crop`` windows with random flips from ``images`` ``(N, C, H, W)``."""
    N, C, H, W = images.shape
    crop = min(crop, H, W)
    idx = torch.randint(N, (n,), generator=gen)
    ys = torch.randint(H - crop + 1, (n,), generator=gen)
    xs = torch.randint(W - crop + 1, (n,), generator=gen)
    out = torch.stack([images[i, :, y:y + crop, x:x + crop] for i, y, x in zip(idx.tolist(), ys.tolist(), xs.tolist())])
    flip_h = torch.rand(n, generator=gen) < 0.5
    flip_v = torch.rand(n, generator=gen) < 0.5
    out[flip_h] = out[flip_h].flip(-1)
    out[flip_v] = out[flip_v].flip(-2)
    return out


def backbone_cache_key(images: torch.Tensor, arch: dict[str, Any], settings: dict[str, Any], seed: int
                       ) -> tuple[str, dict[str, Any]]:
    """The key of a pre-trained backbone: everything that determines its weights.

    That is the training images (a SHA-256 of their values and shape: the dataset and which of its images),
    the architecture, the input channels, the DDPM settings (steps, batch, crop, learning rate), the seed
    and the checkpoint format. Returns the hex key and the fields it was computed from (the image hash
    stands for the images). The device is not part of it: a backbone pre-trained on a GPU serves a CPU run.
    """
    data = images.detach().to("cpu", torch.float32).contiguous()
    fields = {"format": CHECKPOINT_FORMAT, "arch": jsonable_arch(arch), "in_channels": int(images.shape[1]),
              "settings": {k: (float(v) if k == "lr" else int(v)) for k, v in sorted(settings.items())},
              "seed": int(seed), "images": {"shape": list(data.shape),
                                            "sha256": hashlib.sha256(data.numpy().tobytes()).hexdigest()}}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest(), fields


def shared_cache_dir(cache_dir: str | Path | None = None) -> Path | None:
    """The shared backbone folder: ``cache_dir/backbones``, else ``$DIFFSEG_CACHE/backbones``, else ``None``."""
    root = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or None
    return Path(root) / "backbones" if root else None


def _read_cached(path: Path, shared: bool) -> dict[str, Any] | None:
    """The checkpoint at ``path``, ``None`` when there is none. An unreadable file in the shared folder is a miss
    (it is said, and a new backbone replaces it); in a run folder it is an error, as for every checkpoint there."""
    if not path.is_file():
        return None
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        if not shared:
            raise
        print(f"backbone: ignoring the shared cache file: {exc}; training a new one")
        return None
    return ckpt if isinstance(ckpt, dict) else {}


def _key_differences(have: dict[str, Any], want: dict[str, Any]) -> str:
    names = {"images": "training images", "seed": "seed", "arch": "architecture", "in_channels": "input channels",
             "settings": "DDPM settings", "format": "checkpoint format"}
    diff = [names.get(k, k) for k in want if have.get(k) != want.get(k)]
    return ", ".join(diff) if diff else "no recorded key (an older file)"


def pretrain_ddpm(images: torch.Tensor, preset: str, steps: int | None = None, run_dir: str | Path | None = None,
                  seed: int = 0, progress: bool = True, batch_size: int | None = None, crop: int | None = None,
                  lr: float | None = None, device: torch.device | None = None,
                  cache_dir: str | Path | None = None) -> tuple[nn.Module, list[float]]:
    """Train the substitute backbone as a DDPM on unlabelled images (epsilon prediction, MSE).

    Args:
        images: ``(N, C, H, W)`` in [0, 1] (mapped to [-1, 1] as ADM's inputs).
        preset: architecture and default training length (:data:`BACKBONE_ARCHS`, :data:`DDPM_TRAINING`).
        steps, batch_size, crop, lr: override the preset's training settings. Training uses random
            ``crop`` x ``crop`` windows with flips; features are later read on whole images.
        run_dir: when given, ``run_dir/backbone.pt`` is a cache: it is **reused** (and the log says so) when its
            key (:func:`backbone_cache_key`: the images, architecture, DDPM settings and seed) equals this call's;
            otherwise a new backbone is trained and written over it atomically (the log says why).
        seed: seeds the crops, time steps and noise.
        device: where to train (default: :func:`~diffseg_core.device.pick_device`).
        cache_dir: a folder shared between runs (default: the ``DIFFSEG_CACHE`` environment variable; unset: none).
            A backbone of the same key in ``cache_dir/backbones/<key>.pt`` is reused (and copied into ``run_dir``);
            a newly trained one is written there too, atomically.

    Returns:
        the frozen U-Net (eval mode, no gradients) and the per-step losses.
    """
    if images.dim() != 4:
        raise ValueError(f"pretrain_ddpm: images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if float(images.min()) < -1e-4 or float(images.max()) > 1 + 1e-4:
        raise ValueError(f"pretrain_ddpm: images must be in [0, 1], got [{float(images.min()):.3g}, {float(images.max()):.3g}]")
    settings = dict(DDPM_TRAINING[preset] if preset in DDPM_TRAINING else {})
    if not settings:
        raise ValueError(f"unknown backbone preset {preset!r}; choose one of {', '.join(DDPM_TRAINING)}")
    for k, v in dict(steps=steps, batch_size=batch_size, crop=crop, lr=lr).items():
        if v is not None:
            settings[k] = v
    arch = backbone_arch(preset)
    in_channels = int(images.shape[1])
    device = device or pick_device()
    path = Path(run_dir) / BACKBONE_FILE if run_dir is not None else None
    key, key_fields = backbone_cache_key(images, arch, settings, seed)
    shared_dir = shared_cache_dir(cache_dir)
    shared = shared_dir / f"{key}.pt" if shared_dir is not None else None
    for where in (path, shared):
        ckpt = _read_cached(where, shared=where == shared) if where is not None else None
        if ckpt is None:
            continue
        if ckpt.get("cache_key") != key:
            if where == path:
                print(f"backbone: not reusing {path}: it was trained for other inputs (differs in: "
                      f"{_key_differences(ckpt.get('cache_key_fields', {}), key_fields)}); "
                      + ("looking in the shared cache" if shared is not None else "training a new one"))
            continue
        unet = build_from_arch(arch, in_channels)
        unet.load_state_dict(ckpt["state_dict"])
        if where == shared and path is not None:
            save_checkpoint(ckpt, path)           # the run folder stays self-contained
        print(f"backbone: reusing the cached {where} (same images, seed, architecture and DDPM settings; key "
              f"{key[:12]}; {ckpt['steps']} DDPM steps, final loss {ckpt['losses'][-1]:.4f})")
        return freeze(unet.to(device)), list(ckpt["losses"])

    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    unet = build_from_arch(arch, in_channels).to(device)
    sched = ddpm_linear_schedule(1000)  # ADM's schedule: 1000 linear steps, beta 1e-4 -> 0.02
    opt = torch.optim.Adam(unet.parameters(), lr=float(settings["lr"]))
    data = images.float().cpu() * 2 - 1  # ADM's inputs are in [-1, 1]
    losses: list[float] = []
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    unet.train()
    for _ in tqdm(range(int(settings["steps"])), desc="DDPM pre-training", disable=not progress, leave=False):
        x0 = random_crops(data, int(settings["crop"]), int(settings["batch_size"]), gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=gen).to(device)
        xt = q_sample(sched, x0, t + 1, noise)  # q(x_t | x_0), TextDiff Eq. 1 composed; network time t is level t + 1
        loss = F.mse_loss(unet(xt, t), noise)  # epsilon prediction
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - t0
    unet = freeze(unet)
    payload = {"format": CHECKPOINT_FORMAT, "cache_key": key, "cache_key_fields": key_fields,
               "arch": jsonable_arch(arch), "in_channels": in_channels,
               "preset": preset, "steps": int(settings["steps"]), "settings": settings, "seed": int(seed),
               "losses": losses, "seconds": seconds, "n_images": int(images.shape[0]),
               "state_dict": {k: v.cpu() for k, v in unet.state_dict().items()}}
    for where in (path, shared):
        if where is not None:
            save_checkpoint(payload, where)
    if progress and losses:
        print(f"backbone: DDPM pre-training {len(losses)} steps in {seconds:.0f} s, loss {losses[0]:.3f} -> "
              f"{sum(losses[-10:]) / len(losses[-10:]):.3f}" + (f"; saved {path}" if path else ""))
    return unet, losses
