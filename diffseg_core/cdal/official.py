"""The authors' cDAL checkpoints and our networks: conversion in both directions (book/decisions.md, D3, D16).

cDAL's authors released generator weights (MoNuSeg, CXR folds, Hippocampus; :mod:`diffseg_core.weights` says
where each file comes from). Their generator is DDGAN's NCSN++ class, which keeps almost every layer in **one
flat list** (``all_modules.0 ... all_modules.N``) walked by a running index in its forward pass, plus a separate
mapping network ``z_transform``. Ours (:class:`~diffseg_core.cdal.generator.ConditionalGenerator`) has the
same layers with structured names (``temb``, ``encoder``, ``down_blocks``, ``mid``, ``up_blocks``, ``head``,
...). The parameter counts are identical for every official configuration, so a checkpoint converts exactly.

How the official files are saved (facts of the released repository at commit ``c705911``):

* a generator file is a **bare state_dict** written while the network was wrapped in
  ``DistributedDataParallel``, so **every key starts with** ``module.``; the authors' sampler loads it strictly;
* the optional training resume file ``content.pth`` is a dict with ``netG_dict`` and ``netD_dict`` (both with
  the prefix) among optimiser states and the run's ``args``; no discriminator weights were released otherwise;
* the Hippocampus file holds the EMA weights under the ordinary names (there are no separate EMA keys).

Conversion rules (what this module does):

1. strip ``module.`` (all keys or none; a file mixing both is refused);
2. map **by structure**: :func:`generator_layout` lists our modules in the official list order, index by
   index (time embedding, image encoder, input conv, each level's ResNet blocks with their attention, the
   down-sampling block and the input-pyramid conv, the middle, the decoder, the head). Same-shaped tensors
   (repeated ResNet blocks) can only be told apart by that index, so the order is the whole conversion;
3. the attention projections of NCSN++ (``NIN_0..3``, query/key/value/output) store ``W`` as
   ``(in, out)`` and compute ``x @ W``; our 1x1 convolutions store ``(out, in, 1, 1)``: the tensor is
   **transposed**;
4. **CXR polarity** (decision D16): the official CXR code diffuses ``1 - 2 mask``, i.e. lung = -1. We use
   foreground = +1 everywhere. The flip is folded into the weights exactly: the two layers that read the noisy
   label (input conv, first input-pyramid conv) get negated weights and the output conv negated weight and
   bias, so ``G_ours(x) = -G_official(-x)``. The reverse conversion undoes it;
5. strict: the first missing, unexpected or mis-shaped key is named in :class:`OfficialCheckpointError`
   (with a guess of which official configuration the file does fit, when one does).

The reverse direction (:func:`generator_to_official`, :func:`save_official_generator`) writes a model
trained here in the authors' format, ``module.`` prefix included, so their sampling script can load it.

Shapes: every converter takes and returns ``{name: tensor}`` dicts; a generator takes ``x_t`` (B, Cl, H, W),
``t`` (B,), the image (B, Ci, H, W) and ``z`` (B, nz) and returns (B, Cl, H, W) in [-1, 1].
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..checkpoint import atomic_write_bytes
from .config import CDALConfig
from .discriminator import TimeConditionedDiscriminator, build_discriminator
from .generator import (CondResBlock, ConditionalGenerator, EncoderBlock, PyramidDown,
                        SelfAttention, build_generator)

__all__ = [
    "OFFICIAL_PREFIX", "OFFICIAL_CLASS", "OfficialCDAL", "OFFICIAL_CDAL", "OfficialCheckpointError", "official_spec",
    "official_cdal_config", "build_official_generator", "build_official_discriminator", "generator_layout",
    "generator_key_map", "discriminator_key_map", "strip_prefix", "unwrap_official", "read_official_file",
    "official_to_generator", "generator_to_official", "official_to_discriminator", "discriminator_to_official",
    "load_official_generator", "save_official_generator", "guess_official_config",
]

#: the prefix ``DistributedDataParallel`` adds to every key of the official files
OFFICIAL_PREFIX = "module."


class OfficialCheckpointError(ValueError):
    """An official checkpoint that does not fit: the message names the first mismatching key."""


@dataclass(frozen=True)
class OfficialCDAL:
    """One official cDAL configuration (the authors' config file, how they sampled, what they released).

    Attributes:
        name: ``monuseg``, ``cxr``, ``hippocampus`` (the sampling config that loads the released file) or
            ``hippocampus-train`` (the training script's defaults, which disagree, decision D3).
        dataset: our dataset name for the loaders and presets.
        config_source: the upstream file the hyper-parameters come from.
        generator_params, discriminator_params: parameter counts of the official classes (measured).
        timesteps: T of the official sampler. ensemble: its number of samples (30 for CXR in the code,
            5 in the paper, decision D9).
        label_sign: +1 when the official label has foreground = +1, -1 for CXR (lung = -1, D16).
        ema: the file holds EMA weights (Hippocampus).
        weights: names of the released files in :data:`diffseg_core.weights.WEIGHTS`.
        overrides: changes to our ``paper`` preset needed to rebuild this configuration.
        paper: the published result of this configuration (Dice, IoU or per-class Dice) and where.
    """

    name: str
    dataset: str
    config_source: str
    generator_params: int
    discriminator_params: int
    timesteps: int
    ensemble: int
    label_sign: int
    ema: bool
    weights: tuple[str, ...]
    overrides: tuple[tuple[str, Any], ...] = ()
    paper: str = ""


OFFICIAL_CDAL: dict[str, OfficialCDAL] = {
    "monuseg": OfficialCDAL(
        "monuseg", "monuseg", "parameters_monu.json", 41_666_753, 27_736_705, timesteps=4, ensemble=5, label_sign=1,
        ema=False, weights=("cdal-monuseg",),
        paper="cDAL Table 2: Dice 82.94, IoU 70.96 (14 test images at 512 px, checkpoint chosen on the test set)"),
    "cxr": OfficialCDAL(
        "cxr", "cxr", "parameters_lung.json", 8_843_777, 27_736_705, timesteps=2, ensemble=30, label_sign=-1,
        ema=False, weights=("cdal-cxr-fold1", "cdal-cxr-fold2", "cdal-cxr-fold0"),
        paper="cDAL Table 2: Dice 96.35 +- 0.54, IoU 93.04 +- 0.97 (3 folds; file names: fold 1 Dice 95.79, "
              "fold 2 96.38)"),
    "hippocampus": OfficialCDAL(
        "hippocampus", "hippocampus", "sampling_hippo.py", 3_682_275, 12_462_849, timesteps=2, ensemble=5,
        label_sign=1, ema=True, weights=("cdal-hippocampus",),
        paper="cDAL Table 3: Dice anterior 88.13, posterior 86.90 (4-fold cross-validation)"),
    "hippocampus-train": OfficialCDAL(
        "hippocampus-train", "hippocampus", "train_cDAL_hippo.py", 2_691_971, 12_462_849, timesteps=4, ensemble=5,
        label_sign=1, ema=True, weights=(), overrides=(("num_res_blocks", 1),),
        paper="the training script's defaults; no released file fits them"),
}


def official_spec(name: str) -> OfficialCDAL:
    """The :class:`OfficialCDAL` of ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in OFFICIAL_CDAL:
        raise ValueError(f"unknown official cDAL configuration {name!r}; choose one of {', '.join(OFFICIAL_CDAL)}")
    return OFFICIAL_CDAL[name]


def official_cdal_config(name: str) -> CDALConfig:
    """Our :class:`CDALConfig` that rebuilds the official networks of ``name``: the ``paper`` preset with the
    official sampler's T and ensemble (and the training script's depth for ``hippocampus-train``)."""
    spec = official_spec(name)
    cfg = CDALConfig.for_preset("paper", spec.dataset)
    return replace(cfg, timesteps=spec.timesteps, ensemble=spec.ensemble, val_ensemble=spec.ensemble,
                   **dict(spec.overrides))


def _channels(name: str) -> tuple[int, int]:
    """(label channels, image channels) of an official configuration: MoNuSeg RGB, the others grey;
    Hippocampus diffuses a 3-class one-hot label."""
    spec = official_spec(name)
    return (3 if spec.dataset == "hippocampus" else 1), (3 if spec.dataset == "monuseg" else 1)


def build_official_generator(name: str) -> ConditionalGenerator:
    """Our generator with the official configuration ``name`` (random weights; use the default device,
    e.g. ``with torch.device('meta'):`` to compare shapes without allocating)."""
    label_ch, image_ch = _channels(name)
    return build_generator(official_cdal_config(name), label_ch, image_ch)


def build_official_discriminator(name: str) -> TimeConditionedDiscriminator:
    """Our discriminator with the official configuration ``name`` (``Discriminator_large`` for MoNuSeg/CXR,
    ``Discriminator_small`` with ngf 64 for Hippocampus)."""
    label_ch, _ = _channels(name)
    return build_discriminator(official_cdal_config(name), label_ch)


# ------------------------------------------------------------------------------------------------
# the layout: our modules in the order of the official flat list
# ------------------------------------------------------------------------------------------------
#: our suffix -> official suffix (and whether the tensor is transposed) for each kind of layer
_SUFFIXES: dict[str, dict[str, str]] = {
    "encoder_block": {"body.0": "0.in_layers.0", "body.2": "0.in_layers.2", "body.3": "0.out_layers.0",
                      "body.6": "0.out_layers.3"},
    "resblock": {"norm0.style": "GroupNorm_0.style", "conv0": "Conv_0", "temb": "Dense_0",
                 "norm1.style": "GroupNorm_1.style", "conv1": "Conv_1", "skip": "Conv_2"},
    "attention": {"norm": "GroupNorm_0", "q": "NIN_0", "k": "NIN_1", "v": "NIN_2", "out": "NIN_3"},
    "pyramid": {"conv": "Conv2d_0"},
}

#: the official class of each kind (``all_modules_roles`` of the official generator)
OFFICIAL_CLASS = {"linear": "Linear", "conv": "Conv2d", "encoder_block": "ModuleSequential",
                  "resblock": "ResnetBlockBigGANpp_Adagn", "attention": "AttnBlockpp", "pyramid": "Downsample",
                  "groupnorm": "GroupNorm"}


def generator_layout(G: ConditionalGenerator) -> list[tuple[str, str, nn.Module]]:
    """Our modules in the order of the official ``all_modules`` list: ``(our path, kind, module)`` per index.

    Index order of NCSN++ with cDAL's image encoder: time embedding (2 Linear), image encoder (conv, then one
    entry per residual block), the input conv; per level: each ResNet block followed by its attention where the
    level has one, then (all levels but the last) the down-sampling ResNet block and the input-pyramid conv;
    the middle (ResNet, attention, ResNet); per decoder level (coarsest first): its ``num_res_blocks + 1``
    blocks, its attention, its up-sampling block (all levels but the finest); the head GroupNorm and conv.
    ``kind`` is one of ``linear``, ``conv``, ``groupnorm``, ``encoder_block``, ``resblock``, ``attention``,
    ``pyramid``.
    """
    if not G.progressive_input:
        raise ValueError("generator_layout: the official generator always has the input pyramid "
                         "(progressive_input='residual'); this one does not")
    out: list[tuple[str, str, nn.Module]] = [("temb.0", "linear", G.temb[0]), ("temb.2", "linear", G.temb[2]),
                                             ("encoder.conv", "conv", G.encoder.conv)]
    out += [(f"encoder.blocks.{k}", "encoder_block", b) for k, b in enumerate(G.encoder.blocks)]
    out.append(("conv_in", "conv", G.conv_in))
    last = len(G.down_blocks) - 1
    for i, blocks in enumerate(G.down_blocks):
        for j, (res, attn) in enumerate(blocks):
            out.append((f"down_blocks.{i}.{j}.0", "resblock", res))
            if isinstance(attn, SelfAttention):
                out.append((f"down_blocks.{i}.{j}.1", "attention", attn))
        if i != last:
            out.append((f"downsamplers.{i}", "resblock", G.downsamplers[i]))
            out.append((f"pyramid.{i}", "pyramid", G.pyramid[i]))
    out += [("mid.0", "resblock", G.mid[0]), ("mid.1", "attention", G.mid[1]), ("mid.2", "resblock", G.mid[2])]
    for j, blocks in enumerate(G.up_blocks):
        out += [(f"up_blocks.{j}.{k}", "resblock", b) for k, b in enumerate(blocks)]
        if isinstance(G.up_attn[j], SelfAttention):
            out.append((f"up_attn.{j}", "attention", G.up_attn[j]))
        if j < len(G.upsamplers):
            out.append((f"upsamplers.{j}", "resblock", G.upsamplers[j]))
    out += [("head.0", "groupnorm", G.head[0]), ("head.2", "conv", G.head[2])]
    expected = {"resblock": CondResBlock, "attention": SelfAttention, "encoder_block": EncoderBlock,
                "pyramid": PyramidDown, "linear": nn.Linear, "conv": nn.Conv2d, "groupnorm": nn.GroupNorm}
    for path, kind, module in out:  # a guard against a generator whose structure changed under us
        assert isinstance(module, expected[kind]), f"generator_layout: {path} is {type(module).__name__}, not {kind}"
    return out


def _official_suffix(kind: str, suffix: str) -> tuple[str, bool]:
    """Official suffix of one of our parameter suffixes within a layer of ``kind``; True = transpose (NIN)."""
    if kind in ("linear", "conv", "groupnorm"):
        return suffix, False
    module, _, leaf = suffix.rpartition(".")
    official = _SUFFIXES[kind].get(module)
    if official is None:
        raise KeyError(f"no official name for {suffix!r} in a {kind}")
    if kind == "attention" and module != "norm":
        return f"{official}.{ {'weight': 'W', 'bias': 'b'}[leaf] }", leaf == "weight"
    return f"{official}.{leaf}", False


def generator_key_map(G: ConditionalGenerator) -> list[tuple[str, str, bool]]:
    """``(official key, our key, transposed)`` for every parameter, in the official ``state_dict`` order.

    Official keys are without the ``module.`` prefix. ``transposed`` marks the attention projections
    (official ``W`` is ``(in, out)``, our 1x1 conv weight ``(out, in, 1, 1)``).
    """
    rows: list[tuple[str, str, bool]] = []
    for index, (path, kind, module) in enumerate(generator_layout(G)):
        for suffix, _ in module.named_parameters():
            official, transposed = _official_suffix(kind, suffix)
            rows.append((f"all_modules.{index}.{official}", f"{path}.{suffix}", transposed))
    for suffix, _ in G.mapping.named_parameters():          # net.1, net.3, ...: the same Sequential indices
        rows.append((f"z_transform.{suffix.removeprefix('net.')}", f"mapping.{suffix}", False))
    return rows


def discriminator_key_map(D: TimeConditionedDiscriminator) -> list[tuple[str, str, bool]]:
    """``(official key, our key, False)`` for every parameter of the discriminator, in the official order.

    Official names: ``t_embed.main.{0,2}``, ``start_conv``, ``conv{i}.conv1.0`` / ``conv2.0`` / ``dense_t1`` /
    ``skip.0`` for block i = 1.., ``final_conv``, ``end_linear``.
    """
    block = {"conv1": "conv1.0", "conv2": "conv2.0", "dense_t": "dense_t1", "skip": "skip.0"}
    rows: list[tuple[str, str, bool]] = []
    for name, _ in D.named_parameters():
        head, _, rest = name.partition(".")
        if head == "t_embed":
            official = f"t_embed.main.{rest}"
        elif head == "blocks":
            i, _, sub = rest.partition(".")
            module, _, leaf = sub.rpartition(".")
            official = f"conv{int(i) + 1}.{block[module]}.{leaf}"
        else:
            official = name
        rows.append((official, name, False))
    return rows


# ------------------------------------------------------------------------------------------------
# reading and checking official files
# ------------------------------------------------------------------------------------------------
def strip_prefix(state: Mapping[str, Any], prefix: str = OFFICIAL_PREFIX) -> dict[str, Any]:
    """Remove ``prefix`` from every key (the DDP ``module.``); a dict where only some keys carry it is an error."""
    keys = list(state)
    have = [k.startswith(prefix) for k in keys]
    if not any(have):
        return dict(state)
    if not all(have):
        first = keys[have.index(False)]
        raise OfficialCheckpointError(f"key {first!r} lacks the {prefix!r} prefix that other keys of the file "
                                      f"carry; the file mixes two naming schemes")
    return {k[len(prefix):]: v for k, v in state.items()}


def unwrap_official(obj: Any, net: str = "G") -> dict[str, torch.Tensor]:
    """The state_dict inside what ``torch.load`` returned: a bare dict of tensors (a released generator file),
    or a training resume file (``content.pth``: ``netG_dict`` / ``netD_dict``; ``net`` says which)."""
    if isinstance(obj, Mapping) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return dict(obj)
    wanted = {"G": "netG_dict", "D": "netD_dict"}[net]
    if isinstance(obj, Mapping) and wanted in obj:
        return dict(obj[wanted])
    keys = list(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
    raise OfficialCheckpointError(f"not an official cDAL {'generator' if net == 'G' else 'discriminator'} file: "
                                  f"expected a bare state_dict or a resume dict with {wanted!r}, got {keys}")


def read_official_file(path: str | Path, net: str = "G", allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load an official file on the CPU and return its (still prefixed) state_dict.

    Loads with ``weights_only=True`` (tensors only, nothing executed). A resume file (``content.pth``) also
    holds the run's ``argparse`` arguments, which need ``allow_pickle=True``: use it only for files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise OfficialCheckpointError(f"{path} is empty (0 bytes): the git repository holds 0-byte placeholders; "
                                      "the real files are on the Hugging Face hub (see diffseg_core.weights)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as exc:
        hint = ("" if allow_pickle else " If it is a training resume file (content.pth) from a source you trust, "
                "pass allow_pickle=True.")
        raise OfficialCheckpointError(f"{path} could not be read as a PyTorch checkpoint ({str(exc).splitlines()[0]})."
                                      f"{hint}") from exc
    return unwrap_official(obj, net)


def _check(state: Mapping[str, torch.Tensor], rows: list[tuple[str, str, bool]], shapes: Mapping[str, torch.Size],
           what: str) -> None:
    """Raise :class:`OfficialCheckpointError` naming the first missing, unexpected or mis-shaped key."""
    official_keys = [o for o, _, _ in rows]
    known = set(official_keys)
    missing = [k for k in official_keys if k not in state]
    if missing:
        raise OfficialCheckpointError(f"{what}: key {missing[0]!r} is missing ({len(missing)} missing in all)")
    extra = [k for k in state if k not in known]
    if extra:
        raise OfficialCheckpointError(f"{what}: unexpected key {extra[0]!r} ({len(extra)} unexpected in all)")
    for official, ours, transposed in rows:
        want = tuple(shapes[ours])
        if transposed:                      # official (in, out) for our (out, in, 1, 1)
            want = (want[1], want[0])
        have = tuple(state[official].shape)
        if have != want:
            raise OfficialCheckpointError(f"{what}: key {official!r} has shape {have}, the official configuration "
                                          f"has {want}")


def _polarity_keys(G: ConditionalGenerator) -> list[str]:
    """Our parameters that change sign when the label polarity flips (D16): the two layers that read the noisy
    label (weights only) and the output conv (weight and bias)."""
    keys = ["conv_in.weight", "head.2.weight", "head.2.bias"]
    if G.progressive_input and len(G.pyramid):
        keys.append("pyramid.0.conv.weight")
    return keys


def guess_official_config(state: Mapping[str, torch.Tensor], net: str = "G") -> str | None:
    """The official configuration whose names and shapes ``state`` (prefix stripped) matches, if any."""
    have = {k: tuple(v.shape) for k, v in state.items()}
    for name in OFFICIAL_CDAL:
        with torch.device("meta"):
            model = build_official_generator(name) if net == "G" else build_official_discriminator(name)
        rows = generator_key_map(model) if net == "G" else discriminator_key_map(model)
        shapes = dict(model.state_dict())
        want = {}
        for official, ours, transposed in rows:
            s = tuple(shapes[ours].shape)
            want[official] = (s[1], s[0]) if transposed else s
        if want == have:
            return name
    return None


def _fail_with_guess(exc: OfficialCheckpointError, state: Mapping[str, torch.Tensor], name: str, net: str) -> None:
    guess = guess_official_config(state, net)
    hint = f" The file fits the official {guess!r} configuration instead." if guess and guess != name else ""
    raise OfficialCheckpointError(f"{exc}{hint}") from None


def official_to_generator(state: Mapping[str, torch.Tensor], name: str, G: ConditionalGenerator | None = None,
                          flip_polarity: bool | None = None) -> dict[str, torch.Tensor]:
    """Convert an official generator state_dict (with or without ``module.``) to our parameter names.

    Args:
        state: the official tensors.
        name: the official configuration (:data:`OFFICIAL_CDAL`).
        G: the generator to convert for (default: :func:`build_official_generator` on the meta device).
        flip_polarity: fold the CXR label sign into the weights (default: when the configuration's
            ``label_sign`` is -1).
    Returns:
        our ``state_dict`` (new tensors), ready for ``G.load_state_dict(..., strict=True)``.
    Raises:
        OfficialCheckpointError: naming the first missing, unexpected or mis-shaped key.
    """
    spec = official_spec(name)
    state = strip_prefix(state)
    if G is None:
        with torch.device("meta"):
            G = build_official_generator(name)
    rows = generator_key_map(G)
    shapes = {k: v.shape for k, v in G.state_dict().items()}
    try:
        _check(state, rows, shapes, f"official cDAL {name} generator")
    except OfficialCheckpointError as exc:
        _fail_with_guess(exc, state, name, "G")
    out: dict[str, torch.Tensor] = {}
    for official, ours, transposed in rows:
        t = state[official].detach().float()            # the authors save float32; anything else is cast
        out[ours] = (t.t().reshape(shapes[ours]) if transposed else t).clone()
    if flip_polarity if flip_polarity is not None else spec.label_sign < 0:
        for k in _polarity_keys(G):
            out[k] = -out[k]
    return out


def generator_to_official(G_or_state: ConditionalGenerator | Mapping[str, torch.Tensor], name: str,
                          prefix: str = OFFICIAL_PREFIX, flip_polarity: bool | None = None) -> "OrderedDict[str, torch.Tensor]":
    """Our generator (or its state_dict) in the authors' format: official names in their order, with ``prefix``
    (``module.`` by default, what their sampler expects), attention projections transposed back and, for CXR,
    the label polarity flipped back (lung = -1)."""
    spec = official_spec(name)
    with torch.device("meta"):
        ref = build_official_generator(name)
    state = G_or_state.state_dict() if isinstance(G_or_state, nn.Module) else dict(G_or_state)
    rows = generator_key_map(ref)
    ref_shapes = {k: v.shape for k, v in ref.state_dict().items()}
    ours_known = {ours for _, ours, _ in rows}
    missing = [ours for _, ours, _ in rows if ours not in state]
    if missing:
        raise OfficialCheckpointError(f"generator_to_official({name}): our key {missing[0]!r} is missing")
    extra = [k for k in state if k not in ours_known]
    if extra:
        raise OfficialCheckpointError(f"generator_to_official({name}): key {extra[0]!r} is not part of the official "
                                      f"{name} generator")
    bad = [k for k in ours_known if tuple(state[k].shape) != tuple(ref_shapes[k])]
    if bad:
        raise OfficialCheckpointError(f"generator_to_official({name}): {bad[0]!r} has shape {tuple(state[bad[0]].shape)}, "
                                      f"the official configuration needs {tuple(ref_shapes[bad[0]])}")
    flip = set(_polarity_keys(ref)) if (flip_polarity if flip_polarity is not None else spec.label_sign < 0) else set()
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for official, ours, transposed in rows:
        t = state[ours].detach().cpu()
        t = -t if ours in flip else t
        out[prefix + official] = (t.reshape(t.shape[0], t.shape[1]).t() if transposed else t).contiguous().clone()
    return out


def official_to_discriminator(state: Mapping[str, torch.Tensor], name: str, D: TimeConditionedDiscriminator | None = None,
                              flip_polarity: bool | None = None) -> dict[str, torch.Tensor]:
    """Convert an official discriminator state_dict (``content.pth['netD_dict']``) to our names.

    For CXR the start conv's weight changes sign, so ``D_ours(x) = D_official(-x)`` (D16)."""
    spec = official_spec(name)
    state = strip_prefix(state)
    if D is None:
        with torch.device("meta"):
            D = build_official_discriminator(name)
    rows = discriminator_key_map(D)
    shapes = {k: v.shape for k, v in D.state_dict().items()}
    try:
        _check(state, rows, shapes, f"official cDAL {name} discriminator")
    except OfficialCheckpointError as exc:
        _fail_with_guess(exc, state, name, "D")
    out = {ours: state[official].detach().float().clone() for official, ours, _ in rows}
    if flip_polarity if flip_polarity is not None else spec.label_sign < 0:
        out["start_conv.weight"] = -out["start_conv.weight"]
    return out


def discriminator_to_official(D_or_state: TimeConditionedDiscriminator | Mapping[str, torch.Tensor], name: str,
                              prefix: str = OFFICIAL_PREFIX, flip_polarity: bool | None = None) -> "OrderedDict[str, torch.Tensor]":
    """Our discriminator in the authors' format (official names, order and ``prefix``)."""
    spec = official_spec(name)
    state = D_or_state.state_dict() if isinstance(D_or_state, nn.Module) else dict(D_or_state)
    with torch.device("meta"):
        ref = build_official_discriminator(name)
    rows = discriminator_key_map(ref)
    known = {ours for _, ours, _ in rows}
    problems = [k for k in known if k not in state] + [k for k in state if k not in known]
    if problems:
        raise OfficialCheckpointError(f"discriminator_to_official({name}): key {problems[0]!r} does not match the "
                                      f"official {name} discriminator")
    flip = spec.label_sign < 0 if flip_polarity is None else flip_polarity
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for official, ours, _ in rows:
        t = state[ours].detach().cpu()
        out[prefix + official] = (-t if flip and ours == "start_conv.weight" else t).contiguous().clone()
    return out


def load_official_generator(source: str | Path | Mapping[str, torch.Tensor], name: str,
                            device: torch.device | None = None, flip_polarity: bool | None = None) -> ConditionalGenerator:
    """Our generator holding an official checkpoint (a file path or a loaded state_dict), strict, in eval mode.

    The network is built on the meta device and the converted tensors are assigned to it (no random
    initialisation to throw away); ``flip_polarity`` as in :func:`official_to_generator`."""
    state = read_official_file(source) if isinstance(source, (str, Path)) else unwrap_official(source)
    with torch.device("meta"):
        G = build_official_generator(name)
    G.load_state_dict(official_to_generator(state, name, G, flip_polarity), strict=True, assign=True)
    G.eval()
    return G.to(device) if device is not None else G


def save_official_generator(G: ConditionalGenerator | Mapping[str, torch.Tensor], path: str | Path, name: str,
                            prefix: str = OFFICIAL_PREFIX) -> Path:
    """Write our generator as the authors' sampler expects it (a bare state_dict with ``module.`` keys), atomically."""
    state = generator_to_official(G, name, prefix)
    return atomic_write_bytes(path, lambda fh: torch.save(state, fh))
