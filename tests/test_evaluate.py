"""Sliding-window inference stitches windows back exactly; volumes are scored per volume."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffseg_core.config import override
from diffseg_core.methods import get_config
from diffseg_core.data.base import Case
from diffseg_core.evaluate import evaluate_cases, predict_case
from diffseg_core.data import DatasetInfo
from diffseg_core.methods import SegMethod
from diffseg_core.methods.unet import UNetConfig


class IntensityMethod(SegMethod):
    """P(foreground) = the image's first channel: a pixel-wise 'model' whose output we know exactly."""

    name = "intensity"
    config_class = UNetConfig  # the test runs on the U-Net's config

    def __init__(self, cfg, roi):
        super().__init__(cfg, DatasetInfo("toy", 1, 2, ("background", "fg")), torch.device("cpu"))
        self.roi = roi
        self.calls = []

    def inference_roi(self):
        return self.roi

    def predict(self, image, text=None):
        self.calls.append(tuple(image.shape))
        p = image[:, :1].clamp(0, 1)
        return torch.cat([1 - p, p], dim=1)


def _case(h, w, seed=0, **meta):
    rng = np.random.default_rng(seed)
    img = rng.random((1, h, w)).astype(np.float32)
    return Case(id=f"c{seed}", image=img, label=(img[0] > 0.5).astype(np.int64), meta=meta)


@pytest.mark.parametrize("roi,overlap,size", [(None, 0.0, (20, 28)), (8, 0.0, (32, 32)), (8, 0.25, (30, 21)), (32, 0.5, (20, 20))])
def test_sliding_window_reproduces_a_pixelwise_model(roi, overlap, size):
    cfg = override(get_config("unet", "synthetic", "smoke"), **{"data.overlap": overlap})
    m = IntensityMethod(cfg, roi)
    case = _case(*size)
    probs = predict_case(m, case)
    assert probs.shape == (2,) + size
    np.testing.assert_allclose(probs[1], case.image[0], atol=1e-6)
    if roi:
        assert all(c[-2:] == (roi, roi) for c in m.calls), "every window has the training crop size"


def test_perfect_model_scores_one_and_slices_group_into_volumes():
    cfg = get_config("unet", "synthetic", "smoke")
    m = IntensityMethod(cfg, None)
    cases = [_case(8, 8, seed=s, volume="v1" if s < 3 else "v2", slice=s % 3) for s in range(5)]
    for c in cases:  # a model that thresholds at 0.5 is exactly right on these labels
        c.image[0] = np.where(c.label == 1, 0.9, 0.1)
    res = evaluate_cases(m, cases)
    assert res["n_images"] == 2 and res["ids"] == ["v1", "v2"]
    assert res["dice_mean"] == pytest.approx(1.0) and res["dice_global"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no cases"):
        evaluate_cases(m, [])


@pytest.mark.parametrize("method,working_size,expect", [
    ("unet", 256, "whole images in one pass"),          # the U-Net predicts resized images whole
    ("unet", None, "sliding-window tiles of 32 px"),     # native-size images: crop-sized windows
    ("cdal", 256, "sliding-window tiles of 64 px"),      # cDAL always tiles at its training crop
    ("textdiff", 256, "whole images in one pass"),
])
def test_protocol_says_how_images_were_predicted(method, working_size, expect):
    """The protocol sentence's inference clause follows the method's own window, not a fixed wording."""
    from diffseg_core.evaluate import describe_protocol
    from diffseg_core.methods import get_method_class

    cfg = get_config(method, "synthetic", "smoke")
    cfg = override(cfg, **{"data.working_size": working_size, "data.crop": 32 if working_size is None else 64})
    text = describe_protocol(cfg, "test", 3, "last step")
    assert expect in text
    window = get_method_class(method).inference_window(cfg)
    assert (window is None) == (method == "textdiff")


def test_protocol_names_textdiff_feature_augmentation():
    """TextDiff augments cached features, not images: the protocol must not say 'no augmentation' then."""
    from diffseg_core.evaluate import describe_protocol

    on = get_config("textdiff", "monuseg", "smoke")
    assert on.model["augment"] and "rotations and flips" in describe_protocol(on, "test", 3, "last step")
    off = override(on, **{"model.augment": False})
    assert "augmentation 'none'" in describe_protocol(off, "test", 3, "last step")
