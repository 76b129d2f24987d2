"""Diffusion features: the forward process, block choice by resolution, shared noise, hooks, cache, backbone files."""
from __future__ import annotations

import pytest
import torch

from diffseg_core.textdiff import cache as fx
from diffseg_core.textdiff import (DiffusionFeatureExtractor, FeatureCache, build_backbone, ddpm_signal_levels,
                                   decoder_blocks, load_backbone, pretrain_ddpm,
                                   select_blocks_by_resolution)


def test_signal_levels_match_method_notes():
    # book/decisions.md: signal/noise at t = 50/150/250 are 0.985/0.173, 0.887/0.463, 0.722/0.692
    s = ddpm_signal_levels([50, 150, 250])
    assert s.tolist() == pytest.approx([0.985, 0.887, 0.722], abs=1e-3)
    assert (1 - s**2).sqrt().tolist() == pytest.approx([0.173, 0.463, 0.692], abs=1e-3)
    # t = 0: one step of beta_0 = 1e-4, abar = 0.9999
    assert ddpm_signal_levels([0]).item() == pytest.approx(0.9999**0.5, abs=1e-9)
    with pytest.raises(ValueError, match="timesteps"):
        ddpm_signal_levels([1000])


def test_signal_levels_agree_with_monai_scheduler():
    from monai.networks.schedulers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta", beta_start=1e-4, beta_end=0.02)
    t = [0, 50, 150, 250, 999]
    assert torch.allclose(ddpm_signal_levels(t).float(), sched.alphas_cumprod[t].sqrt(), atol=1e-5)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return build_backbone("smoke", in_channels=3, image_size=32)  # 3 levels, 1 res block: 2 layers per level


def test_decoder_blocks_and_selection(unet):
    blocks = decoder_blocks(unet)
    assert [b.level for b in blocks] == [2, 2, 1, 1, 0, 0]  # coarsest first, like ADM's output_blocks
    assert [b.channels for b in blocks] == [32, 32, 16, 16, 16, 16]
    assert select_blocks_by_resolution(unet, 32, (1 / 4, 1 / 2, 1)) == [1, 3, 5]  # last layer of each level
    with pytest.raises(ValueError, match="no decoder block at 0.125"):
        select_blocks_by_resolution(unet, 32, (1 / 8,))
    with pytest.raises(ValueError, match="divisible"):
        select_blocks_by_resolution(unet, 30)


