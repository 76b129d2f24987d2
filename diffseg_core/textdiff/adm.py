"""ADM-256: the diffusion U-Net TextDiff reads its features from, with the parameter names of the released file.

TextDiff (Feng, MICCAI 2024, Sec. 2.1) uses OpenAI's ImageNet 256x256 **unconditional** ADM (Dhariwal & Nichol
2021, ``256x256_diffusion_uncond.pt``, 552,814,086 parameters) as a frozen feature extractor: the image is
noised to ``t`` in {50, 150, 250} of a 1000-step linear schedule (TextDiff Eq. 1-2) and the outputs of decoder
blocks **{6, 8, 12, 16}** (MoNuSeg; **{4, 6, 8, 12}** for QaTa-COV19) are read and concatenated over the three
steps. :class:`ADMUNet` is that network written for this book: same layers, same parameter names and order as
the released state_dict, so the file loads **strictly** (:func:`load_adm`). The decoder blocks are listed by
:meth:`ADMUNet.decoder_blocks` for :class:`~diffseg_core.textdiff.features.DiffusionFeatureExtractor`.

Why not a library network: MONAI's ``DiffusionModelUNet`` (the book's substitute backbone) adds the time
embedding to the features as a bias (``time_emb_proj``: one vector of C values), whereas ADM's ResNet blocks use
**scale-shift normalisation** (``emb_layers`` produces 2C values, ``GroupNorm(h) * (1 + scale) + shift``), and
its attention uses separate q/k/v projections instead of ADM's fused ``qkv`` 1-D convolution with per-head
[q, k, v] ordering. The parameter lists differ, so a mapping would not be exact. Written out here instead:

* time: sinusoidal embedding of ``t`` (``model_channels`` values, **cosine half first**, frequencies
  ``10000^(-i/half)``), Linear -> SiLU -> Linear to ``4 * model_channels``;
* ``input_blocks``: a 3x3 conv, then per level ``num_res_blocks`` ResNet blocks (+ attention where the
  down-sampling rate ``image_size / resolution`` is in the attention list) and, between levels, a ResNet block
  that down-samples (2x2 average pooling inside the block, ``resblock_updown``);
* ``middle_block``: ResNet, attention, ResNet;
* ``output_blocks``: per level (coarsest first) ``num_res_blocks + 1`` blocks, each a ResNet block on
  [h, skip] (+ attention), the last one of every level but the finest followed by an up-sampling ResNet block
  (nearest-neighbour x2 inside the block). **A block that ends in an up-sampling block outputs at the higher
  resolution** (blocks 2, 5, 8, 11, 14 of ADM-256);
* ``out``: GroupNorm -> SiLU -> 3x3 conv to ``out_channels`` (6: the noise and the variance interpolation,
  ``learn_sigma``). TextDiff never uses this output.

ResNet block (``in_layers``, ``emb_layers``, ``out_layers``, ``skip_connection``)::

    h = conv3x3(SiLU(GN(x)))                     # resampling of h and x between SiLU and conv when up/down
    scale, shift = Linear(SiLU(emb)).chunk(2)
    h = conv3x3(dropout(SiLU(GN(h) * (1 + scale) + shift)))
    return skip(x) + h                           # skip: identity, or a 1x1 conv when the width changes

Attention block: ``x + proj_out(attention(qkv(GN(x))))`` over all positions, ``channels / 64`` heads,
softmax(q k^T / sqrt(d_head)) v. GroupNorms have 32 groups and are computed in float32. Dropout (0.1 in
TextDiff's config) is inactive: the backbone is always frozen in eval mode.

Output blocks of ADM-256 for a 256 x 256 input (index: channels @ resolution): 0-1 1024@8, 2-4 1024@16,
5 1024@32, 6-7 512@32, 8-10 512@64, 11 512@128, 12-13 256@128, 14-17 256@256. TextDiff's MoNuSeg blocks
{6, 8, 12, 16} are therefore 512@32, 512@64, 256@128, 256@256 (x 3 steps: 1536, 1536, 768, 768 channels).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ADMConfig", "ADM256", "ADMBlock", "ADMCheckpointError", "adm_timestep_embedding", "GroupNorm32", "ADMResBlock",
           "ADMAttention", "EmbedSequential", "ADMUNet", "adm_config_from_state", "read_adm_file",
           "check_adm_state", "load_adm", "TEXTDIFF_ADM_BLOCKS"]

#: TextDiff's decoder blocks of ADM-256 per dataset (``experiments/*/ddpm.json`` of the official code)
TEXTDIFF_ADM_BLOCKS: dict[str, tuple[int, ...]] = {"monuseg": (6, 8, 12, 16), "qata": (4, 6, 8, 12)}


class ADMBlock(NamedTuple):
    """One hookable output block (the fields of :class:`~diffseg_core.textdiff.features.DecoderBlock`)."""

    index: int
    level: int
    fraction: float
    channels: int
    module: nn.Module


class ADMCheckpointError(ValueError):
    """An ADM state_dict that does not fit the network: the message names the first mismatching key."""


@dataclass(frozen=True)
class ADMConfig:
    """The architecture of an ADM U-Net (guided-diffusion's flags; ADM-256 unconditional by default).

    ``attention_resolutions`` are feature resolutions at an ``image_size`` input (32, 16, 8 -> down-sampling
    rates 8, 16, 32); ``num_head_channels`` is the width of one attention head. Only ADM-256's block types are
    built: scale-shift normalisation and ResNet up/down-sampling (``use_scale_shift_norm``, ``resblock_updown``).
    """

    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 256
    out_channels: int = 6
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_head_channels: int = 64
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        if not (self.use_scale_shift_norm and self.resblock_updown):
            raise ValueError("ADMConfig: only ADM-256's block types are implemented (use_scale_shift_norm=True, "
                             "resblock_updown=True)")
        if self.model_channels % 32:
            raise ValueError(f"ADMConfig: model_channels must be a multiple of 32 (GroupNorm with 32 groups), "
                             f"got {self.model_channels}")

    @property
    def attention_rates(self) -> set[int]:
        """Down-sampling rates with attention (``image_size // resolution``)."""
        return {self.image_size // r for r in self.attention_resolutions}


#: the released ``256x256_diffusion_uncond.pt`` (guided-diffusion's README flags)
ADM256 = ADMConfig()


def adm_timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """ADM's sinusoidal embedding: ``t`` (B,) -> (B, dim) = [cos(t f_i), sin(t f_i)], f_i = P^(-i/half).

    Note the order (cosine first) and the denominator (``half``, not ``half - 1``): both differ from the
    NCSN++ embedding cDAL uses (:func:`diffseg_core.cdal.layers.timestep_embedding`).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, computed in float32 and cast back (ADM's ``normalization``)."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class ADMResBlock(nn.Module):
    """ADM ResNet block with scale-shift normalisation; ``up``/``down`` re-sample inside the block.

    ``x`` (B, C, H, W), ``emb`` (B, E) -> (B, C_out, H', W') with H' = 2H (up), H/2 (down) or H.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 up: bool = False, down: bool = False) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.up, self.down = up, down
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers[1](self.in_layers[0](x))
        h, x = self._resample(h), self._resample(x)
        h = self.in_layers[2](h)
        scale, shift = self.emb_layers(emb).type(h.dtype)[:, :, None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        return self.skip_connection(x) + h


class ADMAttention(nn.Module):
    """ADM self-attention over all positions: (B, C, H, W) -> (B, C, H, W), ``x + proj_out(attn)``.

    ``qkv`` is a 1x1 Conv1d to 3C channels laid out per head as [q, k, v] (``C / num_head_channels`` heads).
    """

    def __init__(self, channels: int, num_head_channels: int = 64) -> None:
        super().__init__()
        if channels % num_head_channels:
            raise ValueError(f"ADMAttention: {channels} channels do not split into heads of {num_head_channels}")
        self.heads = channels // num_head_channels
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)                                            # (B, C, L)
        qkv = self.qkv(self.norm(flat))                                       # (B, 3C, L)
        d = c // self.heads
        q, k, v = qkv.reshape(b, self.heads, 3, d, -1).transpose(-1, -2).unbind(dim=2)   # (B, heads, L, d) each
        a = F.scaled_dot_product_attention(q, k, v)                           # softmax(q k^T / sqrt(d)) v
        h = a.transpose(-1, -2).reshape(b, c, -1)
        return (flat + self.proj_out(h)).reshape(b, c, *spatial)


class EmbedSequential(nn.ModuleList):
    """A sequence whose ResNet blocks also receive the time embedding (ADM's ``TimestepEmbedSequential``)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ADMResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """OpenAI's ADM U-Net (guided-diffusion ``UNetModel``), unconditional, parameter names as released.

    ``forward(x (B, C_in, H, W) in [-1, 1], t (B,) int in [0, 1000))`` -> (B, out_channels, H, W); H and W
    divisible by ``2 ** (levels - 1)``. :meth:`decoder_blocks` lists the hookable ``output_blocks``.
    """

    #: an RGB ImageNet model: the feature extractor repeats a grey image to three channels for it
    grey_as_rgb = True

    def __init__(self, config: ADMConfig = ADM256) -> None:
        super().__init__()
        self.config = config
        mc, levels = config.model_channels, len(config.channel_mult)
        emb = 4 * mc
        self.in_channels = config.in_channels
        self.block_out_channels = tuple(mc * m for m in config.channel_mult)   # widths per level (as MONAI names them)
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))

        def res(cin: int, cout: int | None = None, **kw: bool) -> ADMResBlock:
            return ADMResBlock(cin, emb, cout, config.dropout, **kw)

        def attn(ch: int) -> ADMAttention:
            return ADMAttention(ch, config.num_head_channels)

        rates = config.attention_rates
        self.input_blocks = nn.ModuleList([EmbedSequential([nn.Conv2d(config.in_channels, mc, 3, padding=1)])])
        skip_ch, ch, ds = [mc], mc, 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in rates:
                    layers.append(attn(ch))
                self.input_blocks.append(EmbedSequential(layers))
                skip_ch.append(ch)
            if level != levels - 1:
                self.input_blocks.append(EmbedSequential([res(ch, ch, down=True)]))
                skip_ch.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential([res(ch), attn(ch), res(ch)])
        self.output_blocks = nn.ModuleList()
        self._out_info: list[tuple[int, int, list[str]]] = []                # (channels, rate, layer names)
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + skip_ch.pop(), mc * mult)]
                names = ["ResBlock"]
                ch = mc * mult
                if ds in rates:
                    layers.append(attn(ch))
                    names.append("AttentionBlock")
                if level and i == config.num_res_blocks:
                    layers.append(res(ch, ch, up=True))
                    names.append("ResBlock(up)")
                    ds //= 2
                self.output_blocks.append(EmbedSequential(layers))
                self._out_info.append((ch, ds, names))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, config.out_channels, 3, padding=1))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def divisor(self) -> int:
        """Input sides must be divisible by this (``2 ** (levels - 1)``)."""
        return 2 ** (len(self.config.channel_mult) - 1)

    def output_block_info(self, size: int | None = None) -> list[dict[str, Any]]:
        """Per output block: ``index``, ``out_channels``, ``resolution`` (at a ``size`` input, default
        ``image_size``) and its ``layers``, as the fact sheets of the released model list them."""
        size = size or self.config.image_size
        return [{"index": i, "out_channels": c, "resolution": size // rate, "layers": list(names)}
                for i, (c, rate, names) in enumerate(self._out_info)]

    def decoder_blocks(self) -> list[ADMBlock]:
        """Every ``output_blocks[i]`` as a hookable :class:`ADMBlock` (its output: after the block's
        up-sampling when it has one), coarsest first."""
        return [ADMBlock(i, int(math.log2(rate)), 1.0 / rate, c, self.output_blocks[i])
                for i, (c, rate, _) in enumerate(self._out_info)]

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ADMUNet: x must be (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % self.divisor or x.shape[-2] % self.divisor:
            raise ValueError(f"ADMUNet: size {tuple(x.shape[-2:])} must be divisible by {self.divisor}")
        if timesteps.shape != (x.shape[0],):
            raise ValueError(f"ADMUNet: timesteps must be (B,) = ({x.shape[0]},), got {tuple(timesteps.shape)}")
        emb = self.time_embed(adm_timestep_embedding(timesteps, self.config.model_channels))
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())


# ------------------------------------------------------------------------------------------------
# loading the released file
# ------------------------------------------------------------------------------------------------
def adm_config_from_state(state: Mapping[str, torch.Tensor], num_head_channels: int = 64,
                          image_size: int = 256) -> ADMConfig:
    """The :class:`ADMConfig` a state_dict was saved from, read off its names and shapes.

    ``model_channels``, ``in_channels`` and ``out_channels`` come from the first and last convs;
    ``num_res_blocks`` from the first output block that ends in an up-sampling ResNet block (block
    ``num_res_blocks``); the number of levels from the number of output blocks; ``channel_mult`` and the
    attention levels from the input blocks. The head width is not visible (``qkv`` has 3C outputs whatever the
    number of heads), so it is ADM-256's 64 unless given; ``image_size`` places the attention levels.
    """
    try:
        first, out = state["input_blocks.0.0.weight"], state["out.2.weight"]
    except KeyError as exc:
        raise ADMCheckpointError(f"not an ADM state_dict: key {exc.args[0]!r} is missing "
                                 f"(first keys: {list(state)[:4]})") from None
    mc, cin, cout = int(first.shape[0]), int(first.shape[1]), int(out.shape[0])

    def layers(kind: str, i: int) -> set[int]:
        return {int(k.split(".")[2]) for k in state if k.startswith(f"{kind}.{i}.")}

    n_out = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("output_blocks."))
    ups = [i for i in range(n_out) if any(f"output_blocks.{i}.{j}.in_layers.0.weight" in state for j in layers("output_blocks", i) - {0})]
    nrb = ups[0] if ups else n_out - 1
    if n_out % (nrb + 1):
        raise ADMCheckpointError(f"ADM state_dict: {n_out} output blocks do not form levels of {nrb + 1}")
    levels = n_out // (nrb + 1)
    mult, rates, i = [], set(), 1
    for level in range(levels):
        w = state.get(f"input_blocks.{i}.0.in_layers.2.weight")
        if w is None:
            raise ADMCheckpointError(f"ADM state_dict: input block {i} (level {level}) is missing")
        mult.append(int(w.shape[0]) // mc)
        if f"input_blocks.{i}.1.qkv.weight" in state:
            rates.add(2 ** level)
        i += nrb + (1 if level < levels - 1 else 0)
    return ADMConfig(image_size=image_size, in_channels=cin, model_channels=mc, out_channels=cout, num_res_blocks=nrb,
                     attention_resolutions=tuple(sorted((image_size // r for r in rates), reverse=True)),
                     channel_mult=tuple(mult), num_head_channels=num_head_channels)


def read_adm_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load the released bare state_dict on the CPU (tensors only; memory-mapped when the file allows it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ADM checkpoint {path} does not exist")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # an old (non-zip) serialisation cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ADMCheckpointError(f"{path} could not be read as a PyTorch state_dict ({str(exc).splitlines()[0]})") from exc
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ADMCheckpointError(f"{path} is not a bare state_dict (the released ADM file is one)")
    return dict(obj)


def check_adm_state(state: Mapping[str, torch.Tensor], model: ADMUNet, what: str = "ADM checkpoint") -> None:
    """Raise :class:`ADMCheckpointError` naming the first missing, unexpected or mis-shaped key."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in want if k not in state]
    if missing:
        raise ADMCheckpointError(f"{what}: key {missing[0]!r} is missing ({len(missing)} missing in all)")
    extra = [k for k in state if k not in want]
    if extra:
        raise ADMCheckpointError(f"{what}: unexpected key {extra[0]!r} ({len(extra)} unexpected in all)")
    for k, shape in want.items():
        if tuple(state[k].shape) != shape:
            raise ADMCheckpointError(f"{what}: key {k!r} has shape {tuple(state[k].shape)}, the network has {shape}")


def load_adm(source: str | Path | Mapping[str, torch.Tensor], config: ADMConfig | None = None,
             device: torch.device | None = None) -> ADMUNet:
    """An :class:`ADMUNet` holding a released (or compatible) ADM state_dict, loaded strictly, in eval mode.

    Args:
        source: the file (``256x256_diffusion_uncond.pt``) or a loaded state_dict.
        config: the architecture; default: read off the shapes (:func:`adm_config_from_state`), which for the
            released file is exactly :data:`ADM256`.
        device: where to put the network (default: stays on the CPU).
    """
    state = read_adm_file(source) if isinstance(source, (str, Path)) else dict(source)
    config = config or adm_config_from_state(state)
    with torch.device("meta"):
        probe = ADMUNet(config)
    check_adm_state(state, probe, f"ADM checkpoint {source if isinstance(source, (str, Path)) else '(state_dict)'}")
    probe.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)  # no random init
    model = probe.eval()
    return model.to(device) if device is not None else model
