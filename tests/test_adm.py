"""ADM-256 (TextDiff's backbone): names and shapes of the released file, decoder blocks, loading, and TextDiff on it.

The 553 M-parameter network is only built on the meta device here; the end-to-end run uses the same class at a
reduced width (``model_channels=32``, every other setting ADM-256's), saved in the released file's format.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import official_facts
from diffseg_core.textdiff.adm import (ADM256, ADMAttention, ADMCheckpointError, ADMConfig, ADMUNet, TEXTDIFF_ADM_BLOCKS,
                                       adm_config_from_state, adm_timestep_embedding, load_adm)
from diffseg_core.textdiff.backbone import backbone_label, is_adm_spec, load_backbone
from diffseg_core.textdiff.features import DiffusionFeatureExtractor, decoder_blocks

SMALL = ADMConfig(model_channels=32)   # ADM-256 at 1/8 width: same blocks, levels, attention placement
TINY = ADMConfig(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(128,))


def _meta(config: ADMConfig = ADM256) -> ADMUNet:
    with torch.device("meta"):
        return ADMUNet(config)


def test_adm256_has_every_released_name_and_shape():
    facts = official_facts("adm256_uncond")
    model = _meta()
    state = model.state_dict()
    assert list(state) == list(facts["parameters"])                       # names and state_dict order
    assert {k: list(v.shape) for k, v in state.items()} == facts["parameters"]
    assert model.num_parameters() == facts["total_params"] == 552_814_086
    assert not list(model.buffers()) and facts["buffers"] == {}
    assert adm_config_from_state(state) == ADM256                         # the architecture is read off the shapes


def test_decoder_blocks_have_the_listed_channels_and_resolutions():
    facts = official_facts("adm256_uncond")
    model = _meta()
    info = model.output_block_info()
    assert [(b["out_channels"], b["resolution"], b["layers"]) for b in info] == \
        [(b["out_channels"], b["resolution"], b["layers"]) for b in facts["output_blocks"]]
    shapes: dict[int, tuple[int, ...]] = {}
    hooks = [b.module.register_forward_hook(lambda _m, _i, out, i=b.index: shapes.__setitem__(i, tuple(out.shape)))
             for b in decoder_blocks(model)]
    with torch.device("meta"):                                            # shape propagation only
        out = model(torch.empty(1, 3, 256, 256), torch.zeros(1, dtype=torch.long))
    for h in hooks:
        h.remove()
    assert tuple(out.shape) == tuple(facts["final_out_shape"])
    assert [shapes[i] for i in range(18)] == [tuple(b["output_shape"]) for b in facts["output_blocks"]]
    for exp, key in (("monuseg_2", "monuseg"), ("qata_cov19_v2_2", "qata")):
        paper = facts["textdiff"]["experiments"][exp]
        assert list(TEXTDIFF_ADM_BLOCKS[key]) == paper["blocks"] and paper["steps"] == [50, 150, 250]
        assert {str(b): list(shapes[b]) for b in TEXTDIFF_ADM_BLOCKS[key]} == paper["block_shapes_for_256_input"]
        assert [model.decoder_blocks()[b].channels * 3 for b in TEXTDIFF_ADM_BLOCKS[key]] == paper["pixel_classifier_extract_dims"]


def test_timestep_embedding_and_attention_by_hand():
    # t = 0: cos(0) = 1 for the first half, sin(0) = 0 for the second (ADM puts the cosine first)
    e = adm_timestep_embedding(torch.tensor([0, 3]), 8)
    assert torch.equal(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert e[1, 1].item() == pytest.approx(math.cos(3 * 10000 ** (-1 / 4)), abs=1e-6)
    # attention: the fused qkv is laid out per head as [q, k, v]; compare with a loop over heads
    torch.manual_seed(0)
    attn = ADMAttention(64, num_head_channels=32).eval()
    x = torch.randn(2, 64, 3, 5)
    qkv = attn.qkv(attn.norm(x.reshape(2, 64, 15)))
    heads = []
    for h in range(2):
        q, k, v = qkv[:, h * 96:(h + 1) * 96].split(32, dim=1)           # (B, 32, L) each
        w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(32), dim=-1)
        heads.append(torch.einsum("bts,bcs->bct", w, v))
    want = x + attn.proj_out(torch.cat(heads, dim=1)).reshape(2, 64, 3, 5)
    assert torch.allclose(attn(x), want, atol=1e-5)


def test_load_adm_is_strict_and_names_the_key(tmp_path):
    assert adm_config_from_state(_meta(SMALL).state_dict()) == SMALL
    torch.manual_seed(0)
    state = ADMUNet(TINY).state_dict()
    assert adm_config_from_state(state) == TINY
    path = tmp_path / "adm.pt"
    torch.save(state, path)                                                # a bare state_dict, as released
    model = load_adm(path)
    assert model.config == TINY and all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    missing = {k: v for k, v in state.items() if k != "output_blocks.3.1.qkv.weight"}
    with pytest.raises(ADMCheckpointError, match=r"'output_blocks\.3\.1\.qkv\.weight' is missing"):
        load_adm(missing, TINY)
    with pytest.raises(ADMCheckpointError, match=r"unexpected key 'label_emb\.weight'"):
        load_adm({**state, "label_emb.weight": torch.zeros(1000, 128)}, TINY)
    with pytest.raises(ADMCheckpointError, match=r"'out\.2\.weight' has shape"):
        load_adm({**state, "out.2.weight": torch.zeros(3, 32, 3, 3)}, TINY)
    with pytest.raises(ADMCheckpointError, match="input_blocks.0.0.weight"):
        load_adm({"foo": torch.zeros(1)})
    torch.save({"state_dict": state}, tmp_path / "wrapped.pt")
    with pytest.raises(ADMCheckpointError, match="bare state_dict"):
        load_adm(tmp_path / "wrapped.pt")


def test_small_adm_features_at_the_paper_blocks_and_grey_images(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "adm.pt"
    torch.save(ADMUNet(SMALL).state_dict(), path)
    unet = load_backbone(f"adm256:{path}", in_channels=1, image_size=32, device=torch.device("cpu"))
    assert not any(p.requires_grad for p in unet.parameters()) and not unet.training
    ex = DiffusionFeatureExtractor(unet, (50, 150, 250), list(TEXTDIFF_ADM_BLOCKS["monuseg"]), noise_seed=40)
    feats = ex.extract(torch.rand(2, 1, 32, 32))                          # grey: repeated to RGB for ADM
    assert [tuple(f.shape) for f in feats] == [(2, 64 * 3, 4, 4), (2, 64 * 3, 8, 8), (2, 32 * 3, 16, 16), (2, 32 * 3, 32, 32)]
    assert ex.fractions() == [1 / 8, 1 / 4, 1 / 2, 1.0] and ex.feature_dims() == [192, 192, 96, 96]
    with pytest.raises(ValueError, match="divisible"):
        load_backbone(f"adm256:{path}", in_channels=3, image_size=48)


def test_backbone_specs_labels_and_presets(tmp_path, monkeypatch):
    from diffseg_core.textdiff.config import TextDiffConfig
    from diffseg_core.weights import WeightsNotFound

    assert is_adm_spec("adm256") and is_adm_spec("adm256:/x/y.pt") and not is_adm_spec("/x/adm256.pt")
    assert not is_adm_spec(None)
    assert "ADM-256" in backbone_label("adm256:/x.pt") and "substitute" in backbone_label(None)
    monkeypatch.setenv("DIFFSEG_WEIGHTS", str(tmp_path / "weights"))
    with pytest.raises(WeightsNotFound, match="256x256_diffusion_uncond.pt is not in"):
        load_backbone("adm256", 3)
    assert TextDiffConfig.for_preset("paper", "monuseg").backbone is None        # no file: the substitute
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "256x256_diffusion_uncond.pt").write_bytes(b"x")
    for preset in ("paper", "gpu"):
        mc = TextDiffConfig.for_preset(preset, "monuseg")
        assert mc.backbone == f"adm256:{tmp_path / 'weights' / '256x256_diffusion_uncond.pt'}"
        assert mc.adm_blocks == (6, 8, 12, 16)
    assert TextDiffConfig.for_preset("paper", "qata").adm_blocks == (4, 6, 8, 12)
    assert TextDiffConfig.for_preset("cpu", "monuseg").backbone is None and TextDiffConfig.for_preset("smoke").backbone is None


def test_textdiff_trains_and_evaluates_on_an_adm_file(tmp_path):
    """``train --backbone adm256:PATH`` then ``evaluate``: features from ADM's blocks {6, 8, 12, 16}, said in the JSON."""
    from diffseg_core.cli import main

    torch.manual_seed(0)
    adm = tmp_path / "256x256_diffusion_uncond.pt"
    torch.save(ADMUNet(SMALL).state_dict(), adm)
    run = tmp_path / "run"
    assert main(["train", "--method", "textdiff", "--dataset", "synthetic", "--preset", "smoke", "--out", str(run),
                 "--no-progress", "--backbone", f"adm256:{adm}", "--text-encoder", "minilm"]) == 0
    info = json.loads((run / "run.json").read_text())["method_info"]
    assert info["backbone"] == "adm256" and info["blocks"] == [6, 8, 12, 16]
    assert info["feature_dims"] == [64 * 3, 64 * 3, 32 * 3, 32 * 3] and "reduced architecture" in info["backbone_source"]
    assert not (run / "backbone.pt").exists()                              # no substitute was pre-trained
    out = tmp_path / "test.json"
    assert main(["evaluate", "--run", str(run), "--json", str(out), "--split", "test"]) == 0
    res = json.loads(out.read_text())
    assert 0 <= res["dice_mean"] <= 1 and "ADM-256" in res["protocol"]
