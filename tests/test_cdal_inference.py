"""cDAL inference arranged for the hardware gives the samples of Algorithm 2 as written, and the predictions of
the first implementation (kept, verbatim, as the baseline of ``benchmarks/cdal_inference.py``)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from diffseg_core.cdal import CDALConfig, CDALMethod, build_generator, g_step, sample_cdal
from diffseg_core.cdal.sampling import (ACCELERATOR_BATCH_PIXELS, CPU_BATCH_PIXELS, SamplerPlan, attention_extent,
                                        cpu_supports_bf16, default_plan, posterior_coefficients, sample_cdal_ensemble)
from diffseg_core.data import DatasetInfo
from diffseg_core.data.base import Case
from diffseg_core.evaluate import describe_protocol, evaluate_cases, predict_case, result_row
from diffseg_core.methods import get_config
from diffseg_core.schedule import sample_posterior, vp_schedule

SMOKE = CDALConfig.for_preset("smoke", "monuseg")
BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "cdal_inference.py"


def _baseline():
    spec = importlib.util.spec_from_file_location("bench_cdal_inference", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _g(cfg: CDALConfig = SMOKE, label_ch: int = 1):
    torch.manual_seed(0)
    G = build_generator(cfg, label_ch, 3).eval()
    with torch.no_grad():                       # off the near-zero init, so every input matters
        for p in G.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return G


def _method(seed: int = 0) -> CDALMethod:
    cfg = get_config("cdal", "monuseg", "smoke", seed=seed)
    torch.manual_seed(0)
    m = CDALMethod(cfg, DatasetInfo("monuseg", 3, 2, ("background", "nucleus")), torch.device("cpu"))
    with torch.no_grad():
        for p in m.nets["G"].parameters():
            p.add_(torch.randn_like(p) * 0.1)
    m.n_ensemble = m.model_cfg.ensemble
    return m


@pytest.mark.parametrize("label_ch", [1, 3])
def test_one_batch_nchw_fp32_is_bit_identical_to_algorithm_2(label_ch):
    G, sched, img = _g(label_ch=label_ch), vp_schedule(4), torch.randn(3, 3, 32, 32)
    ref = sample_cdal(G, sched, img, 4, generator=torch.Generator().manual_seed(5))
    r = sample_cdal_ensemble(G, sched, img, 4, generator=torch.Generator().manual_seed(5),
                             plan=SamplerPlan(10**9, channels_last=False))
    assert torch.equal(r["samples"], ref["samples"]) and torch.equal(r["mask"], ref["mask"])
    assert torch.equal(r["variance"], ref["variance"]) and r["nfe"] == ref["nfe"] == 16


@pytest.mark.parametrize("plan", [SamplerPlan(32 * 32, True), SamplerPlan(3 * 32 * 32, False), SamplerPlan(5 * 32 * 32, True),
                                  SamplerPlan(ACCELERATOR_BATCH_PIXELS, True)])
def test_batching_and_layout_change_only_float_rounding(plan):
    G, sched, img = _g(), vp_schedule(4), torch.randn(5, 3, 32, 32)
    ref = sample_cdal(G, sched, img, 3, generator=torch.Generator().manual_seed(1))
    r = sample_cdal_ensemble(G, sched, img, 3, generator=torch.Generator().manual_seed(1), plan=plan)
    torch.testing.assert_close(r["samples"], ref["samples"], atol=2e-5, rtol=0)
    # the layout is restored: G's weights are as before, and still trainable (not inference tensors)
    conv = G.conv_in.weight
    assert conv.is_contiguous() and not conv.is_inference()


def test_no_latent_and_seed_groups_match_separate_calls():
    G, sched, img = _g(), vp_schedule(2), torch.randn(7, 3, 32, 32)
    r = sample_cdal_ensemble(G, sched, img, 2, use_latent=False, generator=torch.Generator().manual_seed(9),
                             seed_group=3)
    parts = [sample_cdal(G, sched, img[i:i + 3], 2, use_latent=False, generator=torch.Generator().manual_seed(9))
             for i in range(0, 7, 3)]
    torch.testing.assert_close(r["mean"], torch.cat([p["mean"] for p in parts]), atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="seed_group"):
        sample_cdal_ensemble(G, sched, img, 2, seed_group=3)          # nothing to re-start


def test_posterior_coefficients_reproduce_eq3_exactly():
    sched = vp_schedule(4)
    x0, x, eps = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    for t, (a, c, s) in enumerate(posterior_coefficients(sched)):
        tt = torch.full((3,), t, dtype=torch.long)
        ours = a * x0 + c * x + (s * eps if s else 0.0)
        assert torch.equal(ours, sample_posterior(sched, x0, x, tt, eps))
    assert posterior_coefficients(sched)[0] == (1.0, 0.0, 0.0)


def test_predict_equals_the_first_implementation():
    """64 tiles in one call, re-seeded per 16: what the old path computed with 4 sliding-window calls."""
    m, base = _method(), _baseline()
    tiles = torch.rand(40, 3, 32, 32)
    new = m.predict(tiles)
    old = torch.cat([base.baseline_predict(m, tiles[i:i + 16]) for i in range(0, 40, 16)])
    torch.testing.assert_close(new, old, atol=2e-5, rtol=0)
    assert torch.equal(m.predict(tiles[:16]), m.predict(tiles)[:16])   # tiles per call do not matter


def test_predict_case_and_evaluation_equal_the_first_implementation():
    m, base = _method(seed=3), _baseline()
    rng = np.random.default_rng(0)
    case = Case(id="c", image=rng.random((3, 160, 128)).astype(np.float32),
                label=(rng.random((160, 128)) > 0.7).astype(np.int64))
    assert m.inference_batch() >= 20                                 # a whole image's tiles in one call
    np.testing.assert_allclose(predict_case(m, case), base.baseline_predict_case(m, case), atol=2e-5, rtol=0)
    scores = evaluate_cases(m, [case])
    assert "fp32, channels-last" in scores["inference"] and "re-seeded per 16 tiles" in scores["inference"]
    scores["protocol"] = describe_protocol(m.cfg, "test", 1, "last.pt")
    row = result_row("cDAL", scores, "synthetic")
    assert row["protocol"].endswith(scores["inference"])


def test_predict_keeps_the_generator_trainable():
    m = _method()
    m.predict(torch.rand(2, 3, 32, 32))
    batch = {"image": torch.rand(2, 3, 32, 32), "label": torch.randint(0, 2, (2, 32, 32))}
    x0, image = m._inputs(batch)
    out = g_step(m.nets["G"], None, m.sched, x0, image, m.model_cfg, m.optimizers["g"])
    assert np.isfinite(out["mse"])


# ---- accelerator paths, exercised on the CPU ---------------------------------------------------------
def test_plans_per_device_and_their_cpu_fallbacks(monkeypatch):
    cpu = torch.device("cpu")
    assert default_plan(cpu) == SamplerPlan(CPU_BATCH_PIXELS, True, "fp32")
    acc = default_plan(torch.device("meta"))          # any non-CPU device: mixed precision, large batches
    assert acc.precision in ("bf16", "fp16") and acc.batch_pixels == ACCELERATOR_BATCH_PIXELS
    assert acc.chains_per_batch(64, 64) == 256 and acc.chains_per_batch(256, 256) == 16
    # on a CPU, fp16 autocast and bf16 without native support are no-ops: the plan runs in fp32
    assert SamplerPlan(precision="fp16").resolved(cpu).precision == "fp32"
    monkeypatch.setattr("diffseg_core.cdal.sampling.cpu_supports_bf16", lambda: False)
    assert SamplerPlan(precision="bf16").resolved(cpu).precision == "fp32"
    G, sched, img = _g(), vp_schedule(4), torch.randn(2, 3, 32, 32)
    a = sample_cdal_ensemble(G, sched, img, 2, generator=torch.Generator().manual_seed(0), plan=acc)
    b = sample_cdal_ensemble(G, sched, img, 2, generator=torch.Generator().manual_seed(0),
                             plan=SamplerPlan(ACCELERATOR_BATCH_PIXELS, True, "fp32"))
    assert a["plan"].precision == "fp32" or cpu_supports_bf16()
    if a["plan"].precision == "fp32":
        assert torch.equal(a["samples"], b["samples"])
    with pytest.raises(ValueError, match="precision"):
        SamplerPlan(precision="int8")


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_bf16_autocast_runs_and_stays_close():
    G, sched, img = _g(), vp_schedule(4), torch.randn(2, 3, 32, 32)
    ref = sample_cdal(G, sched, img, 3, generator=torch.Generator().manual_seed(0))
    r = sample_cdal_ensemble(G, sched, img, 3, generator=torch.Generator().manual_seed(0),
                             plan=SamplerPlan(CPU_BATCH_PIXELS, True, "bf16"))
    assert r["plan"].precision == "bf16" and r["samples"].dtype == torch.float32
    assert (r["samples"] - ref["samples"]).abs().max() < 0.1


def test_attention_extent_grows_with_the_window():
    G = build_generator(CDALConfig.for_preset("cpu", "monuseg"), 1, 3)   # only the middle attention
    assert attention_extent(G, 64, 64) == {"middle (level 2)": 256}
    assert attention_extent(G, 512, 512) == {"middle (level 2)": 16384}
    Gg = build_generator(CDALConfig.for_preset("gpu", "monuseg"), 1, 3)
    assert attention_extent(Gg, 256, 256) == {"level 4": 256, "middle (level 4)": 256}


def test_cpu_workers_give_the_same_samples_and_restore_the_thread_count():
    G, sched, img = _g(), vp_schedule(4), torch.randn(6, 3, 32, 32)
    threads = torch.get_num_threads()
    one = sample_cdal_ensemble(G, sched, img, 3, generator=torch.Generator().manual_seed(2),
                               plan=SamplerPlan(2 * 32 * 32, True, workers=1))
    two = sample_cdal_ensemble(G, sched, img, 3, generator=torch.Generator().manual_seed(2),
                               plan=SamplerPlan(2 * 32 * 32, True, workers=2))
    torch.testing.assert_close(two["samples"], one["samples"], atol=2e-5, rtol=0)
    assert torch.get_num_threads() == threads
    assert two["plan"].workers == 2 and "2 workers x 1 thread" in two["plan"].describe(32, 32)
    assert SamplerPlan(workers=None).resolved(torch.device("cpu")).workers == max(1, threads)
    assert default_plan(torch.device("meta")).resolved(torch.device("meta")).workers == 1
    with pytest.raises(ValueError, match="workers"):
        SamplerPlan(workers=0)


def test_fake_accelerator_backends_choose_the_precision(monkeypatch):
    """The accelerator branches of the plans, driven by a stand-in ``torch.<backend>`` on the CPU: bf16 where the
    backend says it supports it, fp16 where it says not or cannot say; never a CPU fallback off the CPU."""
    from types import SimpleNamespace

    from diffseg_core.textdiff.features import accelerator_autocast_dtype

    meta = torch.device("meta")

    def broken():
        raise RuntimeError("no driver")

    for says, precision, dtype in ((lambda: True, "bf16", torch.bfloat16), (lambda: False, "fp16", torch.float16),
                                   (broken, "fp16", torch.float16)):
        monkeypatch.setattr(torch, "meta", SimpleNamespace(is_bf16_supported=says), raising=False)
        plan = default_plan(meta)
        assert plan.precision == precision and plan.batch_pixels == ACCELERATOR_BATCH_PIXELS
        ran = plan.resolved(meta)
        assert ran.precision == precision and ran.workers == 1 and ran.channels_last
        assert accelerator_autocast_dtype(meta) == dtype
    monkeypatch.delattr(torch, "meta")
    assert default_plan(meta).precision == "fp16"                   # a backend without the query: fp16
    assert accelerator_autocast_dtype(meta) == torch.float16


# ---- the EMA generator and 3-D (main's hippocampus paths) -----------------------------------------------
def _main_predict(m: CDALMethod, tiles: torch.Tensor) -> torch.Tensor:
    """``CDALMethod.predict`` as main wrote it after the EMA/3-D merge: Algorithm 2 as written on the sampling
    generator, re-seeded per call."""
    from diffseg_core.cdal import normalize_image, x0_to_probs

    gen = torch.Generator().manual_seed(int(m.cfg.seed))
    r = sample_cdal(m.sampling_generator(), m.sched, normalize_image(tiles.float(), m.model_cfg.image_norm),
                    n_samples=m.n_ensemble, use_latent=m.model_cfg.use_latent, generator=gen)
    return x0_to_probs(r["mean"] * 2.0 - 1.0)


def _hippo_method(**kw) -> CDALMethod:
    cfg = get_config("cdal", "hippocampus", "smoke", seed=2, **kw)
    torch.manual_seed(0)
    m = CDALMethod(cfg, DatasetInfo("hippocampus", 1, 3, ("background", "anterior", "posterior")), torch.device("cpu"))
    with torch.no_grad():                    # G and its EMA copy differ, and both are off the near-zero init
        for name in ("G", "G_ema"):
            for p in m.nets[name].parameters():
                p.add_(torch.randn_like(p) * 0.1)
    m.ema_updates = 1                         # as after a training step: predict samples G_ema
    m.n_ensemble = 2
    m.eval()
    return m


def test_predict_samples_the_ema_generator_as_main_does():
    m = _hippo_method()
    assert m.sampling_generator() is m.nets["G_ema"]
    tiles = torch.rand(5, 1, 32, 32)
    new = m.predict(tiles)
    torch.testing.assert_close(new, _main_predict(m, tiles), atol=2e-5, rtol=0)
    m.ema_updates = 0                          # the live G: a different prediction (the test can tell them apart)
    assert (m.predict(tiles) - new).abs().max() > 1e-3


def test_3d_generator_samples_equal_algorithm_2_as_written():
    from diffseg_core.cdal.generator import ConditionalGenerator

    torch.manual_seed(0)
    G = ConditionalGenerator(label_channels=3, image_channels=1, nf=8, ch_mult=(1, 2), num_res_blocks=1,
                             attn_resolutions=(8,), image_size=16, nz=8, z_emb_dim=16, n_mlp=1, enc_blocks=1,
                             resample="avg", spatial_dims=3).eval()
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    sched, vol = vp_schedule(2), torch.randn(3, 1, 8, 8, 8)
    ref = sample_cdal(G, sched, vol, 2, generator=torch.Generator().manual_seed(4))
    one = sample_cdal_ensemble(G, sched, vol, 2, generator=torch.Generator().manual_seed(4),
                               plan=SamplerPlan(10**9, channels_last=False, workers=1))
    assert torch.equal(one["samples"], ref["samples"]) and one["samples"].shape == (2, 3, 3, 8, 8, 8)
    # the CPU default (channels-last asked, 2 workers, 2 chains per call): NCDHW, the same samples up to rounding
    many = sample_cdal_ensemble(G, sched, vol, 2, generator=torch.Generator().manual_seed(4),
                                plan=SamplerPlan(2 * 8**3, True, workers=2))
    torch.testing.assert_close(many["samples"], ref["samples"], atol=2e-5, rtol=0)
    assert not many["plan"].channels_last and "NCDHW, 2 chains per generator call" in many["plan"].describe(8, 8, 8)
    assert SamplerPlan().resolved(torch.device("cpu"), 3).channels_last is False
    with pytest.raises(ValueError, match="D, H, W"):
        sample_cdal_ensemble(G, sched, torch.randn(1, 1, 8, 8), 2)


def test_3d_method_predicts_volumes_as_main_does():
    """main's 3-D evaluation (``predict_volume``: sliding c^3 windows, 4 per predict call) gives the same
    probabilities with the batched sampler as with main's ``predict`` (EMA generator)."""
    from monai.inferers import sliding_window_inference

    from diffseg_core.evaluate import predict_volume

    m = _hippo_method(spatial_dims=3)
    roi = m.inference_roi()
    vol = np.random.default_rng(1).random((1, roi + 8, roi, roi)).astype(np.float32)    # 2 windows
    new = predict_volume(m, vol)
    old = sliding_window_inference(torch.from_numpy(vol)[None], roi_size=(roi,) * 3, sw_batch_size=4,
                                   predictor=lambda v: _main_predict(m, v), overlap=m.cfg.data.overlap,
                                   mode="constant")[0].numpy()
    assert new.shape == (3, roi + 8, roi, roi)
    np.testing.assert_allclose(new, old, atol=2e-5, rtol=0)
    assert "NCDHW" in m.inference_note()
