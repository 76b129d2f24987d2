"""The U-Net baseline: MONAI's residual ``UNet`` trained with Dice + cross-entropy.

This is the reference every diffusion method in the book is compared with (cDAL Table 2 lists a U-Net
at 79.43 Dice on MoNuSeg; TextDiff Table 1 a U-Net at 73.92 with five training images). It shares the
data pipeline, the loop, the sliding-window inference and the metrics with every other method, so a
difference in the results table is a difference in the method, not in the plumbing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from ..config import model_config_from_dict
from ..data import DatasetInfo
from .base import SegMethod


@dataclass
class UNetConfig:
    """Width and depth of the MONAI ``UNet`` (``channels`` per level, stride-2 down-sampling between levels)."""

    channels: tuple[int, ...] = (16, 32, 64, 128)
    num_res_units: int = 2
    dropout: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 1e-5

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetConfig":
        """From ``RunConfig.model`` (unknown keys raise)."""
        return model_config_from_dict(cls, d, "unet")

    @classmethod
    def for_preset(cls, preset: str, dataset: str) -> "UNetConfig":
        if preset == "smoke":
            return cls(channels=(8, 16, 32), num_res_units=1)
        if preset == "cpu":
            return cls(channels=(16, 32, 64, 128), num_res_units=2)
        # gpu and paper: the classic 5-level U-Net widths (64..1024 halved, MONAI style)
        return cls(channels=(32, 64, 128, 256, 512), num_res_units=2, lr=3e-4)


class UNetMethod(SegMethod):
    """Supervised baseline: one forward, Dice + CE loss, Adam."""

    name = "unet"
    config_class = UNetConfig

    def __init__(self, cfg: Any, info: DatasetInfo, device: torch.device) -> None:
        super().__init__(cfg, info, device)
        mc = self.model_cfg
        net = UNet(spatial_dims=2, in_channels=info.in_channels, out_channels=info.num_classes,
                   channels=mc.channels, strides=(2,) * (len(mc.channels) - 1),
                   num_res_units=mc.num_res_units, dropout=mc.dropout)
        self.nets["unet"] = net.to(device)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.optimizers["adam"] = torch.optim.Adam(net.parameters(), lr=mc.lr, weight_decay=mc.weight_decay)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        """``batch['image']`` (B,C,h,w) in [0,1], ``batch['label']`` (B,h,w) -> Dice+CE loss, one Adam step."""
        opt = self.optimizers["adam"]
        logits = self.train_net("unet")(batch["image"] * 2 - 1)   # DDP-wrapped under torchrun
        loss = self.loss(logits, batch["label"][:, None])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach())}

    @classmethod
    def inference_window(cls, cfg: Any) -> int | None:
        """The U-Net is fully convolutional: whole resized images go through in one pass (as large a window
        as the working size), native-size images (hippocampus slices) through crop-sized windows."""
        return cfg.data.working_size or cfg.data.crop

    @torch.no_grad()
    def predict(self, image: torch.Tensor, text: Sequence[str] | None = None) -> torch.Tensor:
        """Softmax probabilities ``(B, K, h, w)``; h and w must be divisible by 2**(levels-1) (the window is)."""
        return torch.softmax(self.nets["unet"](image * 2 - 1), dim=1)
