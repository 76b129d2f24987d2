"""Text-conditioned cDAL (chapter 13): G's cross-attention to frozen text tokens, the ``--text`` option.

Plain cDAL must be untouched (same parameter names and counts); the text must reach the output; the option
must flow from the CLI to the config and be refused where it cannot apply.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from diffseg_core.cdal import CDALConfig, CDALMethod, build_generator, d_step, g_step, sample_cdal
from diffseg_core.cdal.generator import ConditionalGenerator
from diffseg_core.cli import _model_overrides, _parser, main
from diffseg_core.data import DataError, DatasetInfo
from diffseg_core.methods import get_config
from diffseg_core.schedule import vp_schedule
from diffseg_core.textdiff.cross_attention import CrossModalBlock

SMOKE = CDALConfig.for_preset("smoke", "monuseg")
TEXT_DIM, L = 12, 5


def _gen(text_dim: int = 0, seed: int = 0) -> ConditionalGenerator:
    torch.manual_seed(seed)
    return build_generator(dataclasses.replace(SMOKE, use_text=text_dim > 0), 1, 3, text_dim=text_dim)


def _inputs(b: int = 2, size: int = 16):
    g = torch.Generator().manual_seed(3)
    return (torch.randn(b, 1, size, size, generator=g), torch.zeros(b, dtype=torch.long),
            torch.randn(b, 3, size, size, generator=g), torch.randn(b, SMOKE.nz, generator=g))


def test_text_off_keeps_plain_cdal_parameters():
    """No text: exactly the parameter names and count of a generator built without the option."""
    plain = ConditionalGenerator(label_channels=1, image_channels=3, nf=8, ch_mult=(1, 2), num_res_blocks=1,
                                 attn_resolutions=(), image_size=32, nz=8, z_emb_dim=16, n_mlp=1, enc_blocks=1,
                                 resample="avg")
    off = _gen(0)
    assert [n for n, _ in off.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert off.num_parameters() == plain.num_parameters() and off.text_attn is None
    on = _gen(TEXT_DIM)
    extra = sum(p.numel() for p in on.text_attn.parameters())
    assert extra > 0 and on.num_parameters() == off.num_parameters() + extra
    assert all(n.startswith("text_attn.") for n, _ in on.named_parameters() if n not in dict(off.named_parameters()))
    # the blocks are Part III's, imported (not a copy), at the lowest resolution's width
    assert all(isinstance(b, CrossModalBlock) for b in on.text_attn)
    assert on.text_attn[0].norm1.normalized_shape == (SMOKE.nf * SMOKE.ch_mult[-1],)


def test_text_generator_shapes_and_attention_maps():
    G = _gen(TEXT_DIM)
    x, t, img, z = _inputs()
    text = torch.randn(2, L, TEXT_DIM)
    mask = torch.tensor([[True] * L, [True, True, True, False, False]])
    out = G(x, t, img, z, text=text, text_mask=mask)
    assert out.shape == x.shape and out.abs().max() <= 1
    maps = G.text_token_maps()
    low = 16 // G.divisor
    assert [tuple(m.shape) for m in maps] == [(2, L, low, low)] * 2
    for m in maps:   # each position's weights sum to one over the tokens; masked padding gets none
        assert torch.allclose(m.sum(1), torch.ones(2, low, low), atol=1e-5)
        assert torch.all(m[1, 3:] == 0)


def test_text_changes_the_output_and_only_through_the_tokens():
    G = _gen(TEXT_DIM)
    x, t, img, z = _inputs()
    torch.manual_seed(5)
    a, b = torch.randn(2, L, TEXT_DIM), torch.randn(2, L, TEXT_DIM)
    with torch.no_grad():
        out_a, out_a2, out_b = G(x, t, img, z, text=a), G(x, t, img, z, text=a), G(x, t, img, z, text=b)
    assert torch.equal(out_a, out_a2)                   # deterministic for the same tokens
    assert (out_a - out_b).abs().max() > 1e-6           # other sentences, other prediction
    # gradients reach the text blocks from the loss
    G(x, t, img, z, text=a).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.text_attn[0].attn1.to_k.parameters())


def test_text_is_required_exactly_when_the_generator_has_it():
    x, t, img, z = _inputs()
    with pytest.raises(ValueError, match="text tokens are needed exactly when"):
        _gen(TEXT_DIM)(x, t, img, z)
    with pytest.raises(ValueError, match="text tokens are needed exactly when"):
        _gen(0)(x, t, img, z, text=torch.randn(2, L, TEXT_DIM))
    with pytest.raises(ValueError, match=r"text must be \(B, L, 12\)"):
        _gen(TEXT_DIM)(x, t, img, z, text=torch.randn(2, L, TEXT_DIM + 1))
    with pytest.raises(ValueError, match="text_token_maps"):
        _gen(0).text_token_maps()


def test_algorithm_1_and_2_pass_the_tokens():
    """One D and one G step move their networks; the sampler repeats the tokens for every member."""
    from diffseg_core.cdal import build_discriminator

    cfg = dataclasses.replace(SMOKE, use_text=True)
    G = _gen(TEXT_DIM)
    torch.manual_seed(0)
    D = build_discriminator(cfg, 1)
    sched = vp_schedule(cfg.timesteps, cfg.beta_min, cfg.beta_max)
    x0 = torch.randint(0, 2, (2, 1, 16, 16)).float() * 2 - 1
    img, text = torch.randn(2, 3, 16, 16), torch.randn(2, L, TEXT_DIM)
    before = G.text_attn[1].ff[1].weight.clone()
    d_step(G, D, sched, x0, img, cfg, 0, torch.optim.Adam(D.parameters(), 1e-3), text)
    out = g_step(G, D, sched, x0, img, cfg, torch.optim.Adam(G.parameters(), 1e-3), text)
    assert torch.isfinite(torch.tensor(out["mse"])) and not torch.equal(before, G.text_attn[1].ff[1].weight)
    r = sample_cdal(G, sched, img, n_samples=3, text=text, generator=torch.Generator().manual_seed(0))
    assert r["samples"].shape == (3, 2, 1, 16, 16) and G.text_token_maps()[0].shape[0] == 3 * 2


def test_cli_flag_maps_to_the_config_field_and_is_off_by_default():
    assert CDALConfig.for_preset("smoke", "monuseg").use_text is False
    assert all(not CDALConfig.for_preset(p, "monuseg").use_text for p in ("smoke", "cpu", "gpu", "paper"))
    opt = next(o for o in CDALMethod.cli_options if o.flag == "--text")
    assert opt.field == "use_text" and opt.const is True
    assert opt.field in {f.name for f in dataclasses.fields(CDALConfig)}
    args = _parser().parse_args(["train", "--method", "cdal", "--dataset", "synthetic", "--out", "x", "--text"])
    assert _model_overrides(args) == {"use_text": True}
    assert get_config("cdal", "synthetic", "smoke", use_text=True).model["use_text"] is True


def test_text_option_refused_for_another_method_and_for_data_without_text(tmp_path, capsys):
    rc = main(["train", "--method", "unet", "--dataset", "synthetic", "--preset", "smoke", "--out", str(tmp_path / "r"),
               "--text", "--no-progress"])
    assert rc == 2 and "--text is a cdal option" in capsys.readouterr().err
    cfg = get_config("cdal", "hippocampus", "smoke", use_text=True)
    with pytest.raises(DataError, match="cdal --text needs a 2-D dataset with one sentence per image"):
        CDALMethod(cfg, DatasetInfo("hippocampus", 1, 3, ("bg", "a", "p"), False), torch.device("cpu"))


@pytest.fixture(scope="module")
def text_method():
    """A smoke text-cDAL with the offline MiniLM encoder (loaded once for the module)."""
    cfg = get_config("cdal", "synthetic", "smoke", use_text=True, text_encoder="minilm")
    return CDALMethod(cfg, DatasetInfo("synthetic", 3, 2, ("background", "nucleus"), True), torch.device("cpu"))


def test_method_trains_and_predicts_with_sentences(text_method):
    m = text_method
    assert m.text_encoder.name == "minilm" and m.nets["G"].text_dim == m.text_encoder.dim
    torch.manual_seed(1)
    batch = {"image": torch.rand(2, 3, 32, 32), "label": torch.randint(0, 2, (2, 32, 32)),
             "text": ["The nuclei are dense.", "Few nuclei."], "id": ["a", "b"]}
    logs = m.train_step(batch, 0)
    assert "mse" in logs and set(m._tokens) == set(batch["text"])
    probs = m.predict(batch["image"], batch["text"])
    assert probs.shape == (2, 2, 32, 32) and torch.allclose(probs.sum(1), torch.ones(2, 32, 32), atol=1e-5)
    swapped = m.predict(batch["image"], batch["text"][::-1])
    assert (probs - swapped).abs().max() > 0               # the sentence reaches the prediction
    with pytest.raises(ValueError, match="one sentence per image is needed"):
        m.predict(batch["image"])
    info = m.run_info()
    assert info["text_encoder_loaded"] == "minilm" and info["text_parameters"] > 0
