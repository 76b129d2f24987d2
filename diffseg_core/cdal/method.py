"""cDAL as a method of the shared loop: Algorithm 1 per training step, Algorithm 2 per prediction.

cDAL (conditional Diffusion with Attention-guided Latent, Hejrati et al., MICCAI 2024) generates the
segmentation map with a **T = 2-4 step** diffusion process whose reverse steps are learnt by a GAN-style
generator (DDGAN). The generator G (:mod:`.generator`) predicts the clean label x0 from the noisy label,
the image and a latent z; the discriminator D (:mod:`.discriminator`) judges pairs of consecutive noise
levels. What is new in cDAL is how D helps G: the channel mean of one of D's feature maps, computed on
the real pair, re-weights the clean label before it is noised for G's training step (:mod:`.training`).

Data conventions (:mod:`.labels`): binary labels become one channel with foreground = +1 (also for CXR,
whose official code inverts them, decision D16); images are normalised per channel with the official
MoNuSeg statistics (MoNuSeg) or mapped to [-1, 1] (every other dataset).

Choices against the official code (each also stated where it applies; see the book's decisions page):

* model selection on a validation split, never on test (D15; the shared loop does this);
* constant learning rates (the official cosine schedule is stepped per *epoch* of a 7-188 iteration epoch
  and is periodic; at our run lengths it would be a no-op or noise);
* the ensemble RNG is a local generator re-seeded at each :meth:`CDALMethod.predict` call (the official code
  re-seeds before each image), so evaluation is deterministic and does not disturb the training stream;
* validation during training uses ``val_ensemble`` members (cheap); after training (when the loop reloads
  the best weights) and in any reloaded run, ``predict`` uses the full ``ensemble``;
* multiclass (Hippocampus) probabilities are the per-class ensemble means normalised to sum to one, and the
  class is their argmax; the official code rounds each channel before the argmax (ties then break towards
  background). Binary tasks are identical to the official mean-then-threshold-at-0.5;
* the generator EMA (``ema_decay``, Hippocampus 0.999 as in the official Hippocampus training) is a
  separate copy ``nets['G_ema']`` used for validation and prediction, with a warm-up (:mod:`.ema`).

**Native 3-D** (``spatial_dims=3``, chapter 08; our extension): G and D are built with 3-D layers, training
batches are c^3 patches of whole volumes (:func:`diffseg_core.data.volumes.volume_batches`, 50/50
foreground/background centres as the official Hippocampus crops), and ``predict`` takes volumes
(B, C, D, H, W); the shared evaluation tiles whole volumes with c^3 windows.
"""
from __future__ import annotations

import copy
from typing import Any, Iterator, Sequence

import torch

from ..data import DataError, DatasetInfo
from ..methods.base import MethodOption, SegMethod
from ..schedule import vp_schedule
from .config import CDALConfig
from .discriminator import build_discriminator
from .ema import ema_decay_at, update_ema
from .generator import ConditionalGenerator, build_generator
from .labels import label_channels, labels_to_x0, normalize_image, x0_to_probs
from .sampling import sample_cdal
from .training import d_step, g_step

__all__ = ["CDALMethod"]


