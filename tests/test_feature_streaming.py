"""TextDiff features for many images: batched over images and noise levels, bounded in memory, streamed from disk."""
from __future__ import annotations

import pytest
import torch

from diffseg_core.textdiff import DiffusionFeatureExtractor, FeatureCache, build_backbone


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return build_backbone("smoke", in_channels=3, image_size=32)


def test_passes_of_several_images_give_the_features_of_one_pass(unet):
    imgs = torch.rand(5, 3, 32, 32)
    whole = DiffusionFeatureExtractor(unet, blocks=[1, 5], noise_seed=2).extract(imgs)
    two = DiffusionFeatureExtractor(unet, blocks=[1, 5], noise_seed=2, batch_pixels=2 * 32 * 32)
    assert two.images_per_pass(32, 32) == 2
    for a, b in zip(whole, two.extract(imgs)):                      # 3 passes: 2 + 2 + 1 images
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    per_step = two.extract(imgs, return_per_step=True)
    assert len(per_step) == 2 and len(per_step[0]) == 3 and per_step[0][0].shape[0] == 5
    with pytest.raises(ValueError, match="batch_pixels"):
        DiffusionFeatureExtractor(unet, blocks=[1], batch_pixels=0)


def test_cache_streams_entries_beyond_its_memory_bound_from_disk(tmp_path):
    calls = []

    def extract(x):
        calls.append(x.shape[0])
        return [x * 2, x[:, :1, ::2, ::2]]

    entry_bytes = (3 * 8 * 8 + 4 * 4) * 4
    cache = FeatureCache(max_bytes=2 * entry_bytes, spill_dir=tmp_path / "spill")
    imgs = torch.rand(6, 3, 8, 8)
    keys = [f"k{i}" for i in range(6)]
    assert cache.features(keys, imgs, extract, batch_images=4, keep=False) == []
    assert calls == [4, 2]                                              # two extraction passes
    assert cache.nbytes() <= 2 * entry_bytes and len(cache.keys()) == 2 and len(cache.disk_keys()) == 4
    assert len(cache) == 6 and all(k in cache for k in keys)
    out = cache.features(keys, imgs, extract)                           # everything comes back, nothing re-extracted
    assert calls == [4, 2] and cache.hits == 6 and cache.disk_reads >= 4
    torch.testing.assert_close(out[0], imgs * 2)
    torch.testing.assert_close(out[1], imgs[:, :1, ::2, ::2])
    assert cache.nbytes() <= 2 * entry_bytes                            # still bounded after the read-back
    st = cache.stats()
    assert st["items_on_disk"] >= 4 and st["mb_on_disk"] > 0 and st["misses"] == 6


def test_cache_without_spill_drops_and_owns_no_folder():
    cache = FeatureCache(max_items=1)
    cache.put("a", [torch.zeros(2)])
    cache.put("b", [torch.ones(2)])
    assert "a" not in cache and cache.disk_keys() == []
    with pytest.raises(KeyError, match="'a'"):
        cache.get("a")
    # results for a batch larger than the bound are still complete (built from the fresh extraction)
    out = cache.features(["x", "y", "z"], torch.rand(3, 2), lambda x: [x + 1])
    assert out[0].shape == (3, 2) and len(cache.keys()) == 1


def test_a_temporary_spill_folder_is_removed_with_the_cache():
    cache = FeatureCache(max_items=1, spill=True)
    cache.put("a", [torch.zeros(4)])
    cache.put("b", [torch.zeros(4)])
    folder = cache._spill_dir
    assert folder is not None and folder.is_dir() and cache.disk_keys() == ["a"]
    torch.testing.assert_close(cache.get("a")[0], torch.zeros(4))
    del cache
    assert not folder.exists()


def test_mixed_precision_is_for_accelerators_only(unet):
    from diffseg_core.textdiff.features import accelerator_autocast_dtype

    assert accelerator_autocast_dtype(torch.device("cpu")) is None
    assert accelerator_autocast_dtype(torch.device("meta")) in (torch.bfloat16, torch.float16)
    imgs = torch.rand(2, 3, 32, 32)
    plain = DiffusionFeatureExtractor(unet, blocks=[1, 5], noise_seed=1).extract(imgs)
    asked = DiffusionFeatureExtractor(unet, blocks=[1, 5], noise_seed=1, autocast_dtype=torch.float16).extract(imgs)
    for a, b in zip(plain, asked):                      # on a CPU the request is a no-op
        assert torch.equal(a, b) and b.dtype == torch.float32
