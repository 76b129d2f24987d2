"""Algorithm 2 of cDAL: T-step ensemble sampling, the same numbers arranged for the hardware, and a many-step
sampler on the same network.

x_T ~ N(0, I); for code_t = T-1..0 draw a fresh z, predict x0_hat = G(x_{t+1}, t, I, z) and draw x_t from
the posterior q(x_t | x_{t+1}, x0_hat) (cDAL Eq. 2; a fresh z per step samples the marginal over z, cDAL
Eq. 3). No noise is added at t = 0, so the output is the last x0 prediction. An ensemble of ``n_samples``
chains is mapped to [0, 1] by (x + 1)/2, averaged and thresholded at 0.5 (multiclass: argmax); the
per-pixel variance over the ensemble is the uncertainty map
(decision D9 for the ensemble size). Images larger than the training crop are tiled by the shared
sliding-window evaluation (:mod:`diffseg_core.evaluate`).

Two functions compute Algorithm 2:

* :func:`sample_cdal` is the algorithm as written, one batch of N x B chains stepped together (chapter 06
  shows it);
* :func:`sample_cdal_ensemble` gives **the same samples** (the same random numbers, the same per-chain
  arithmetic) arranged for the hardware: the random numbers are drawn first, in :func:`sample_cdal`'s order;
  the chains then run in batches sized by a :class:`SamplerPlan` (cache-sized on a CPU, large on an
  accelerator), all T steps of a batch before the next, with the optional layout and precision choices of the
  plan. ``CDALMethod.predict`` uses it.

Both compute the image encoder **once** per image (:meth:`ConditionalGenerator.encode`): it depends on the
image only, not on x_t, t or z, so recomputing it for every step and member (as the official code does)
changes nothing but the cost.

Tiles, not whole images. The generator is convolutional, but two of its parts see the whole input: the
self-attention levels (fixed at construction, :func:`attention_extent`; every preset has at least the middle
one) attend over every position of the input, and every GroupNorm normalises over it. A 512-px image passed
whole would therefore be normalised and attended over 64 times more positions than the 64-px crops the
``cpu`` network was trained on (the middle attention of the ``cpu`` preset: 16 x 16 = 256 positions per tile,
128 x 128 = 16,384 for the whole image, 16,384^2 attention scores per chain). That changes the
prediction (not only at tile borders) and costs more, not less: the convolutions cost the same per pixel
either way, the attention grows with the square of the positions. So cDAL predicts tile by tile, as it was
trained and as the official code tiles MoNuSeg (book/decisions.md, D20), and gets its speed from batching
tiles and members, not from larger windows. ``benchmarks/cdal_inference.py --windows 128 512`` measures the
change: on 3 MoNuSeg test images (``cpu`` preset, a 100-step run) 128-px windows moved the Dice by +0.004 and
whole 512-px images by +0.005 (3-4 % of the pixels changed class), and the whole image cost 7.5x the CPU time
of the tiles (``benchmarks/README.md``). The tile path gives the first implementation's predictions.
"""
from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Iterator

import torch
from torch import nn

from ..schedule import Schedule, ddpm_linear_schedule, sample_posterior, vp_schedule
from .generator import ConditionalGenerator, draw_latent

__all__ = ["sample_cdal", "sample_cdal_ensemble", "summarise_samples", "nearest_time_map", "ddpm_sample_same_net",
           "SamplerPlan", "default_plan", "cpu_supports_bf16", "attention_extent", "posterior_coefficients"]