class CDALMethod(SegMethod):
    """cDAL in the shared loop: nets ``G`` and ``D``, optimisers ``g`` and ``d`` (Adam, betas (0.5, 0.9)).

    ``train_step`` runs Algorithm 1 (D real + lazy R1 + D fake, then G; D skipped when
    ``use_attention=False``); ``predict`` runs Algorithm 2 with an ensemble and returns class probabilities
    (B, K, h, w) from the ensemble mean. ``inference_roi()`` is the training crop (tiles of the shared sliding
    window, as the official code tiles MoNuSeg). With ``ema_decay > 0`` a third network ``G_ema`` (no
    gradient) follows G and is the one ``predict`` samples. ``spatial_dims`` (2 or 3) tells the shared
    evaluation whether to tile slices or whole volumes.
    """

    name = "cdal"
    config_class = CDALConfig
    cli_options = (
        MethodOption("--timesteps", "timesteps", "diffusion steps T (paper: 4 MoNuSeg, 2 CXR/Hippocampus)",
                     type=int, choices=(1, 2, 3, 4, 5, 6, 8)),
        MethodOption("--ensemble", "ensemble", "ensemble members at inference (paper: 5)", type=int),
        MethodOption("--attn-scale", "attn_scale", "D stage used as attention: 1/2 (hippocampus), 1/4, 1/8 or 1/16 "
                     "of the input", type=int, choices=(2, 4, 8, 16)),
        MethodOption("--attn-norm", "attn_norm", "A_D as computed ('raw', faithful) or rescaled per sample to [0, 1]",
                     type=str, choices=("raw", "minmax")),
        MethodOption("--no-latent", "use_latent", "ablation: z = 0", const=False),
        MethodOption("--no-attention", "use_attention", "ablation: A_D = 1 (D is then not trained)", const=False),
        MethodOption("--spatial-dims", "spatial_dims", "2: slice-wise (the paper); 3: native 3-D cDAL on volume "
                     "patches (volume datasets: hippocampus)", type=int, choices=(2, 3)),
        MethodOption("--ema-decay", "ema_decay", "decay of the generator EMA used for validation and prediction; "
                     "0 = predict with the live weights (default: 0.999 for hippocampus, as the official code; "
                     "0 elsewhere)", type=float, metavar="BETA"),
    )

    def __init__(self, cfg: Any, info: DatasetInfo, device: torch.device) -> None:
        super().__init__(cfg, info, device)
        mc = self.model_cfg
        self.label_ch = label_channels(info.num_classes)
        self.spatial_dims = int(mc.spatial_dims)
        if mc.image_norm == "monuseg" and info.in_channels != 3:
            raise ValueError(f"cdal: image_norm 'monuseg' needs RGB images, dataset {info.name} has {info.in_channels} channel(s)")
        self.sched = vp_schedule(mc.timesteps, mc.beta_min, mc.beta_max).to(device)
        G = build_generator(mc, self.label_ch, info.in_channels).to(device)
        D = build_discriminator(mc, self.label_ch).to(device)
        crop = cfg.data.crop
        if crop % G.divisor:
            raise ValueError(f"cdal: crop {crop} must be divisible by {G.divisor} ({len(mc.ch_mult)} generator levels)")
        if mc.use_attention:
            D.stage_for_scale(mc.attn_scale)            # raises early if the D has no such stage
        self.nets["G"] = G
        self.nets["D"] = D
        if mc.ema_decay > 0:
            self.nets["G_ema"] = copy.deepcopy(G).requires_grad_(False)
        self.ema_updates = 0
        self.optimizers["g"] = torch.optim.Adam(G.parameters(), lr=mc.lr_g, betas=mc.betas)
        self.optimizers["d"] = torch.optim.Adam(D.parameters(), lr=mc.lr_d, betas=mc.betas)
        self.n_ensemble = mc.ensemble

    # ---- configuration -----------------------------------------------------------------------
    @classmethod
    def data_overrides(cls, preset: str, dataset: str, model: Any) -> dict[str, Any]:
        """3-D: a batch is a few c^3 patches instead of many c x c slices (cpu: 2 patches of 32^3 = 64 slices'
        worth of voxels; the official Hippocampus batch is 4 patches)."""
        if getattr(model, "spatial_dims", 2) == 3:
            return {"batch_size": {"smoke": 2, "cpu": 2, "gpu": 4, "paper": 4}.get(preset, 2)}
        return {}

    @classmethod
    def train_overrides(cls, preset: str, dataset: str, model: Any) -> dict[str, Any]:
        """Longer ``cpu`` runs than the shared default (a cDAL step is cheap but it needs many of them)."""
        if preset == "cpu":
            return {"steps": 6000, "val_every": 250, "log_every": 25, "max_minutes": 15.0}
        if preset == "gpu":
            return {"steps": 30000, "val_every": 1000, "log_every": 50, "max_minutes": 50.0}
        return {}

    # ---- training -----------------------------------------------------------------------------
    def train_batches(self, cases: Sequence[Any], seed: int) -> Iterator[dict[str, Any]]:
        """2-D: the shared random crops; 3-D: random c^3 patches of the volumes the slice cases belong to."""
        if self.spatial_dims == 2:
            return super().train_batches(cases, seed)
        from ..data.volumes import cases_to_volumes, volume_batches

        if not cases or "volume" not in cases[0].meta:
            raise DataError(f"cdal --spatial-dims 3 needs a volume dataset (hippocampus); {self.info.name} has 2-D "
                            "images only")
        return volume_batches(cases_to_volumes(cases), self.cfg.data, seed=seed)

    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        image = batch["image"]
        if image.ndim != 2 + self.spatial_dims or image.shape[1] != self.info.in_channels:
            axes = "h, w" if self.spatial_dims == 2 else "d, h, w"
            raise ValueError(f"cdal: batch image must be (B, {self.info.in_channels}, {axes}), got {tuple(image.shape)}")
        x0 = labels_to_x0(batch["label"], self.info.num_classes)
        return x0, normalize_image(image.float(), self.model_cfg.image_norm)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        """Algorithm 1 on ``batch`` (image (B, C, h, w) in [0, 1], label (B, h, w)); returns float losses."""
        mc, G, D = self.model_cfg, self.nets["G"], self.nets["D"]
        self.n_ensemble = mc.val_ensemble               # validation inside the loop stays cheap
        x0, image = self._inputs(batch)
        logs: dict[str, float] = {}
        if mc.use_attention or mc.adv_weight > 0:
            logs.update(d_step(G, D, self.sched, x0, image, mc, step, self.optimizers["d"]))
        out = g_step(G, D if mc.use_attention or mc.adv_weight > 0 else None, self.sched, x0, image, mc,
                     self.optimizers["g"])
        logs.update({k: v for k, v in out.items() if isinstance(v, float)})
        if "G_ema" in self.nets:
            update_ema(self.nets["G_ema"], G, ema_decay_at(mc.ema_decay, self.ema_updates))
            self.ema_updates += 1
        first = [k for k in ("mse", "d_loss", "attn_mean") if k in logs]    # what the progress bar shows
        return {**{k: logs[k] for k in first}, **logs}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ema_updates": self.ema_updates}

    def load_state_dict(self, state: dict[str, Any], with_optimizers: bool = True) -> None:
        """Load weights; a reload (end of training, or a saved run) switches ``predict`` to the full ensemble.

        A state without ``G_ema`` weights (a run trained without EMA, or converted authors' weights) while
        this method keeps an EMA starts the EMA from G's weights; ``G_ema`` weights are ignored by a method
        without EMA (``ema_decay=0``)."""
        nets = state["nets"]
        if "G_ema" in self.nets and not any(k.startswith("G_ema.") for k in nets):
            nets = {**nets, **{"G_ema." + k[2:]: v for k, v in nets.items() if k.startswith("G.")}}
        elif "G_ema" not in self.nets:
            nets = {k: v for k, v in nets.items() if not k.startswith("G_ema.")}
        super().load_state_dict({**state, "nets": nets}, with_optimizers)
        self.ema_updates = int(state.get("ema_updates", 0))
        self.n_ensemble = self.model_cfg.ensemble

    def sampling_generator(self) -> ConditionalGenerator:
        """The generator ``predict`` samples: the EMA copy once it has been updated (``ema_decay > 0`` and at
        least one training step, here or in the loaded state), else the live G (so weights loaded straight into
        ``nets['G']``, e.g. converted authors' weights, are the ones sampled)."""
        return self.nets["G_ema"] if "G_ema" in self.nets and self.ema_updates > 0 else self.nets["G"]

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameters of G and D (the EMA copy of G is not counted twice)."""
        return sum(p.numel() for name, net in self.nets.items() if name != "G_ema"
                   for p in net.parameters() if p.requires_grad or not trainable_only)

    # ---- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image: torch.Tensor, text: Sequence[str] | None = None) -> torch.Tensor:
        """Class probabilities (B, K, h, w) from the mean of ``self.n_ensemble`` T-step samples; h, w divisible
        by the generator's down-sampling factor (the sliding window gives crop-sized tiles). 3-D: volumes
        (B, C, d, h, w) -> (B, K, d, h, w). Samples the EMA generator when there is one."""
        gen = torch.Generator(device=image.device)
        gen.manual_seed(int(self.cfg.seed))
        r = sample_cdal(self.sampling_generator(), self.sched, normalize_image(image.float(), self.model_cfg.image_norm),
                        n_samples=self.n_ensemble, use_latent=self.model_cfg.use_latent, generator=gen)
        return x0_to_probs(r["mean"] * 2.0 - 1.0)

    def inference_roi(self) -> int | None:
        return self.cfg.data.crop

    def run_info(self) -> dict[str, Any]:
        G, D = self.nets["G"], self.nets["D"]
        return {"G_parameters": G.num_parameters(), "D_parameters": D.num_parameters(),
                "encoder_parameters": sum(p.numel() for p in G.encoder.parameters()),
                "schedule": self.sched.to("cpu").table(), "ensemble": self.model_cfg.ensemble,
                "attention_stage": D.stage_for_scale(self.model_cfg.attn_scale) if self.model_cfg.use_attention else None,
                "d_skipped": not (self.model_cfg.use_attention or self.model_cfg.adv_weight > 0),
                "spatial_dims": self.spatial_dims, "ema_decay": self.model_cfg.ema_decay,
                "ema_updates": self.ema_updates}
