"""Diffusion features for TextDiff: a frozen denoising U-Net read out at a few noise levels.

TextDiff (Feng, MICCAI 2024, Sec. 2.1), following ddpm-segmentation, noises the image with the forward
process (Eq. 1)::

    q(x_t | x_0) = N(x_t; sqrt(abar_t) x_0, (1 - abar_t) I),   abar_t = prod_{s<=t} (1 - beta_s)

i.e. ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (Eq. 2), runs the frozen denoiser once per
``t in {50, 150, 250}`` of a 1000-step linear schedule (beta 1e-4 -> 0.02) with **one shared noise
tensor** ``eps``, and reads the outputs of chosen decoder blocks with forward hooks. For each block the
three steps are **concatenated along channels at the block's own resolution** (method.md §3 "Features").

The paper's backbone is OpenAI's ImageNet 256x256 unconditional ADM (553 M parameters,
``256x256_diffusion_uncond.pt``). It cannot be downloaded here (no model hub, method.md §6) and costs
~24 s per forward on 2 CPU threads, so the default **substitute** is a small MONAI
``DiffusionModelUNet`` trained with ``DDPMScheduler`` (same 1000-step linear schedule, epsilon
prediction) by :func:`pretrain_ddpm` on the *unlabelled* training images of the chosen dataset, for a
short run set by the preset, on random crops (the U-Net is convolutional, so features are then read on
whole images). This removes the large-scale natural-image pre-training the paper credits for its gains;
the notebooks say so. A user checkpoint can replace it (:func:`load_backbone`).

Blocks (method.md §6, T6): ADM's block indices ({6, 8, 12, 16} for MoNuSeg = 32, 64, 128, 256 px of a
256 input) only mean something for ADM's 18-block decoder. We choose blocks by **relative resolution**
(1/8, 1/4, 1/2, 1 of the input, the same as the MoNuSeg config) with :func:`select_blocks_by_resolution`.
A "decoder block" here is one layer of a MONAI up-block (a ResNet block, followed by its attention layer
when the level has one), the closest analogue of an ADM ``output_blocks`` entry; per resolution we take
the **last** layer of the level (the most decoded features at that scale, before up-sampling).
"""
from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

BACKBONE_FILE = "backbone.pt"
CHECKPOINT_FORMAT = "diffseg-ddpm-backbone/1"

#: MONAI ``DiffusionModelUNet`` arguments per preset (2-D; ``in_channels``/``out_channels`` added by
#: :func:`build_backbone`). ``paper`` mirrors ADM-256's shape (6 levels, widths 256 x (1,1,2,2,4,4),
#: 2 ResNet blocks per level, attention at 32/16/8 px with 64 channels per head, res-block up/down), but
#: trained from scratch on the dataset: the ImageNet weights are not loadable offline.
BACKBONE_ARCHS: dict[str, dict[str, Any]] = {
    "smoke": dict(channels=(16, 16, 32), num_res_blocks=1, attention_levels=(False, False, False),
                  norm_num_groups=8, num_head_channels=8),
    "cpu": dict(channels=(32, 64, 64, 128), num_res_blocks=1, attention_levels=(False, False, False, False),
                norm_num_groups=16, num_head_channels=32),
    "gpu": dict(channels=(64, 128, 256, 256), num_res_blocks=2, attention_levels=(False, False, True, True),
                norm_num_groups=32, num_head_channels=32),
    "paper": dict(channels=(256, 256, 512, 512, 1024, 1024), num_res_blocks=2,
                  attention_levels=(False, False, False, True, True, True), norm_num_groups=32,
                  num_head_channels=64, resblock_updown=True),
}

#: DDPM pre-training per preset: optimiser steps, batch size, crop size (px), learning rate.
DDPM_TRAINING: dict[str, dict[str, Any]] = {
    "smoke": dict(steps=4, batch_size=2, crop=32, lr=1e-3),
    "cpu": dict(steps=400, batch_size=8, crop=64, lr=1e-3),
    "gpu": dict(steps=6000, batch_size=16, crop=128, lr=2e-4),
    "paper": dict(steps=50000, batch_size=8, crop=256, lr=1e-4),
}


