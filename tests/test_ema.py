"""The generator EMA: the decay with its warm-up, the update rule, and how the cDAL method uses the copy."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from diffseg_core.cdal import CDALConfig, CDALMethod, ema_decay_at, update_ema
from diffseg_core.data import DatasetInfo
from diffseg_core.methods import get_config


def test_decay_warm_up_by_hand():
    assert ema_decay_at(0.999, 0) == pytest.approx(1 / 10)
    assert ema_decay_at(0.999, 90) == pytest.approx(91 / 100)
    assert ema_decay_at(0.999, 8990) == pytest.approx(0.999)        # (1 + n)/(10 + n) reaches 0.999 at n = 8990
    assert ema_decay_at(0.999, 10**6) == 0.999
    assert ema_decay_at(0.0, 5) == 0.0
    with pytest.raises(ValueError):
        ema_decay_at(1.0, 0)


def test_update_rule_by_hand():
    model, ema = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 3.0]]))
        model.bias.fill_(2.0)
        ema.weight.zero_()
        ema.bias.fill_(-2.0)
    update_ema(ema, model, 0.75)           # 0.75 * ema + 0.25 * model
    assert torch.allclose(ema.weight, torch.tensor([[0.25, 0.75]]))
    assert torch.allclose(ema.bias, torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="different parameters"):
        update_ema(nn.Linear(3, 1), model, 0.5)


def test_presets_enable_it_where_the_official_code_does():
    for preset in ("smoke", "cpu", "gpu", "paper"):
        assert CDALConfig.for_preset(preset, "hippocampus").ema_decay == 0.999
        for ds in ("monuseg", "cxr", "qata", "synthetic"):
            assert CDALConfig.for_preset(preset, ds).ema_decay == 0.0
    with pytest.raises(ValueError, match="ema_decay"):
        CDALConfig(ema_decay=1.0)


def _method(dataset: str = "hippocampus", **kw) -> CDALMethod:
    cfg = get_config("cdal", dataset, "smoke", **kw)
    info = DatasetInfo(dataset, 1, 3, ("background", "anterior", "posterior"))
    return CDALMethod(cfg, info, torch.device("cpu"))


def test_method_keeps_a_separate_copy_and_predicts_with_it():
    torch.manual_seed(0)
    m = _method()
    g, e = m.nets["G"], m.nets["G_ema"]
    assert all(not p.requires_grad for p in e.parameters())
    assert m.sampling_generator() is g                 # never updated: the live weights are sampled
    assert m.num_parameters() == sum(p.numel() for n in ("G", "D") for p in m.nets[n].parameters())
    before = [p.detach().clone() for p in e.parameters()]
    batch = {"image": torch.rand(4, 1, 32, 32), "label": torch.randint(0, 3, (4, 32, 32))}
    m.train_step(batch, 1)
    # first update: decay 0.1 -> the copy moved 90 % of the way to the live weights
    for b, pe, pg in zip(before, e.parameters(), g.parameters()):
        assert torch.allclose(pe, 0.1 * b + 0.9 * pg, atol=1e-6)
    assert m.ema_updates == 1 and m.state_dict()["ema_updates"] == 1 and m.sampling_generator() is e
    assert "G_ema" not in _method(ema_decay=0.0).nets and "G_ema" not in _method("cxr").nets


def test_loading_a_state_without_ema_starts_the_copy_from_g():
    torch.manual_seed(0)
    plain = _method(ema_decay=0.0)
    with torch.no_grad():
        for p in plain.nets["G"].parameters():
            p.add_(1.0)
    m = _method()
    m.load_state_dict(plain.state_dict(), with_optimizers=False)
    for a, b in zip(m.nets["G_ema"].parameters(), plain.nets["G"].parameters()):
        assert torch.equal(a, b)
    assert m.ema_updates == 0
    # and the other way: a state with an EMA copy loads into a method without one (its G is the live G)
    plain.load_state_dict(m.state_dict(), with_optimizers=False)


def test_cli_ema_decay_zero_is_honoured(monkeypatch):
    """``--ema-decay 0`` is a value, not an absent option (0 == False in Python)."""
    from diffseg_core.cli import _model_overrides, _parser

    args = _parser().parse_args(["train", "--method", "cdal", "--dataset", "hippocampus", "--out", "x",
                                 "--ema-decay", "0", "--spatial-dims", "3"])
    assert _model_overrides(args) == {"ema_decay": 0.0, "spatial_dims": 3}
