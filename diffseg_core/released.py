"""The authors' released cDAL generators, scored with this book's protocol (cDAL Algorithm 2).

``python -m diffseg_core evaluate --official monuseg --weights FILE --data DIR --json OUT.json`` (and the
chapter "The authors' weights") run :func:`evaluate_official`: the file is converted to our generator
(:mod:`diffseg_core.cdal.official`, strict), and Algorithm 2 runs with the **official** number of steps T,
ensemble size and tiling of the configuration:

* MoNuSeg: T = 4, 5 samples, images resized to 512 x 512 and cut into four non-overlapping 256 x 256 tiles,
  scored at 512 (decision D20);
* CXR: T = 2, 30 samples (the code's value; the paper says 5, decision D9), whole 256 x 256 images; the
  authors' label polarity (lung = -1) is folded into the weights at conversion (D16);
* Hippocampus: T = 2, 5 samples, 32 x 32 windows with overlap 0.75 over each axial slice, scored per volume.
  The authors re-orient the volumes to LPI before slicing; MSD Task04 is stored RAS, so each slice is turned
  by 180 degrees (both in-plane axes flipped) before the generator and the prediction turned back.

Everything else is this book's protocol: our loaders and split (a seeded split, decision D15, so "test" is
not the authors' test set: their MoNuSeg test images may be in any of our splits, and the authors chose
the checkpoint on their test set), our metrics, and the same JSON as any run (:func:`diffseg_core.evaluate.
result_row`). The discriminator is not used at inference (Algorithm 2 needs G only).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .cdal.method import CDALMethod
from .cdal.official import OfficialCDAL, load_official_generator, official_cdal_config, official_spec
from .config import RunConfig
from .data import SegDataset
from .data.download import file_digest
from .device import describe_device, pick_device
from .evaluate import describe_protocol, evaluate_cases, result_row
from .methods import get_config

__all__ = ["OfficialCDALMethod", "official_run_config", "build_official_method", "evaluate_official"]

#: in-plane flips that turn our stored orientation into the one the authors' model was trained on
_FLIP_SLICES = {"hippocampus": True, "hippocampus-train": True}


class OfficialCDALMethod(CDALMethod):
    """:class:`~diffseg_core.cdal.method.CDALMethod` holding the authors' generator (``self.nets['G']``).

    ``flip_slices``: turn each input by 180 degrees before Algorithm 2 and the probabilities back (the
    Hippocampus RAS -> LPI re-orientation of the authors' pipeline).
    """

    flip_slices: bool = False

    @torch.no_grad()
    def predict(self, image: torch.Tensor, text: Sequence[str] | None = None) -> torch.Tensor:
        if not self.flip_slices:
            return super().predict(image, text)
        return super().predict(image.flip(-2, -1), text).flip(-2, -1)


def official_run_config(name: str, seed: int = 0, preset: str = "paper", ensemble: int | None = None) -> RunConfig:
    """The run configuration that evaluates the official ``name`` checkpoint: our ``paper`` cDAL networks with
    the official T and ensemble, and the dataset's data preset (``paper``: the official sizes and tiling; a
    smaller preset only for tests). ``ensemble`` overrides the official ensemble size."""
    spec = official_spec(name)
    model = asdict(official_cdal_config(name))
    if ensemble is not None:
        model.update(ensemble=ensemble, val_ensemble=ensemble)
    keep = ("timesteps", "ensemble", "val_ensemble", "num_res_blocks")
    return get_config("cdal", spec.dataset, preset, seed=seed, **{k: model[k] for k in keep})


def build_official_method(name: str, weights: str | Path | Mapping[str, torch.Tensor], dataset: SegDataset,
                          cfg: RunConfig | None = None,
                          device: torch.device | None = None) -> OfficialCDALMethod:
    """An :class:`OfficialCDALMethod` for ``dataset`` whose generator holds the official ``weights`` (a file or a
    loaded state_dict)."""
    spec = official_spec(name)
    cfg = cfg or official_run_config(name)
    info = dataset.info()
    if info.name not in (spec.dataset, "synthetic"):
        raise ValueError(f"official {name} weights are for {spec.dataset}, the dataset is {info.name}")
    device = device or pick_device()
    method = OfficialCDALMethod(cfg, info, device)
    G = load_official_generator(weights, name)
    have, want = (method.nets["G"].label_channels, method.nets["G"].image_channels), (G.label_channels, G.image_channels)
    if have != want:
        raise ValueError(f"official {name} weights expect (label, image) channels {want}; dataset {info.name} "
                         f"gives {have}")
    method.nets["G"] = G.to(device).eval()
    method.n_ensemble = method.model_cfg.ensemble
    method.flip_slices = _FLIP_SLICES.get(name, False)
    return method


def _protocol(spec: OfficialCDAL, cfg: RunConfig, split: str, n: int, weights: Path, volumes: bool) -> str:
    base = describe_protocol(cfg, split, n, f"the authors' released generator {weights.name} (chosen by the "
                                           f"authors on their own test set)", volumes)
    flip = " Slices turned 180 degrees for the authors' LPI orientation." if _FLIP_SLICES.get(spec.name) else ""
    return (f"{base} Official {spec.config_source} configuration: Algorithm 2 with T = {cfg.model['timesteps']}, "
            f"{cfg.model['ensemble']} samples averaged then thresholded.{flip}")


def evaluate_official(name: str, weights: str | Path, dataset: SegDataset, split: str = "test", seed: int = 0,
                      preset: str = "paper", ensemble: int | None = None, progress: bool = False,
                      device: torch.device | None = None, checksum: bool = True) -> dict[str, Any]:
    """Score the official ``name`` generator file on ``dataset`` (``split``; ``"all"`` for every case).

    Returns the same dictionary the CLI's ``evaluate`` writes (the scores of
    :func:`~diffseg_core.evaluate.evaluate_cases`, ``row`` from :func:`~diffseg_core.evaluate.result_row`,
    the device), plus ``official``: the configuration, the file and its SHA-256, and the paper's number.
    """
    spec = official_spec(name)
    weights = Path(weights)
    cfg = official_run_config(name, seed=seed, preset=preset, ensemble=ensemble)
    cases = dataset.cases if split == "all" else dataset.split(split)
    if not cases:
        raise ValueError(f"split {split!r} of {dataset.root or dataset.name} is empty; use split 'all' for a "
                         "folder without a split column")
    method = build_official_method(name, weights, dataset, cfg, device)
    volumes = "volume" in cases[0].meta
    scores = evaluate_cases(method, cases, progress=progress)
    scores["protocol"] = _protocol(spec, cfg, split, scores["n_images"], weights, volumes)
    model = f"cDAL, authors' weights ({weights.name})"
    result: dict[str, Any] = {
        "method": "cdal", "dataset": dataset.name, "preset": cfg.preset, "split": split,
        "data": str(dataset.root) if dataset.root else "synthetic", "data_source": dataset.source, **scores,
        "device": describe_device(method.device), "run": None, "train_seconds": None, "steps_done": None,
        "official": {"name": spec.name, "config_source": spec.config_source, "weights": str(weights),
                     "sha256": file_digest(weights, "sha256") if checksum else None,
                     "timesteps": cfg.model["timesteps"], "ensemble": cfg.model["ensemble"], "ema": spec.ema,
                     "label_sign": spec.label_sign, "paper": spec.paper},
    }
    result["row"] = result_row(model, scores, dataset.source)
    return result