# ---------------------------------------------------------------------------------------------
# The forward process (pure)
# ---------------------------------------------------------------------------------------------
def ddpm_alpha_bar(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """``abar_t = prod_{s<=t} (1 - beta_s)`` for the linear schedule, ``(T,)`` float64 (index = 0-based ``t``)."""
    if T < 1 or not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"bad DDPM schedule: T={T}, beta_start={beta_start}, beta_end={beta_end}")
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)  # linear beta schedule
    return torch.cumprod(1.0 - betas, dim=0)


def ddpm_signal_levels(timesteps: Sequence[int], T: int = 1000, beta_start: float = 1e-4,
                       beta_end: float = 0.02) -> torch.Tensor:
    """Signal amplitude ``sqrt(abar_t)`` of Eq. 2 at each ``t``, ``(n,)`` float64.

    The noise amplitude is ``sqrt(1 - signal**2)``. For TextDiff's t = 50/150/250 of 1000:
    signal 0.985 / 0.887 / 0.722, noise 0.173 / 0.463 / 0.692 (method.md §3).
    """
    t = torch.as_tensor(list(timesteps), dtype=torch.long)
    if t.numel() == 0 or int(t.min()) < 0 or int(t.max()) >= T:
        raise ValueError(f"timesteps {list(timesteps)} must be non-empty and in [0, {T})")
    return ddpm_alpha_bar(T, beta_start, beta_end)[t].sqrt()


def q_sample(x0: torch.Tensor, noise: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """Eq. 2: ``x_t = s x_0 + sqrt(1 - s^2) eps``. ``x0``/``noise`` broadcastable ``(B, C, H, W)``, ``signal`` ``(B,)``."""
    s = signal.to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return s * x0 + (1.0 - s * s).sqrt() * noise


# ---------------------------------------------------------------------------------------------
# The backbone
# ---------------------------------------------------------------------------------------------
def backbone_arch(preset: str) -> dict[str, Any]:
    """The ``DiffusionModelUNet`` arguments of a preset (see :data:`BACKBONE_ARCHS`)."""
    if preset not in BACKBONE_ARCHS:
        raise ValueError(f"unknown backbone preset {preset!r}; choose one of {', '.join(BACKBONE_ARCHS)}")
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in BACKBONE_ARCHS[preset].items()}


def _build_from_arch(arch: dict[str, Any], in_channels: int, image_size: int | None = None) -> nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    arch = {k: (tuple(v) if isinstance(v, list) else v) for k, v in arch.items()}
    levels = len(arch["channels"])
    if image_size is not None and image_size % 2 ** (levels - 1):
        raise ValueError(f"image_size {image_size} must be divisible by {2 ** (levels - 1)} "
                         f"(the backbone has {levels} levels)")
    return DiffusionModelUNet(spatial_dims=2, in_channels=in_channels, out_channels=in_channels, **arch)


