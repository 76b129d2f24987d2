"""Per-member predictions over whole images: shapes, inversion of TTA, MC dropout on and off, cDAL's ensemble."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffseg_core.data import DatasetInfo, load_dataset
from diffseg_core.config import data_config, override
from diffseg_core.data.base import Case
from diffseg_core.evaluate import predict_case
from diffseg_core.members import dropout_active, evaluations_per_pixel, member_probs
from diffseg_core.methods import SegMethod, get_config
from diffseg_core.methods.unet import UNetConfig
from diffseg_core.train import build_method


class IntensityMethod(SegMethod):
    """P(foreground) = the image's first channel: pixel-wise, so every flip or rotation must map back exactly."""

    name = "intensity"
    config_class = UNetConfig

    def __init__(self, cfg, roi):
        super().__init__(cfg, DatasetInfo("toy", 1, 2, ("background", "fg")), torch.device("cpu"))
        self.roi = roi

    def inference_roi(self):
        return self.roi

    def predict(self, image, text=None):
        p = image[:, :1].clamp(0, 1)
        return torch.cat([1 - p, p], dim=1)


def _case(size=16, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.random((1, size, size)).astype(np.float32)
    return Case(id="c", image=img, label=(img[0] > 0.5).astype(np.int64))


@pytest.mark.parametrize("roi", [None, 8])
def test_tta_maps_every_member_back(roi):
    m = IntensityMethod(get_config("unet", "synthetic", "smoke"), roi)
    case = _case()
    members = member_probs(m, case, "tta", 8)
    assert members.shape == (8, 16, 16) and members.dtype == np.float32
    for k in range(8):   # a pixel-wise model is equivariant: each inverted member is the plain prediction
        np.testing.assert_allclose(members[k], case.image[0], atol=1e-6)
    np.testing.assert_allclose(member_probs(m, case, "single", 1)[0], case.image[0], atol=1e-6)
    with pytest.raises(ValueError, match="8 flips"):
        member_probs(m, case, "tta", 9)
    with pytest.raises(ValueError, match="unknown kind"):
        member_probs(m, case, "bootstrap", 2)
    with pytest.raises(ValueError, match="generator"):
        member_probs(m, case, "ensemble", 2)
    assert evaluations_per_pixel(m, "tta", 5) == 5 and evaluations_per_pixel(m, "single", 1) == 1


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", None, data_config("synthetic", "smoke"), seed=0)


def test_mc_dropout_members_differ_and_are_reproducible(synthetic):
    case = synthetic.split("test")[0]
    plain = build_method(get_config("unet", "synthetic", "smoke"), synthetic, torch.device("cpu"))
    with pytest.raises(ValueError, match="dropout layers"):
        member_probs(plain, case, "mc_dropout", 3)
    m = build_method(get_config("unet", "synthetic", "smoke", dropout=0.3), synthetic, torch.device("cpu"))
    state = torch.get_rng_state()
    a = member_probs(m, case, "mc_dropout", 3, seed=1)
    assert torch.equal(state, torch.get_rng_state()), "the caller's random stream must be untouched"
    assert a.shape == (3,) + case.label.shape and 0 <= a.min() and a.max() <= 1
    assert not np.allclose(a[0], a[1]), "dropout on: the passes must differ"
    np.testing.assert_array_equal(a, member_probs(m, case, "mc_dropout", 3, seed=1))
    # dropout off again afterwards: the deterministic prediction is the method's own
    assert not any(mod.training for mod in m.nets.modules())
    np.testing.assert_allclose(member_probs(m, case, "single", 1)[0], predict_case(m, case)[1], atol=1e-6)


def test_dropout_active_switches_only_dropout_and_restores():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Dropout(0.5))
    net.train()
    with dropout_active(net) as n:
        assert n == 1 and net[2].training and not net[1].training and not net.training
    assert net.training and net[1].training


def test_cdal_members_average_to_its_prediction(synthetic):
    cfg = get_config("cdal", "synthetic", "smoke")
    m = build_method(cfg, synthetic, torch.device("cpu"))
    m.n_ensemble = m.model_cfg.ensemble
    case = synthetic.split("test")[0]
    members = member_probs(m, case, "ensemble", m.model_cfg.ensemble, seed=cfg.seed)
    assert members.shape == (m.model_cfg.ensemble,) + case.label.shape
    assert 0 <= members.min() and members.max() <= 1
    # same seed, same tiles: the members' mean is what CDALMethod.predict stitches
    np.testing.assert_allclose(members.mean(0), predict_case(m, case)[1], atol=1e-5)
    assert evaluations_per_pixel(m, "ensemble", 5) == 5 * m.sched.T


def test_multiclass_is_refused():
    cfg = override(get_config("unet", "synthetic", "smoke"), **{"data.overlap": 0.0})
    m = IntensityMethod(cfg, None)
    m.info = DatasetInfo("toy", 1, 3, ("a", "b", "c"))
    with pytest.raises(ValueError, match="binary"):
        member_probs(m, _case(), "tta", 2)