def test_feature_shapes_per_block(unet):
    ex = DiffusionFeatureExtractor(unet, timesteps=(50, 150, 250), blocks=[1, 3, 5], noise_seed=0)
    feats = ex.extract(torch.rand(2, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(2, 96, 8, 8), (2, 48, 16, 16), (2, 48, 32, 32)]
    assert ex.feature_dims() == [96, 48, 48] and ex.fractions() == [0.25, 0.5, 1.0]
    # no hook is left behind on the backbone
    assert all(len(b.module._forward_hooks) == 0 for b in decoder_blocks(unet))
    assert not any(p.requires_grad for p in unet.parameters())


def test_shared_noise_makes_features_deterministic(unet):
    ex = DiffusionFeatureExtractor(unet, blocks=[1, 5], noise_seed=3)
    img = torch.rand(1, 3, 32, 32)
    a = ex.extract(torch.cat([img, img]))  # the same image twice in one batch
    b = ex.extract(img)  # and again, alone
    for fa, fb in zip(a, b):
        assert torch.equal(fa[0], fa[1])
        assert torch.allclose(fa[:1], fb, atol=1e-5)
    other = DiffusionFeatureExtractor(unet, blocks=[1, 5], noise_seed=4).extract(img)
    assert not torch.allclose(other[1], b[1])


def test_steps_are_concatenated_on_channels(unet):
    img = torch.rand(1, 3, 32, 32)
    three = DiffusionFeatureExtractor(unet, timesteps=(50, 150, 250), blocks=[3], noise_seed=0).extract(img)[0]
    one = DiffusionFeatureExtractor(unet, timesteps=(150,), blocks=[3], noise_seed=0).extract(img)[0]
    assert torch.allclose(three[:, 16:32], one, atol=1e-5)  # t=150 is the second block of 16 channels
    per_step = DiffusionFeatureExtractor(unet, blocks=[3], noise_seed=0).extract(img, return_per_step=True)
    assert len(per_step) == 1 and len(per_step[0]) == 3
    assert torch.allclose(torch.cat(per_step[0], dim=1), three, atol=1e-6)


def test_extract_rejects_bad_images(unet):
    ex = DiffusionFeatureExtractor(unet, blocks=[5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ex.extract(torch.full((1, 3, 32, 32), 2.0))
    with pytest.raises(ValueError, match="3, H, W"):
        ex.extract(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        ex.extract(torch.rand(1, 3, 30, 30))
    with pytest.raises(ValueError, match="out of range"):
        DiffusionFeatureExtractor(unet, blocks=[6])


def test_feature_cache_computes_once_and_evicts():
    calls = []

    def extract(x):
        calls.append(x.shape[0])
        return [x.mean(1, keepdim=True), x[:, :1, ::2, ::2]]

    cache = FeatureCache(max_items=2)
    imgs = torch.rand(3, 3, 4, 4)
    out = cache.features(["a", "b"], imgs[:2], extract)
    assert [tuple(f.shape) for f in out] == [(2, 1, 4, 4), (2, 1, 2, 2)]
    again = cache.features(["b", "a"], imgs[[1, 0]], extract)
    assert calls == [2] and cache.hits == 2  # nothing re-extracted
    assert torch.equal(again[0][0], out[0][1])
    cache.features(["c"], imgs[2:], extract)  # evicts the least recently used ("b")
    assert calls == [2, 1] and cache.keys() == ["a", "c"]
    with pytest.raises(KeyError, match="'b'"):
        cache.get("b")
    assert fx.image_key(imgs[0]) == fx.image_key(imgs[0].clone()) != fx.image_key(imgs[1])


def test_pretrain_caches_and_reuses_checkpoint(tmp_path, capsys):
    images = torch.rand(3, 3, 32, 32)
    unet, losses = pretrain_ddpm(images, "smoke", steps=3, run_dir=tmp_path, seed=0, progress=False,
                                 device=torch.device("cpu"))
    assert len(losses) == 3 and all(l > 0 for l in losses)
    assert (tmp_path / "backbone.pt").is_file()
    assert not any(p.requires_grad for p in unet.parameters())
    capsys.readouterr()
    again, losses2 = pretrain_ddpm(images, "smoke", steps=3, run_dir=tmp_path, progress=False,
                                   device=torch.device("cpu"))
    assert "backbone: reusing the cached" in capsys.readouterr().out, "the log says when the cache is used"
    assert losses2 == losses
    for (k, a), (_, b) in zip(unet.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pretrain_ddpm(images * 3, "smoke", steps=1)


def test_pretrain_shares_backbones_through_the_cache_folder(tmp_path, capsys, monkeypatch):
    """Chapters 10-12 pre-train the same backbone: with a shared folder (``DIFFSEG_CACHE``, set by the main job) the
    second call loads the first's weights, copies them into its own run folder, and says so."""
    from diffseg_core.checkpoint import load_checkpoint
    from diffseg_core.textdiff.pretrain import CACHE_ENV, shared_cache_dir

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "shared"))
    assert shared_cache_dir() == tmp_path / "shared" / "backbones"
    assert shared_cache_dir(tmp_path / "x") == tmp_path / "x" / "backbones", "an explicit folder wins"
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kw = dict(steps=3, seed=0, progress=False, device=torch.device("cpu"))
    first, losses = pretrain_ddpm(images, "smoke", **kw)                       # no run folder: the shared one only
    [cached] = list((tmp_path / "shared" / "backbones").glob("*.pt"))
    assert cached.stem == load_checkpoint(cached)["cache_key"]
    capsys.readouterr()
    second, losses2 = pretrain_ddpm(images.clone(), "smoke", run_dir=tmp_path / "run", **kw)
    assert f"reusing the cached {cached}" in capsys.readouterr().out and losses2 == losses
    assert load_checkpoint(tmp_path / "run" / "backbone.pt")["cache_key"] == cached.stem, "the run folder stays whole"
    for (k, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), k
    _, other = pretrain_ddpm(images, "smoke", **{**kw, "seed": 1})            # other inputs: trained, cached beside
    assert other != losses and len(list(cached.parent.glob("*.pt"))) == 2
    cached.write_bytes(b"not a checkpoint")                                     # e.g. a disk that filled up
    capsys.readouterr()
    _, again = pretrain_ddpm(images, "smoke", **kw)
    assert "ignoring the shared cache file" in capsys.readouterr().out and again == losses, "retrained, not stopped"
    assert load_checkpoint(cached)["cache_key"] == cached.stem, "and the cache file repaired"
    monkeypatch.delenv(CACHE_ENV)
    assert shared_cache_dir() is None


@pytest.mark.parametrize("change,why", [
    (dict(images=torch.rand(3, 3, 32, 32)), "training images"),   # another dataset (or other images of it)
    (dict(seed=1), "seed"),
    (dict(steps=4), "DDPM settings"),
    (dict(crop=16), "DDPM settings"),
])
def test_backbone_cache_is_keyed_on_everything_that_determines_it(tmp_path, capsys, change, why):
    """A cached backbone is never served for other images, another seed or other DDPM settings: it is retrained."""
    from diffseg_core.checkpoint import load_checkpoint

    base = dict(images=torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)), seed=0, steps=3)
    pretrain_ddpm(base["images"], "smoke", steps=base["steps"], run_dir=tmp_path, seed=base["seed"], progress=False,
                  device=torch.device("cpu"))
    first = load_checkpoint(tmp_path / "backbone.pt")
    args = {**base, **change}
    capsys.readouterr()
    _, losses = pretrain_ddpm(args.pop("images"), "smoke", run_dir=tmp_path, progress=False, device=torch.device("cpu"),
                              **args)
    out = capsys.readouterr().out
    assert f"not reusing {tmp_path / 'backbone.pt'}" in out and why in out and "reusing the cached" not in out
    second = load_checkpoint(tmp_path / "backbone.pt")
    assert second["cache_key"] != first["cache_key"] and len(losses) == args.get("steps", 3)


def test_load_backbone_formats(tmp_path, unet):
    # our own format (what pretrain_ddpm writes)
    pretrain_ddpm(torch.rand(2, 3, 32, 32), "smoke", steps=1, run_dir=tmp_path, progress=False,
                  device=torch.device("cpu"))
    loaded = load_backbone(tmp_path / "backbone.pt", in_channels=3, image_size=32, device=torch.device("cpu"))
    assert len(decoder_blocks(loaded)) == 6
    # a bare state dict of a preset architecture
    torch.save(unet.state_dict(), tmp_path / "bare.pt")
    bare = load_backbone(tmp_path / "bare.pt", in_channels=3, device=torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(bare.state_dict().values(), unet.state_dict().values()))
    with pytest.raises(ValueError, match="3-channel images, the dataset has 1"):
        load_backbone(tmp_path / "backbone.pt", in_channels=1)
    torch.save({"w": torch.zeros(3)}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="matches none"):
        load_backbone(tmp_path / "junk.pt", in_channels=3)
    with pytest.raises(FileNotFoundError):
        load_backbone(tmp_path / "missing.pt", in_channels=3)


def test_feature_cache_bounded_by_bytes():
    cache = FeatureCache(max_bytes=3 * 16 * 4)  # room for three 16-float entries
    for i in range(5):
        cache.put(f"k{i}", [torch.zeros(4, 4)])
    assert cache.keys() == ["k2", "k3", "k4"] and cache.nbytes() == 3 * 64
    cache.put("big", [torch.zeros(100)])  # larger than the bound: kept alone (the newest is never dropped)
    assert cache.keys() == ["big"]