def build_backbone(preset: str, in_channels: int, image_size: int | None = None) -> nn.Module:
    """A fresh (random) MONAI ``DiffusionModelUNet`` with the preset's architecture.

    ``image_size`` (optional) is checked to be divisible by ``2**(levels-1)``.
    """
    return _build_from_arch(backbone_arch(preset), in_channels, image_size)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` on every parameter (the frozen encoders of TextDiff)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
        p.grad = None
    return module


def _random_crops(images: torch.Tensor, crop: int, n: int, gen: torch.Generator) -> torch.Tensor:
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


def pretrain_ddpm(images: torch.Tensor, preset: str, steps: int | None = None, run_dir: str | Path | None = None,
                  seed: int = 0, progress: bool = True, batch_size: int | None = None, crop: int | None = None,
                  lr: float | None = None, device: torch.device | None = None) -> tuple[nn.Module, list[float]]:
    """Train the substitute backbone as a DDPM on unlabelled images (epsilon prediction, MSE).

    Args:
        images: ``(N, C, H, W)`` in [0, 1] (mapped to [-1, 1] as ADM's inputs).
        preset: architecture and default training length (:data:`BACKBONE_ARCHS`, :data:`DDPM_TRAINING`).
        steps, batch_size, crop, lr: override the preset's training settings. Training uses random
            ``crop`` x ``crop`` windows with flips; features are later read on whole images.
        run_dir: when given, the checkpoint ``run_dir/backbone.pt`` is **reused** if it exists (same
            architecture and steps), else written atomically at the end.
        seed: seeds the crops, time steps and noise.
        device: where to train (default: :func:`~diffseg_core.device.pick_device`).

    Returns:
        the frozen U-Net (eval mode, no gradients) and the per-step losses.
    """
    from monai.networks.schedulers import DDPMScheduler

    from .checkpoint import load_checkpoint, save_checkpoint
    from .device import pick_device

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
    if path is not None and path.is_file():
        ckpt = load_checkpoint(path)
        want = dict(arch=_jsonable_arch(arch), in_channels=in_channels, steps=int(settings["steps"]))
        have = dict(arch=ckpt.get("arch"), in_channels=ckpt.get("in_channels"), steps=ckpt.get("steps"))
        if have != want:
            raise ValueError(f"{path} holds a backbone trained with {have}, but this run asks for {want}; "
                             f"use another run folder or delete {path}")
        unet = _build_from_arch(arch, in_channels)
        unet.load_state_dict(ckpt["state_dict"])
        if progress:
            print(f"backbone: reusing {path} ({ckpt['steps']} DDPM steps, final loss {ckpt['losses'][-1]:.4f})")
        return freeze(unet.to(device)), list(ckpt["losses"])

    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    unet = _build_from_arch(arch, in_channels).to(device)
    scheduler = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta", beta_start=1e-4, beta_end=0.02)
    opt = torch.optim.Adam(unet.parameters(), lr=float(settings["lr"]))
    data = images.float().cpu() * 2 - 1  # ADM's inputs are in [-1, 1]
    losses: list[float] = []
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    unet.train()
    for _ in tqdm(range(int(settings["steps"])), desc="DDPM pre-training", disable=not progress, leave=False):
        x0 = _random_crops(data, int(settings["crop"]), int(settings["batch_size"]), gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=gen).to(device)
        xt = scheduler.add_noise(original_samples=x0, noise=noise, timesteps=t)  # Eq. 2
        loss = F.mse_loss(unet(xt, t), noise)  # epsilon prediction
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - t0
    unet = freeze(unet)
    if path is not None:
        save_checkpoint({"format": CHECKPOINT_FORMAT, "arch": _jsonable_arch(arch), "in_channels": in_channels,
                         "preset": preset, "steps": int(settings["steps"]), "settings": settings, "seed": int(seed),
                         "losses": losses, "seconds": seconds, "n_images": int(images.shape[0]),
                         "state_dict": {k: v.cpu() for k, v in unet.state_dict().items()}}, path)
    if progress and losses:
        print(f"backbone: DDPM pre-training {len(losses)} steps in {seconds:.0f} s, loss {losses[0]:.3f} -> "
              f"{sum(losses[-10:]) / len(losses[-10:]):.3f}" + (f"; saved {path}" if path else ""))
    return unet, losses


def _jsonable_arch(arch: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in arch.items()}


def load_backbone(path: str | Path, in_channels: int, image_size: int | None = None,
                  device: torch.device | None = None) -> nn.Module:
    """Load a user-supplied diffusion U-Net checkpoint (``--backbone PATH``), frozen.

    Expected file (``torch.save``): either what :func:`pretrain_ddpm` writes, a dict with ``"arch"`` (the
    keyword arguments of MONAI ``DiffusionModelUNet`` except ``spatial_dims``/``in_channels``/
    ``out_channels``, e.g. ``{"channels": [32, 64, 64, 128], "num_res_blocks": 1, "attention_levels":
    [false, false, false, true], "norm_num_groups": 16, "num_head_channels": 32}``), ``"in_channels"`` and
    ``"state_dict"``; or a bare ``state_dict`` of a 2-D ``DiffusionModelUNet`` with one of the preset
    architectures of :data:`BACKBONE_ARCHS` (tried in turn). OpenAI's ADM checkpoints are a different
    architecture and are not accepted.
    """
    from .checkpoint import load_checkpoint
    from .device import pick_device

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint {path} does not exist")
    ckpt = load_checkpoint(path)
    device = device or pick_device()
    if isinstance(ckpt, dict) and "arch" in ckpt and "state_dict" in ckpt:
        have = int(ckpt.get("in_channels", in_channels))
        if have != in_channels:
            raise ValueError(f"backbone {path} takes {have}-channel images, the dataset has {in_channels}")
        unet = _build_from_arch(ckpt["arch"], in_channels, image_size)
        unet.load_state_dict(ckpt["state_dict"])
        return freeze(unet.to(device))
    if isinstance(ckpt, dict) and all(torch.is_tensor(v) for v in ckpt.values()):
        have = {k: tuple(v.shape) for k, v in ckpt.items()}
        for preset in BACKBONE_ARCHS:
            with torch.device("meta"):  # compare shapes without allocating (the paper architecture is 2 GB)
                probe = build_backbone(preset, in_channels)
            if {k: tuple(v.shape) for k, v in probe.state_dict().items()} == have:
                unet = build_backbone(preset, in_channels, image_size)
                unet.load_state_dict(ckpt)
                return freeze(unet.to(device))
        raise ValueError(f"backbone {path}: its state_dict matches none of the preset architectures "
                         f"({', '.join(BACKBONE_ARCHS)}) for {in_channels}-channel images; save it as "
                         f"{{'arch': ..., 'in_channels': ..., 'state_dict': ...}}")
    raise ValueError(f"backbone {path} is not a DiffusionModelUNet checkpoint (see load_backbone's docstring "
                     f"for the expected format)")


# ---------------------------------------------------------------------------------------------
# Decoder blocks
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecoderBlock:
    """One hookable decoder layer: its global ``index``, U-Net ``level`` (0 = full resolution),
    ``fraction`` of the input resolution (``2**-level``), output ``channels`` and the ``module`` hooked."""

    index: int
    level: int
    fraction: float
    channels: int
    module: nn.Module


def decoder_blocks(unet: nn.Module) -> list[DecoderBlock]:
    """All decoder layers of a MONAI ``DiffusionModelUNet``, coarsest first (like ADM's ``output_blocks``).

    Each up-block (one per level) holds ``num_res_blocks + 1`` layers; a layer is its ResNet block, or the
    attention layer that follows it where the level has attention. The up-sampler at the end of a level
    is not a separate block (its output is an up-sampled copy of the level's last layer).
    """
    ups = getattr(unet, "up_blocks", None)
    if ups is None:
        raise TypeError(f"decoder_blocks: expected a MONAI DiffusionModelUNet, got {type(unet).__name__}")
    n = len(ups)
    out: list[DecoderBlock] = []
    for k, up in enumerate(ups):
        level = n - 1 - k
        attns = getattr(up, "attentions", None)
        for j, res in enumerate(up.resnets):
            module = attns[j] if attns is not None else res
            out.append(DecoderBlock(len(out), level, 2.0 ** -level, int(res.out_channels), module))
    return out


def select_blocks_by_resolution(unet: nn.Module, image_size: int | None = None,
                                fractions: Sequence[float] = (1 / 8, 1 / 4, 1 / 2, 1)) -> list[int]:
    """Decoder block indices at the given fractions of the input resolution (the last layer of each level).

    ``(1/8, 1/4, 1/2, 1)`` at a 256 input is 32, 64, 128 and 256 px: the resolutions of TextDiff's MoNuSeg
    blocks {6, 8, 12, 16} of ADM-256. ``image_size`` (optional) is only checked for divisibility.
    Raises ``ValueError`` naming the available fractions when one is missing.
    """
    blocks = decoder_blocks(unet)
    levels = 1 + max(b.level for b in blocks)
    if image_size is not None and image_size % 2 ** (levels - 1):
        raise ValueError(f"image_size {image_size} is not divisible by {2 ** (levels - 1)} ({levels} levels)")
    chosen = []
    for f in fractions:
        if f <= 0:
            raise ValueError(f"block fraction {f} must be positive")
        level = -math.log2(f)
        at = [b for b in blocks if abs(b.level - level) < 1e-6]
        if not at:
            have = sorted({b.fraction for b in blocks}, reverse=True)
            raise ValueError(f"no decoder block at {f:g} of the input resolution; this backbone has "
                             f"{', '.join(f'{h:g}' for h in have)}")
        chosen.append(at[-1].index)
    return chosen


# ---------------------------------------------------------------------------------------------
# Feature extraction and cache
# ---------------------------------------------------------------------------------------------
class DiffusionFeatureExtractor:
    """Frozen diffusion U-Net + forward hooks -> multi-scale features of images.

    Args:
        unet: a MONAI ``DiffusionModelUNet`` (frozen here: eval mode, no gradients).
        timesteps: noise levels ``t`` of the 1000-step linear schedule (paper: 50, 150, 250).
        blocks: decoder block indices (default: :func:`select_blocks_by_resolution` at 1/8, 1/4, 1/2, 1).
        noise_seed: seed of the **one shared noise tensor** (the official code's ``share_noise``, seed 40):
            the same ``eps`` is used for every image and every ``t``, so features are a deterministic
            function of the image.
    """

    def __init__(self, unet: nn.Module, timesteps: Sequence[int] = (50, 150, 250), blocks: Sequence[int] | None = None,
                 noise_seed: int = 0) -> None:
        self.unet = freeze(unet)
        self.timesteps = tuple(int(t) for t in timesteps)
        self.signal = ddpm_signal_levels(self.timesteps)  # (n_steps,) sqrt(abar_t)
        self.all_blocks = decoder_blocks(unet)
        self.blocks = list(blocks) if blocks is not None else select_blocks_by_resolution(unet)
        bad = [b for b in self.blocks if not 0 <= b < len(self.all_blocks)]
        if bad:
            raise ValueError(f"decoder block indices {bad} out of range 0..{len(self.all_blocks) - 1}")
        self.noise_seed = int(noise_seed)
        self.in_channels = int(unet.in_channels)
        self.levels = len(unet.block_out_channels)
        self._noise: dict[tuple[int, ...], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def feature_dims(self) -> list[int]:
        """Channels of each returned block: ``C_b x n_steps``."""
        return [self.all_blocks[b].channels * len(self.timesteps) for b in self.blocks]

    def fractions(self) -> list[float]:
        """Resolution of each returned block relative to the input."""
        return [self.all_blocks[b].fraction for b in self.blocks]

    def noise(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """The shared noise ``(1, C, H, W)`` for images of ``shape = (C, H, W)`` (seeded, cached)."""
        if shape not in self._noise:
            g = torch.Generator().manual_seed(self.noise_seed)
            self._noise[shape] = torch.randn((1, *shape), generator=g)
        return self._noise[shape]

    @torch.no_grad()
    def extract(self, images: torch.Tensor, return_per_step: bool = False) -> list[torch.Tensor]:
        """Features of ``images`` ``(B, C, H, W)`` in [0, 1].

        Returns one tensor per chosen block, ``(B, C_b * n_steps, h_b, w_b)``: the block's outputs at each
        ``t`` concatenated along channels (``t`` in the order given), at the block's native resolution.
        With ``return_per_step`` the per-step tensors are returned instead, as ``[block][step]``
        ``(B, C_b, h_b, w_b)`` (for plots).
        """
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"DiffusionFeatureExtractor.extract: images must be (B, {self.in_channels}, H, W), "
                             f"got {tuple(images.shape)}")
        H, W = images.shape[-2:]
        if H % 2 ** (self.levels - 1) or W % 2 ** (self.levels - 1):
            raise ValueError(f"DiffusionFeatureExtractor.extract: size {H}x{W} must be divisible by "
                             f"{2 ** (self.levels - 1)} ({self.levels} U-Net levels)")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise ValueError(f"DiffusionFeatureExtractor.extract: images must be in [0, 1], got [{lo:.3g}, {hi:.3g}]")
        device = self.device
        B, n = images.shape[0], len(self.timesteps)
        x0 = images.to(device, torch.float32) * 2 - 1  # ADM's inputs are in [-1, 1]
        eps = self.noise(tuple(images.shape[1:])).to(device)  # (1, C, H, W), shared by all images and steps
        signal = self.signal.to(device).repeat_interleave(B)  # (n*B,), step-major
        xt = q_sample(x0.repeat(n, 1, 1, 1), eps, signal)  # (n*B, C, H, W), Eq. 2
        t = torch.tensor(self.timesteps, device=device).repeat_interleave(B)
        grabbed: dict[int, torch.Tensor] = {}
        handles = [self.all_blocks[b].module.register_forward_hook(
            lambda _m, _i, out, b=b: grabbed.__setitem__(b, out)) for b in self.blocks]
        try:
            self.unet(xt, t)
        finally:
            for h in handles:
                h.remove()
        feats, per_step = [], []
        for b in self.blocks:
            f = grabbed[b].float()  # (n*B, C_b, h, w)
            f = f.view(n, B, *f.shape[1:])
            per_step.append([f[s] for s in range(n)])
            feats.append(torch.cat([f[s] for s in range(n)], dim=1))  # steps concatenated on channels
        return per_step if return_per_step else feats


def image_key(image: torch.Tensor) -> str:
    """A content hash of one image tensor (for caching features of images that have no id)."""
    a = image.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha1(str(tuple(a.shape)).encode() + a.numpy().tobytes()).hexdigest()


class FeatureCache:
    """Features of fixed images computed once and kept, keyed by case id (or :func:`image_key`).

    TextDiff's code re-extracts features of every augmented image in every epoch; on a CPU that is out of
    reach (method.md §6), so we extract each image once. ``max_items`` and ``max_bytes`` bound the cache
    (least recently used entries are dropped, the newest is always kept); ``None`` means no bound. One
    256-px image costs ~42 MB at the ``cpu`` preset and ~280 MB with the ADM-shaped ``paper`` backbone.
    Entries are lists of ``(C_b, h_b, w_b)`` tensors.
    """

    def __init__(self, max_items: int | None = None, max_bytes: int | None = None) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, list[torch.Tensor]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.seconds = 0.0  # time spent extracting

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[str]:
        return list(self._items)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for v in self._items.values() for t in v)

    def put(self, key: str, feats: Sequence[torch.Tensor]) -> None:
        self._items[key] = [f.detach() for f in feats]
        self._items.move_to_end(key)
        while len(self._items) > 1 and (
                (self.max_items is not None and len(self._items) > self.max_items)
                or (self.max_bytes is not None and self.nbytes() > self.max_bytes)):
            self._items.popitem(last=False)

    def get(self, key: str) -> list[torch.Tensor]:
        if key not in self._items:
            raise KeyError(f"FeatureCache: no features for {key!r} (cached: {len(self._items)} items)")
        self._items.move_to_end(key)
        return self._items[key]

    def batch(self, keys: Sequence[str]) -> list[torch.Tensor]:
        """Stack cached entries: one ``(B, C_b, h_b, w_b)`` tensor per block."""
        entries = [self.get(k) for k in keys]
        return [torch.stack([e[i] for e in entries]) for i in range(len(entries[0]))]

    def features(self, keys: Sequence[str], images: torch.Tensor,
                 extract: Callable[[torch.Tensor], list[torch.Tensor]]) -> list[torch.Tensor]:
        """Features for ``images`` ``(B, C, H, W)`` named ``keys``; only the missing ones are extracted."""
        if len(keys) != images.shape[0]:
            raise ValueError(f"FeatureCache.features: {len(keys)} keys for {images.shape[0]} images")
        missing = [i for i, k in enumerate(keys) if k not in self._items]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            t0 = time.perf_counter()
            feats = extract(images[missing])
            self.seconds += time.perf_counter() - t0
            for j, i in enumerate(missing):
                self.put(keys[i], [f[j].clone() for f in feats])
        return self.batch(keys)


__all__ = [
    "BACKBONE_ARCHS", "DDPM_TRAINING", "BACKBONE_FILE", "ddpm_alpha_bar", "ddpm_signal_levels", "q_sample",
    "backbone_arch", "build_backbone", "freeze", "pretrain_ddpm", "load_backbone", "DecoderBlock",
    "decoder_blocks", "select_blocks_by_resolution", "DiffusionFeatureExtractor", "image_key", "FeatureCache",
]