#: pixels per generator call on a CPU: 16 chains of 64 x 64. Measured in ``benchmarks/cdal_inference.py``
#: (CPU seconds per image, fp32 channels-last): 1 chain per call pays the per-operation overhead ~330 times
#: per chain, 80 chains spill the activations out of the core's caches; 16 was the cheapest
CPU_BATCH_PIXELS = 16 * 64 * 64
#: pixels per generator call on an accelerator: large batches (256 chains of 64 x 64, 16 of 256 x 256)
ACCELERATOR_BATCH_PIXELS = 256 * 64 * 64

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------------
# Algorithm 2 as written
# ------------------------------------------------------------------------------------------------
def summarise_samples(samples: torch.Tensor) -> dict[str, torch.Tensor]:
    """samples (N, B, Cl, H, W) in [-1, 1] -> mean/variance in [0, 1] space and the thresholded mask."""
    p = ((samples + 1.0) / 2.0).clamp(0.0, 1.0)
    mean = p.mean(dim=0)
    var = p.var(dim=0, unbiased=False)
    mask = (mean[:, 0] > 0.5).long() if mean.shape[1] == 1 else mean.argmax(dim=1)
    return {"mean": mean, "variance": var, "mask": mask, "samples": p}


@torch.inference_mode()
def sample_cdal(G: ConditionalGenerator, sched: Schedule, image: torch.Tensor, n_samples: int = 5,
                use_latent: bool = True, return_trajectory: bool = False,
                generator: torch.Generator | None = None, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> dict[str, Any]:
    """Algorithm 2: ``n_samples`` T-step reverse chains per image, summarised.

    Args:
        image: G's conditioning input (B, Ci, H, W), **already normalised** (:func:`normalize_image`);
            a 3-D generator takes volumes (B, Ci, D, H, W) and every output gains the same axis.
        n_samples: ensemble size (5 in the paper, D9); members are run as one batch of N*B.
        use_latent: draw a fresh z ~ N(0, I) at every step (False: z = 0).
        generator: optional ``torch.Generator`` on ``image``'s device for reproducible noise.
        text, text_mask: the image's text tokens (B, L, D) and padding mask (B, L) for a generator with text
            attention (chapter 13); repeated for every member like the image.
    Returns dict:
        ``mean`` (B, Cl, H, W) ensemble mean of (x + 1)/2 in [0, 1]; ``mask`` (B, H, W) int64 (binary: mean > 0.5,
        multiclass: argmax); ``variance`` (B, Cl, H, W) >= 0 per-pixel variance over members (uncertainty);
        ``samples`` (N, B, Cl, H, W) members in [0, 1]; ``nfe`` network evaluations per image (N * T);
        ``trajectory`` (when asked): list over steps code_t = T-1..0 of ``(x_in, x0_hat)`` tensors
        (N, B, Cl, H, W): G's noisy input at level t+1 and its x0 prediction.
    """
    if n_samples < 1:
        raise ValueError(f"sample_cdal: n_samples must be >= 1, got {n_samples}")
    b, spatial = image.shape[0], tuple(image.shape[2:])
    n = n_samples
    feats = G.encode(image)                                            # once per image: (B, nf, *S)
    feats = feats.repeat(n, *([1] * (feats.ndim - 1)))                 # (N*B, nf, *S), member-major
    text_kw = {} if text is None else {                                  # (N*B, L, D), same order as feats
        "text": text.repeat(n, 1, 1), "text_mask": text_mask.repeat(n, 1) if text_mask is not None else None}
    x = torch.randn(n * b, G.label_channels, *spatial, device=image.device, dtype=image.dtype, generator=generator)
    traj = []
    x0_hat = x
    for code_t in reversed(range(sched.T)):
        t = torch.full((n * b,), code_t, dtype=torch.long, device=image.device)
        z = draw_latent(G, n * b, use_latent, image, generator)           # a fresh z at every step
        x0_hat = G(x, t, z=z, image_features=feats, **text_kw)
        if return_trajectory:
            traj.append((x.reshape(n, b, *x.shape[1:]).clone(), x0_hat.reshape(n, b, *x.shape[1:]).clone()))
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        x = sample_posterior(sched, x0_hat, x, t, noise)               # no noise at code_t = 0
    out: dict[str, Any] = summarise_samples(x.reshape(n, b, *x.shape[1:]))
    out["nfe"] = n * sched.T
    if return_trajectory:
        out["trajectory"] = traj
    return out


# ------------------------------------------------------------------------------------------------
# the same samples, arranged for the hardware
# ------------------------------------------------------------------------------------------------
def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16); emulated bf16 is slower than fp32."""
    try:
        caps = torch._C._cpu._get_cpu_capability()     # private, present in torch >= 2.3
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    except Exception:
        try:
            with open("/proc/cpuinfo") as fh:
                flags = fh.read()
            return " avx512_bf16" in flags or " amx_bf16" in flags
        except OSError:
            return False


def _accelerator_supports_bf16(device: torch.device) -> bool:
    backend = getattr(torch, device.type, None)           # torch.<backend> of the accelerator
    check = getattr(backend, "is_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:
        return False


@dataclass(frozen=True)
class SamplerPlan:
    """How :func:`sample_cdal_ensemble` uses the hardware; none of it changes the algorithm.

    * ``batch_pixels``: chains per generator call = max(1, batch_pixels // (H * W)). On a CPU small batches are
      faster per chain (the activations stay in the core's caches); on an accelerator large ones are.
    * ``channels_last``: run G in the NHWC layout (G's weights are converted for the call and converted back).
    * ``precision``: 'fp32', or 'bf16' / 'fp16' autocast (GroupNorm, softmax and the posterior stay fp32).
      Mixed precision changes the predictions slightly; 'bf16' on a CPU without native bf16 falls back to fp32.
    * ``workers`` (CPU only): chain batches run concurrently on this many threads, each with one intra-op
      thread (``None``: ``torch.get_num_threads()``; 1: one batch at a time with PyTorch's own threading). On
      the small tensors of a chain batch, splitting every operation over the cores costs a synchronisation
      per operation (~330 per generator call); whole batches per core do not, and they keep working when the
      cores are shared with other jobs (OpenMP threads then wait for each other, see ``benchmarks/README.md``).
      PyTorch's thread count is set to 1 for the call and restored afterwards.

    With ``precision='fp32'`` the samples equal :func:`sample_cdal`'s up to float rounding (the order of
    additions inside a convolution may depend on the layout and batch size): same random numbers, same steps.
    """

    batch_pixels: int = CPU_BATCH_PIXELS
    channels_last: bool = True
    precision: str = "fp32"
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in _PRECISIONS:
            raise ValueError(f"SamplerPlan: precision must be one of {sorted(_PRECISIONS)}, got {self.precision!r}")
        if self.batch_pixels < 1:
            raise ValueError(f"SamplerPlan: batch_pixels must be >= 1, got {self.batch_pixels}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"SamplerPlan: workers must be >= 1 or None, got {self.workers}")

    def chains_per_batch(self, *spatial: int) -> int:
        """Chains per generator call for chains of spatial size ``spatial`` (H, W) or (D, H, W)."""
        return max(1, self.batch_pixels // math.prod(spatial))

    def resolved(self, device: torch.device, spatial_dims: int = 2) -> "SamplerPlan":
        """The plan as it runs on ``device``: bf16 on a CPU without native support and fp16 on a CPU become fp32;
        ``workers`` becomes a number (1 on an accelerator); ``channels_last`` is dropped for 3-D generators
        (``spatial_dims=3``: NCDHW; the channels-last choice was measured on 2-D tiles only)."""
        precision = self.precision
        if device.type == "cpu" and (precision == "fp16" or (precision == "bf16" and not cpu_supports_bf16())):
            precision = "fp32"
        workers = 1 if device.type != "cpu" else (self.workers or max(1, torch.get_num_threads()))
        return replace(self, precision=precision, workers=workers, channels_last=self.channels_last and spatial_dims == 2)

    def describe(self, *spatial: int) -> str:
        """For the protocol sentence, e.g. 'fp32, channels-last, 16 chains per generator call, 2 workers x 1 thread'
        (``spatial``: a chain's (H, W) or (D, H, W); without it the pixel budget is named)."""
        per = f"{self.chains_per_batch(*spatial)} chains" if spatial and all(spatial) else f"{self.batch_pixels:,} pixels"
        par = f", {self.workers} workers x 1 thread" if self.workers and self.workers > 1 else ""
        layout = "channels-last" if self.channels_last else ("NCDHW" if len(spatial) == 3 else "NCHW")
        return f"{self.precision}, {layout}, {per} per generator call{par}"


def default_plan(device: torch.device) -> SamplerPlan:
    """The plan for ``device``: fp32 and cache-sized batches on a CPU; mixed precision (bf16 where supported,
    else fp16) and large batches on an accelerator; channels-last on both. Chosen from
    ``benchmarks/cdal_inference.py`` (see ``benchmarks/README.md``): on the project's CPU (native bf16) bf16
    autocast was no faster than fp32 channels-last and changes the predictions, so the CPU stays fp32;
    ``torch.compile`` gave no gain there and took minutes to compile, so it is not used."""
    if device.type == "cpu":
        return SamplerPlan(CPU_BATCH_PIXELS, True, "fp32", workers=None)
    return SamplerPlan(ACCELERATOR_BATCH_PIXELS, True, "bf16" if _accelerator_supports_bf16(device) else "fp16", workers=1)


def attention_extent(G: ConditionalGenerator, h: int, w: int) -> dict[str, int]:
    """Positions each self-attention layer of ``G`` attends over for an (h, w) input: ``{"level i": positions}``.

    Attention levels are fixed at construction (``attn_resolutions`` relative to ``image_size``); the middle
    level always has one. On an input larger than the training crop every entry grows with the area, which is
    why :mod:`diffseg_core.evaluate` feeds crop-sized tiles (see the module docstring)."""
    levels = len(G.ch_mult)
    out = {f"level {i}": (h >> i) * (w >> i) for i in sorted(G.attn_levels)}
    out[f"middle (level {levels - 1})"] = (h >> (levels - 1)) * (w >> (levels - 1))
    return out


def posterior_coefficients(sched: Schedule) -> list[tuple[float, float, float]]:
    """Per code time ``t``: the floats (c1, c2, s) with x_t = c1 x0_hat + c2 x_{t+1} + s eps (Eq. 3; s = 0 at t = 0).

    The same float32 values :func:`~diffseg_core.schedule.sample_posterior` gathers, read once before sampling
    so the step loop does no table look-ups and no device synchronisation."""
    c1 = sched.posterior_coef_x0.float().cpu()
    c2 = sched.posterior_coef_xt.float().cpu()
    s = torch.exp(0.5 * sched.posterior_log_variance_clipped.float().cpu())
    return [(float(c1[t]), float(c2[t]), float(s[t]) if t != 0 else 0.0) for t in range(sched.T)]


@contextlib.contextmanager
def _layout(G: nn.Module, channels_last: bool) -> Iterator[None]:
    """G's 4-D weights in channels-last for the block, restored afterwards (outside inference mode, so the
    weights stay trainable)."""
    if not channels_last:
        yield
        return
    spatial = [m.weight for m in G.modules() if isinstance(m, nn.Conv2d) and m.weight[0, 0].numel() > 1]
    already = bool(spatial) and all(not wt.is_contiguous() for wt in spatial)   # the caller's own choice: keep it
    if not already:
        with torch.no_grad():
            G.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        if not already:
            with torch.no_grad():
                G.to(memory_format=torch.contiguous_format)


def _draw_stream(G: ConditionalGenerator, n: int, b: int, T: int, like: torch.Tensor, use_latent: bool,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, list[Any], list[torch.Tensor]]:
    """The random numbers of :func:`sample_cdal` for ``b`` images, drawn in its order:
    x_T (N*b, Cl, *S), then per step z (N*b, nz) or None and the posterior noise (N*b, Cl, *S)."""
    x = torch.randn(n * b, G.label_channels, *like.shape[2:], device=like.device, dtype=like.dtype, generator=generator)
    zs, eps = [], []
    for _ in range(T):
        zs.append(draw_latent(G, n * b, use_latent, like, generator))
        eps.append(torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator))
    return x, zs, eps


def sample_cdal_ensemble(G: ConditionalGenerator, sched: Schedule, image: torch.Tensor, n_samples: int = 5,
                         use_latent: bool = True, generator: torch.Generator | None = None,
                         seed_group: int | None = None, plan: SamplerPlan | None = None,
                         text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None) -> dict[str, Any]:
    """Algorithm 2 for many images (tiles) at once, arranged for the hardware; the samples of :func:`sample_cdal`.

    1. the image encoder runs once per image (B, nf, H, W);
    2. every random number is drawn up front, in :func:`sample_cdal`'s order: x_T, then per step z and the
       posterior noise (with ``seed_group = g``: per group of g images, each group starting from the
       generator's state at the call, as if :func:`sample_cdal` had been called on each group with a freshly
       seeded generator; predictions then do not depend on how many tiles arrive per call);
    3. the N x B chains run in batches of ``plan.chains_per_batch(H, W)``, all T steps of a batch before the
       next one (its activations stay in cache), on a CPU one batch per core (``plan.workers``), the
       posterior step (Eq. 3) with precomputed float coefficients: no host <-> device traffic and no
       synchronisation inside the loop;
    4. layout and precision follow ``plan`` (default: :func:`default_plan` for ``image``'s device).

    Args and returns as :func:`sample_cdal` (no trajectory; ``text``/``text_mask`` (B, L, D)/(B, L) go with
    their image to every member); the result also holds ``plan`` (the plan as run).
    A 3-D generator (``G.spatial_dims == 3``) takes volumes (B, Ci, D, H, W) and runs in NCDHW (the plan's
    ``channels_last`` applies to 2-D only, :meth:`SamplerPlan.resolved`).
    With ``plan.precision == 'fp32'`` the samples equal :func:`sample_cdal`'s (same generator state, no
    ``seed_group``) up to float rounding.
    """
    if n_samples < 1:
        raise ValueError(f"sample_cdal_ensemble: n_samples must be >= 1, got {n_samples}")
    dims = getattr(G, "spatial_dims", 2)
    if image.ndim != 2 + dims:
        axes = "H, W" if dims == 2 else "D, H, W"
        raise ValueError(f"sample_cdal_ensemble: image must be (B, Ci, {axes}) for this {dims}-D generator, "
                         f"got {tuple(image.shape)}")
    if seed_group is not None and (seed_group < 1 or generator is None):
        raise ValueError("sample_cdal_ensemble: seed_group needs a positive size and a torch.Generator to re-start")
    device = image.device
    plan = (plan or default_plan(device)).resolved(device, dims)
    b, spatial = image.shape[0], tuple(image.shape[2:])
    n, T, cl = n_samples, sched.T, G.label_channels
    coefs = posterior_coefficients(sched)
    chunk = plan.chains_per_batch(*spatial)
    amp = _PRECISIONS[plan.precision]
    fmt = torch.channels_last if plan.channels_last else torch.contiguous_format

    # 2. the random stream, (N, B, ...) member-major like sample_cdal, per seed group
    groups = [(s, min(b, s + seed_group)) for s in range(0, b, seed_group)] if seed_group else [(0, b)]
    start_state = generator.get_state() if seed_group else None
    xs, zs, es = [], [[] for _ in range(T)], [[] for _ in range(T)]
    for lo, hi in groups:
        if start_state is not None:
            generator.set_state(start_state)
        x, z, e = _draw_stream(G, n, hi - lo, T, image[lo:hi], use_latent, generator)
        xs.append(x.view(n, hi - lo, cl, *spatial))
        for s in range(T):
            zs[s].append(None if z[s] is None else z[s].view(n, hi - lo, -1))
            es[s].append(e[s].view(n, hi - lo, cl, *spatial))
    x_all = torch.cat(xs, dim=1).reshape(n * b, cl, *spatial)
    z_all = [None if zs[s][0] is None else torch.cat(zs[s], dim=1).reshape(n * b, -1) for s in range(T)]
    e_all = [torch.cat(es[s], dim=1).reshape(n * b, cl, *spatial) for s in range(T)]
    member_image = torch.arange(n * b, device=device) % b                 # chain c = m * B + i sees image i
    times = [torch.full((chunk,), code_t, dtype=torch.long, device=device) for code_t in reversed(range(T))]

    out = torch.empty_like(x_all)

    def autocast():
        return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()

    def run_batch(c0: int) -> None:                    # all T steps of chains c0..c1 (grad mode is per thread)
        c1 = min(n * b, c0 + chunk)
        with torch.inference_mode():
            f = feats[member_image[c0:c1]].contiguous(memory_format=fmt)
            kw = {} if text is None else {"text": text[member_image[c0:c1]],
                                          "text_mask": None if text_mask is None else text_mask[member_image[c0:c1]]}
            x = x_all[c0:c1].contiguous(memory_format=fmt)
            for s, code_t in enumerate(reversed(range(T))):
                with autocast():
                    x0_hat = G(x, times[s][:c1 - c0], z=None if z_all[s] is None else z_all[s][c0:c1],
                               image_features=f, **kw).float()
                a, c, sd = coefs[code_t]
                x = a * x0_hat + c * x
                if sd:
                    x = x + sd * e_all[s][c0:c1]
            out[c0:c1] = x

    starts = list(range(0, n * b, chunk))
    workers = min(plan.workers or 1, len(starts))
    with _layout(G, plan.channels_last):
        with torch.inference_mode(), autocast():
            feats = G.encode(image.contiguous(memory_format=fmt))         # 1. once per image
        if workers > 1:                                                    # 3. chain batches, one per core
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(run_batch, starts))
            finally:
                torch.set_num_threads(threads)
        else:
            for c0 in starts:
                run_batch(c0)
    res: dict[str, Any] = summarise_samples(out.view(n, b, cl, *spatial))
    res["nfe"] = n * T
    res["plan"] = plan
    return res


# ------------------------------------------------------------------------------------------------
# the many-step comparison (D22)
# ------------------------------------------------------------------------------------------------
def nearest_time_map(net_sched: Schedule, sched: Schedule) -> list[int]:
    """For each code time of ``sched``, the code time of ``net_sched`` whose more-noisy level has the closest
    signal level abar (used to feed a many-step sampler to a network trained on a T = 2-4 schedule)."""
    net_abar = net_sched.alphas_cumprod[1:].double()
    return [int(torch.argmin((net_abar - a).abs())) for a in sched.alphas_cumprod[1:].double()]


@torch.inference_mode()
def ddpm_sample_same_net(G: ConditionalGenerator, image: torch.Tensor, T: int = 100, n_samples: int = 5,
                         net_sched: Schedule | None = None, use_latent: bool = True,
                         generator: torch.Generator | None = None) -> dict[str, Any]:
    """Many-step ancestral sampler with the **same** x0-predicting network (the speed comparison, D22).

    The T-step DDPM linear schedule (SegDiff: T = 100, beta 1e-3 -> 0.2) drives the chain; at each step G's
    x0 prediction is plugged into that schedule's posterior (DDPM Eq. 6-7). G only knows its own code times, so step
    t is given the network code time whose noise level is closest (:func:`nearest_time_map`). The point is
    the cost: T network evaluations per sample instead of cDAL's 2-4. Like :func:`sample_cdal` it encodes the
    image once. Returns the keys of :func:`sample_cdal` (no trajectory).
    """
    sched = ddpm_linear_schedule(T)
    net_sched = net_sched or vp_schedule(4)
    tmap = nearest_time_map(net_sched, sched)
    b, spatial = image.shape[0], tuple(image.shape[2:])
    n = n_samples
    feats = G.encode(image)
    feats = feats.repeat(n, *([1] * (feats.ndim - 1)))
    x = torch.randn(n * b, G.label_channels, *spatial, device=image.device, dtype=image.dtype, generator=generator)
    for code_t in reversed(range(sched.T)):
        t = torch.full((n * b,), code_t, dtype=torch.long, device=image.device)
        t_net = torch.full_like(t, tmap[code_t])
        x0_hat = G(x, t_net, z=draw_latent(G, n * b, use_latent, image, generator), image_features=feats)
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        x = sample_posterior(sched, x0_hat, x, t, noise)
    out: dict[str, Any] = summarise_samples(x.reshape(n, b, *x.shape[1:]))
    out["nfe"] = n * sched.T
    return out
