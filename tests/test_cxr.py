"""cDAL on chest X-rays (chapter 07): the CXR presets, and the whole pipeline on the real subset.

The paper's CXR setting is T = 2 with the attention map read at 1/16 of the input (Table 1's best for CXR,
book/decisions.md, D5); every preset must be able to build it. The real-data test trains and evaluates
through the CLI on ``../shared/data/cxr_lung`` at ``smoke`` (seconds), and skips when the folder is absent.
"""
from __future__ import annotations

import json

import pytest

from diffseg_core.cdal import CDALConfig
from diffseg_core.cdal.discriminator import build_discriminator
from diffseg_core.cdal.generator import build_generator
from diffseg_core.methods import get_config


@pytest.mark.parametrize("preset", ["smoke", "cpu", "gpu", "paper"])
def test_cxr_presets_read_attention_at_one_sixteenth(preset):
    cfg = get_config("cdal", "cxr", preset)
    mc = CDALConfig.from_dict(cfg.model)
    assert mc.timesteps == 2 and mc.attn_scale == 16 and mc.image_norm == "symmetric"
    downsample = mc.d_downsample or (True,) * len(mc.d_stages)
    factors = [2 ** sum(downsample[:i]) for i in range(len(downsample) + 1)]   # per D stage, index 0 = start conv
    assert 16 in factors and cfg.data.crop // 16 >= 1
    if preset in ("smoke", "cpu"):                     # small enough to build in a unit test
        D = build_discriminator(mc, 1)
        assert D.stage_factors == factors and D.stage_factors[D.stage_for_scale(16)] == 16
        assert cfg.data.crop % build_generator(mc, 1, 1).divisor == 0
    assert cfg.data.augment == "affine"                # the official CXR pipeline: no flips
    # the official code's stage (1/4) is one option away
    assert CDALConfig.from_dict(get_config("cdal", "cxr", preset, attn_scale=4).model).attn_scale == 4


def test_cxr_cpu_preset_scores_whole_64px_images_for_both_methods():
    cdal, unet = get_config("cdal", "cxr", "cpu"), get_config("unet", "cxr", "cpu")
    assert cdal.data == unet.data                      # one data pipeline: the comparison is at equal protocol
    assert cdal.data.working_size == cdal.data.crop == 64


def test_cdal_trains_and_evaluates_on_real_cxr(cxr_root, tmp_path):
    from diffseg_core.cli import main

    run = tmp_path / "run"
    assert main(["train", "--method", "cdal", "--dataset", "cxr", "--data", str(cxr_root), "--preset", "smoke",
                 "--out", str(run), "--steps", "3", "--no-progress"]) == 0
    out = tmp_path / "test.json"
    assert main(["evaluate", "--run", str(run), "--data", str(cxr_root), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["dataset"] == "cxr" and res["data_source"] == "real" and res["n_images"] >= 1
    assert 0.0 <= res["dice_mean"] <= 1.0 and len(res["per_image_dice"]) == res["n_images"]
    assert "augmentation 'affine'" in res["protocol"]
    assert json.loads((run / "run.json").read_text())["method_info"]["attention_stage"] == 4  # the 1/16 stage
