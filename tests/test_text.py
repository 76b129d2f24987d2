"""The frozen text encoder: offline fallback with a notice, 10 tokens of 384 dims, padding mask, no gradient."""
from __future__ import annotations

import contextlib
import io

import pytest
import torch

from diffseg_core.textdiff import text as text_mod
from diffseg_core.textdiff.text import CLINICAL_BERT, load_text_encoder

SENTENCES = ["The nuclei are evenly distributed.", "The nuclei density in the upper right is high.", ""]


@pytest.fixture(scope="module")
def clinical(request):
    """``load_text_encoder('clinical')`` once for the module, with what it printed (offline: the fallback notice)."""
    mp = pytest.MonkeyPatch()
    mp.delenv("DIFFSEG_ALLOW_HUB", raising=False)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        enc = load_text_encoder("clinical")
    mp.undo()
    return enc, buf.getvalue()


def test_clinical_falls_back_to_minilm_with_a_notice(clinical):
    enc, printed = clinical
    if enc.name == "clinical":  # Bio_ClinicalBERT happens to be in the local cache: no fallback to check
        assert enc.dim == 768
        pytest.skip("Bio_ClinicalBERT is available locally; the fallback is not exercised")
    assert enc.name == "minilm" and enc.dim == 384
    assert "notice" in printed and "falling back to 'minilm'" in printed and CLINICAL_BERT in printed


def test_tokens_shape_and_padding_mask(clinical):
    enc, _ = clinical
    tokens, mask = enc.encode(SENTENCES)
    assert tokens.shape == (3, 10, enc.dim) and tokens.dtype == torch.float32
    assert mask.shape == (3, 10) and mask.dtype == torch.bool
    pieces = enc.tokenize(SENTENCES)
    assert all(len(p) == 10 and p[0] == "[CLS]" for p in pieces)
    # the mask is True exactly where the word piece is not padding
    for row, p in zip(mask.tolist(), pieces):
        assert row == [tok != "[PAD]" for tok in p]
    # "The nuclei are evenly distributed." is [CLS] + 6 pieces + [SEP]: 8 real tokens, 2 pads
    assert mask[0].sum() == 8
    # the long sentence is truncated at 10 and still ends with [SEP]
    assert mask[1].all() and pieces[1][-1] == "[SEP]"
    # the empty sentence is [CLS] [SEP]
    assert mask[2].sum() == 2


def test_frozen_no_grad_and_deterministic(clinical):
    enc, _ = clinical
    assert all(not p.requires_grad for p in enc.parameters())
    enc.train()  # stays in eval mode (no dropout)
    assert not enc.model.training
    with torch.enable_grad():
        a, _ = enc.encode(SENTENCES[:1])
    b, _ = enc.encode(SENTENCES[:1])
    assert not a.requires_grad
    assert torch.equal(a, b)
    # the batch does not change a sentence's tokens (padding to a fixed length)
    c, _ = enc.encode(SENTENCES[:2])
    assert torch.allclose(c[:1], a, atol=1e-5)


def test_offline_attempt_is_local_only(monkeypatch, clinical):
    enc, _ = clinical
    calls = []

    def fake_load(source, local_only):
        calls.append((source, local_only))
        if source == CLINICAL_BERT:
            raise OSError("not cached")
        return enc.tokenizer, enc.model

    monkeypatch.delenv("DIFFSEG_ALLOW_HUB", raising=False)
    monkeypatch.setattr(text_mod, "_load_hf", fake_load)
    out = load_text_encoder("clinical", max_length=6)
    assert calls[0] == (CLINICAL_BERT, True)  # never a network attempt without DIFFSEG_ALLOW_HUB=1
    assert out.name == "minilm" and out.max_length == 6
    monkeypatch.setenv("DIFFSEG_ALLOW_HUB", "1")
    calls.clear()
    load_text_encoder("clinical")
    assert calls[0] == (CLINICAL_BERT, False)


def test_bad_inputs(clinical):
    enc, _ = clinical
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode("a single string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        enc.encode(["ok", 3])
    with pytest.raises(ValueError, match="unknown text encoder"):
        load_text_encoder("gpt-17")
