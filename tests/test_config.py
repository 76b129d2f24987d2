"""Presets, auto resolution, overrides and serialisation of the one config system."""
from __future__ import annotations

import pytest

from diffseg_core.config import PRESETS, RunConfig, override, resolve_preset
from diffseg_core.methods import get_config


def test_auto_follows_the_accelerator(monkeypatch):
    import diffseg_core.config as config

    monkeypatch.setattr(config, "accelerator_available", lambda: False)
    assert resolve_preset("auto") == "cpu"
    monkeypatch.setattr(config, "accelerator_available", lambda: True)
    assert resolve_preset("auto") == "gpu"


def test_env_preset_is_read(monkeypatch):
    monkeypatch.setenv("DIFFSEG_PRESET", "smoke")
    assert resolve_preset(None) == "smoke"
    with pytest.raises(ValueError, match="unknown preset"):
        resolve_preset("huge")


def test_presets_grow_and_roundtrip():
    steps = [get_config("unet", "monuseg", p).train.steps for p in PRESETS]
    assert steps == sorted(steps) and steps[0] < 50
    cfg = get_config("unet", "monuseg", "cpu", seed=3)
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert cfg.data.working_size == 512, "MoNuSeg keeps the 512 working scale on cpu (book/decisions.md)"


def test_override_and_unknown_options():
    cfg = override(get_config("unet", "synthetic", "smoke"), **{"train.steps": 3, "data.crop": 16})
    assert cfg.train.steps == 3 and cfg.data.crop == 16
    with pytest.raises(ValueError, match="unknown setting"):
        override(cfg, **{"train.nope": 1})
    with pytest.raises(ValueError, match="unet: unknown option"):
        get_config("unet", "synthetic", "smoke", attn_scale=8)
    with pytest.raises(ValueError, match="unknown method"):
        get_config("segformer", "synthetic", "smoke")


def test_train_settings_follow_model_overrides():
    """``--train-images`` changes the step count (epochs x images / batch), not only the model config."""
    base = get_config("textdiff", "monuseg", "cpu")
    more = get_config("textdiff", "monuseg", "cpu", train_images=2 * base.model["train_images"])
    assert more.model["train_images"] == 2 * base.model["train_images"]
    assert more.train.steps > base.train.steps
