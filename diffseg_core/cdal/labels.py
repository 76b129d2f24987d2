"""Label and image conversions between the shared data conventions and cDAL's diffusion space.

The data layer gives labels as class indices ``(B, H, W)`` and images ``(B, C, H, W)`` in [0, 1]. cDAL
diffuses a label map x0 in {-1, 1} (binary: one channel, foreground = +1; multiclass: one-hot channels
mapped by 2*onehot - 1, decision D16) and conditions its generator on a normalised image.

Every function also takes volumes (one more spatial axis: labels (B, D, H, W), images (B, C, D, H, W)) for
the native 3-D cDAL of chapter 08.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["MONUSEG_MEAN", "MONUSEG_STD", "label_channels", "labels_to_x0", "x0_to_probs", "normalize_image"]

# official MoNuSeg normalisation, in 0-255 units (the official data pipeline)
MONUSEG_MEAN = (142.07, 98.48, 132.96)
MONUSEG_STD = (65.78, 57.05, 57.78)


def label_channels(num_classes: int) -> int:
    """Channels of the diffused label: 1 for binary tasks, one per class otherwise."""
    if num_classes < 2:
        raise ValueError(f"cdal: need at least 2 classes, got {num_classes}")
    return 1 if num_classes == 2 else num_classes


def labels_to_x0(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices (B, H, W) int -> diffusion target x0 (B, Cl, H, W) in {-1, 1} (volumes: (B, D, H, W) ->
    (B, Cl, D, H, W)).

    Binary: one channel, foreground = +1, background = -1 (D16). Multiclass: one-hot channels, 2*onehot - 1.
    """
    if label.ndim not in (3, 4):
        raise ValueError(f"labels_to_x0: label must be (B, H, W) or (B, D, H, W), got shape {tuple(label.shape)}")
    if label.dtype.is_floating_point:
        raise TypeError(f"labels_to_x0: label must hold integer class indices, got {label.dtype}")
    if int(label.min()) < 0 or int(label.max()) >= num_classes:
        raise ValueError(f"labels_to_x0: label values must be in 0..{num_classes - 1}, got {int(label.min())}..{int(label.max())}")
    if num_classes == 2:
        return (label[:, None].float() * 2.0 - 1.0)
    onehot = F.one_hot(label.long(), num_classes).movedim(-1, 1).float()
    return onehot * 2.0 - 1.0


def x0_to_probs(x: torch.Tensor) -> torch.Tensor:
    """Generated label map x (B, Cl, H, W) in [-1, 1] -> class probabilities (B, K, H, W) summing to 1
    (volumes (B, Cl, D, H, W) alike).

    Each channel is mapped by clamp((x + 1)/2, 0, 1) (official). Binary (Cl = 1): [1 - p, p].
    Multiclass: the per-class values normalised to sum to one (uniform where all are 0).
    """
    if x.ndim not in (4, 5):
        raise ValueError(f"x0_to_probs: x must be (B, Cl, H, W) or (B, Cl, D, H, W), got shape {tuple(x.shape)}")
    p = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    if x.shape[1] == 1:
        return torch.cat([1.0 - p, p], dim=1)
    s = p.sum(dim=1, keepdim=True)
    uniform = torch.full_like(p, 1.0 / p.shape[1])
    return torch.where(s > 1e-8, p / s.clamp_min(1e-8), uniform)


def normalize_image(image: torch.Tensor, mode: str = "symmetric") -> torch.Tensor:
    """Image (B, C, H, W) in [0, 1] -> G's input. 'monuseg': (255 x - mean) / std per channel (official,
    3 channels); 'symmetric': 2x - 1."""
    if mode == "monuseg":
        if image.shape[1] != 3:
            raise ValueError(f"normalize_image: 'monuseg' needs 3 channels, got {image.shape[1]}")
        shape = (1, 3) + (1,) * (image.ndim - 2)
        mean = image.new_tensor(MONUSEG_MEAN).reshape(shape)
        std = image.new_tensor(MONUSEG_STD).reshape(shape)
        return (image * 255.0 - mean) / std
    if mode == "symmetric":
        return image * 2.0 - 1.0
    raise ValueError(f"normalize_image: unknown mode {mode!r}")
