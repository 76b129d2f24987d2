"""TextDiff's frozen image encoder: a denoising diffusion U-Net (the substitute for ADM-256), built or loaded.

The paper's backbone is OpenAI's ImageNet 256x256 unconditional ADM (553 M parameters,
``256x256_diffusion_uncond.pt``). Offline, and at ~24 s per forward on 2 CPU threads, the default is a
**substitute**: a MONAI ``DiffusionModelUNet`` of the preset's size (:data:`BACKBONE_ARCHS`), pre-trained by
the project on the dataset's unlabelled images (:mod:`.pretrain`). A user checkpoint can replace it
(:func:`load_backbone`). See the book's decisions page (T6) for how blocks are then chosen.

The paper's own backbone is available too: ``adm256:PATH`` (or just ``adm256``, the file in the weights folder
of :mod:`diffseg_core.weights`) loads the released ADM-256 file strictly into
:class:`~diffseg_core.textdiff.adm.ADMUNet`, read at the paper's decoder blocks (:func:`is_adm_spec`,
:func:`backbone_label`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_checkpoint
from ..device import pick_device

__all__ = ["BACKBONE_FILE", "CHECKPOINT_FORMAT", "BACKBONE_ARCHS", "ADM_SPEC", "backbone_arch", "build_from_arch",
           "build_backbone", "freeze", "jsonable_arch", "load_backbone", "is_adm_spec", "adm_spec_path",
           "backbone_label"]

#: ``--backbone adm256:PATH`` (or ``adm256``: the file in the weights folder) selects the paper's ADM-256
ADM_SPEC = "adm256"

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


def backbone_arch(preset: str) -> dict[str, Any]:
    """The ``DiffusionModelUNet`` arguments of a preset (see :data:`BACKBONE_ARCHS`)."""
    if preset not in BACKBONE_ARCHS:
        raise ValueError(f"unknown backbone preset {preset!r}; choose one of {', '.join(BACKBONE_ARCHS)}")
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in BACKBONE_ARCHS[preset].items()}


def build_from_arch(arch: dict[str, Any], in_channels: int, image_size: int | None = None) -> nn.Module:
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
    return build_from_arch(backbone_arch(preset), in_channels, image_size)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` on every parameter (the frozen encoders of TextDiff)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
        p.grad = None
    return module


def jsonable_arch(arch: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in arch.items()}


def is_adm_spec(spec: str | Path | None) -> bool:
    """True for ``adm256`` and ``adm256:PATH`` (the paper's ADM-256 backbone)."""
    return isinstance(spec, str) and (spec == ADM_SPEC or spec.startswith(ADM_SPEC + ":"))


def adm_spec_path(spec: str) -> Path:
    """The file of an ``adm256[:PATH]`` spec; plain ``adm256`` is the weights folder's copy
    (:func:`diffseg_core.weights.require_weights`, which says how to get it when it is absent)."""
    from ..weights import require_weights

    _, _, path = spec.partition(":")
    return Path(path).expanduser() if path else require_weights("adm256-uncond")


def backbone_label(spec: str | Path | None) -> str:
    """One phrase saying which backbone a TextDiff result comes from (for protocol sentences)."""
    if not spec:
        return "substitute backbone: a diffusion U-Net DDPM-pre-trained here on the dataset's unlabelled images"
    if is_adm_spec(spec):
        return f"backbone: the paper's ADM-256 (OpenAI 256x256_diffusion_uncond.pt, ImageNet), {spec}"
    return f"backbone: the diffusion U-Net checkpoint {spec}"


def load_backbone(path: str | Path, in_channels: int, image_size: int | None = None,
                  device: torch.device | None = None) -> nn.Module:
    """Load a user-supplied diffusion U-Net checkpoint (``--backbone PATH``), frozen.

    Expected file (``torch.save``): either what :func:`pretrain_ddpm` writes, a dict with ``"arch"`` (the
    keyword arguments of MONAI ``DiffusionModelUNet`` except ``spatial_dims``/``in_channels``/
    ``out_channels``, e.g. ``{"channels": [32, 64, 64, 128], "num_res_blocks": 1, "attention_levels":
    [false, false, false, true], "norm_num_groups": 16, "num_head_channels": 32}``), ``"in_channels"`` and
    ``"state_dict"``; or a bare ``state_dict`` of a 2-D ``DiffusionModelUNet`` with one of the preset
    architectures of :data:`BACKBONE_ARCHS` (tried in turn). OpenAI's ADM checkpoints are a different
    architecture: name them ``adm256:PATH`` (or ``adm256`` for the weights folder's copy); they are loaded
    strictly by :func:`~diffseg_core.textdiff.adm.load_adm` (3-channel input; grey images are repeated to RGB).
    """
    if is_adm_spec(path):
        from .adm import load_adm

        adm_path = adm_spec_path(str(path))
        if not adm_path.is_file():
            raise FileNotFoundError(f"ADM backbone {adm_path} does not exist (--backbone {path}); "
                                    f"python -m diffseg_core.weights where adm256-uncond says how to get it")
        unet = load_adm(adm_path)
        if in_channels not in (1, unet.in_channels):
            raise ValueError(f"ADM backbone {adm_path} takes {unet.in_channels}-channel images, the dataset has {in_channels}")
        if image_size is not None and image_size % unet.divisor:
            raise ValueError(f"image_size {image_size} must be divisible by {unet.divisor} for the ADM backbone")
        return freeze(unet.to(device or pick_device()))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint {path} does not exist")
    ckpt = load_checkpoint(path)
    device = device or pick_device()
    if isinstance(ckpt, dict) and "arch" in ckpt and "state_dict" in ckpt:
        have = int(ckpt.get("in_channels", in_channels))
        if have != in_channels:
            raise ValueError(f"backbone {path} takes {have}-channel images, the dataset has {in_channels}")
        unet = build_from_arch(ckpt["arch"], in_channels, image_size)
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
