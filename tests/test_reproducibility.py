"""Reproducibility: same seed -> same weights and metrics; every run records its environment; evaluate scores
every image (a subset only with --limit, recorded) and warns when the package versions changed."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from diffseg_core.checkpoint import load_checkpoint
from diffseg_core.cli import main
from diffseg_core.config import ConfigError, RunConfig, override
from diffseg_core.data import load_dataset
from diffseg_core.evaluate import evaluate_cases
from diffseg_core.methods import get_config
from diffseg_core.train import run_training


def _tensors(obj, prefix=""):
    """Every tensor in a nested checkpoint payload, by dotted key."""
    out = {}
    if torch.is_tensor(obj):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}.{i}"))
    return out


@pytest.mark.parametrize("method", ["unet", "cdal", "textdiff"])
def test_same_seed_gives_identical_checkpoints_and_metrics(method, tmp_path):
    cfg = override(get_config(method, "synthetic", "smoke", seed=3),
                   **{"train.max_minutes": None, "train.steps": 4, "train.val_every": 2})
    runs = []
    for name in ("a", "b"):
        ds = load_dataset("synthetic", None, cfg.data, seed=cfg.seed)
        m, history = run_training(cfg, ds, run_dir=tmp_path / name, progress=False, verbose=False)
        scores = evaluate_cases(m, ds.split("test")[:1])  # the full-ensemble prediction on one test image
        runs.append((history, scores))
    (ha, sa), (hb, sb) = runs
    assert [s["loss"] if "loss" in s else s["mse"] for s in ha.steps] == \
           [s["loss"] if "loss" in s else s["mse"] for s in hb.steps]
    assert [{k: v for k, v in s.items() if k != "seconds"} for s in ha.steps] == \
           [{k: v for k, v in s.items() if k != "seconds"} for s in hb.steps]
    assert [v["dice"] for v in ha.val] == [v["dice"] for v in hb.val] and ha.best_step == hb.best_step
    assert sa["per_image_dice"] == sb["per_image_dice"] and sa["dice_mean"] == sb["dice_mean"]
    files = ["last.pt", "best.pt"] + (["backbone.pt"] if method == "textdiff" else [])
    for f in files:
        ta, tb = _tensors(load_checkpoint(tmp_path / "a" / f)), _tensors(load_checkpoint(tmp_path / "b" / f))
        assert ta.keys() == tb.keys() and len(ta) > 0, f
        different = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert not different, f"{f}: tensors differ between two runs with the same seed: {different[:5]}"


def test_run_folder_records_versions_commit_device_seed_and_config(tmp_path):
    cfg = override(get_config("unet", "synthetic", "smoke", seed=5), **{"train.steps": 1, "train.max_minutes": None})
    run_training(cfg, load_dataset("synthetic", None, cfg.data, seed=5), run_dir=tmp_path, progress=False, verbose=False)
    env = json.loads((tmp_path / "environment.json").read_text())
    assert {"python", "torch", "monai", "numpy", "diffseg"} <= set(env["versions"])
    assert env["versions"]["torch"] == torch.__version__.split("+")[0] or env["versions"]["torch"] == torch.__version__
    assert "git_commit" in env and (env["git_commit"] is None or len(env["git_commit"].split("+")[0]) == 40)
    assert env["seed"] == 5 and env["device"] and "rerun" in env["determinism"]
    saved = RunConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert saved.to_dict() == json.loads(json.dumps(cfg.to_dict())), "the full config (JSON turns tuples into lists)"
    assert json.loads((tmp_path / "run.json").read_text())["environment"]["versions"] == env["versions"]


def test_config_with_unknown_keys_is_refused():
    d = get_config("unet", "synthetic", "smoke").to_dict()
    assert RunConfig.from_dict(d).to_dict() == d
    for where, key in ((d, "future_option"), (d["data"], "tile_cache"), (d["train"], "ema")):
        where[key] = 1
        with pytest.raises(ConfigError, match=f"unknown setting.*{key}.*newer version"):
            RunConfig.from_dict(d)
        del where[key]


# ---------------------------------------------------------------------------------------------------
# evaluate: every image, an explicit --limit, version warnings
# ---------------------------------------------------------------------------------------------------
def _monuseg_folder(root, n):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / "images" / f"c{i}.png")
        m = np.zeros((24, 24), np.uint8)
        m[4:12, 3 + i % 5:12 + i % 5] = 255
        Image.fromarray(m).save(root / "masks" / f"c{i}.png")
    pd.DataFrame({"id": [f"c{i}" for i in range(n)], "text": ["dense"] * n}).to_csv(root / "text.csv", index=False)
    return root


@pytest.fixture(scope="module")
def monuseg_run(tmp_path_factory):
    """A smoke U-Net run on a 9-image MoNuSeg folder (smoke caps: 2 training and 1 val / test image)."""
    base = tmp_path_factory.mktemp("evalrun")
    data = _monuseg_folder(base / "DATA", 9)
    assert main(["train", "--method", "unet", "--dataset", "monuseg", "--data", str(data), "--preset", "smoke",
                 "--steps", "1", "--out", str(base / "RUN"), "--no-progress"]) == 0
    return base


def test_evaluate_scores_every_image_not_the_training_caps(monuseg_run, tmp_path):
    run, data = monuseg_run / "RUN", monuseg_run / "DATA"
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--split", "all", "--json", str(tmp_path / "a.json")]) == 0
    res = json.loads((tmp_path / "a.json").read_text())
    assert res["n_images"] == 9 and res["n_available"] == 9 and res["limit"] is None
    assert "all split, 9 images;" in res["protocol"]
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--split", "all", "--limit", "4",
                 "--json", str(tmp_path / "b.json")]) == 0
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["n_images"] == 4 and res["n_available"] == 9 and res["limit"] == 4
    assert "the first 4 of 9 images (--limit 4)" in res["protocol"] and res["row"]["protocol"] == res["protocol"]
    assert res["ids"] == sorted(res["ids"])[:4] == ["c0", "c1", "c2", "c3"]


def test_evaluate_warns_when_versions_differ(monuseg_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "RUN"
    shutil.copytree(monuseg_run / "RUN", run)
    env = json.loads((run / "environment.json").read_text())
    env["versions"]["torch"] = "1.0.0"
    (run / "environment.json").write_text(json.dumps(env))
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(monuseg_run / "DATA"), "--split", "test", "--json",
                 str(tmp_path / "t.json")]) == 0
    err = capsys.readouterr().err
    assert f"warning: {run} was trained with torch 1.0.0; this evaluation runs with torch " in err
    res = json.loads((tmp_path / "t.json").read_text())
    assert res["version_changes"]["torch"]["trained"] == "1.0.0" and res["environment"]["versions"]["torch"]


def test_capped_hippocampus_load_keeps_each_volume_in_its_full_split(tmp_path):
    """Training caps volumes (smoke); evaluation loads all of them: a kept volume's split must not change."""
    import nibabel as nib

    from diffseg_core.data.hippocampus import load_hippocampus

    for i in range(1, 11):
        lab = np.zeros((12, 12, 4), np.uint8)
        lab[3:6, 3:6, 1:3] = 1
        for sub, arr in (("images", np.random.default_rng(i).random((12, 12, 4)).astype(np.float32)), ("labels", lab)):
            (tmp_path / sub).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / sub / f"hippocampus_{i:03d}.nii.gz"))
    for seed in range(3):
        full = {c.meta["volume"]: c.split for c in load_hippocampus(tmp_path, seed=seed).cases}
        capped = {c.meta["volume"]: c.split for c in load_hippocampus(tmp_path, max_volumes=4, seed=seed).cases}
        assert len(capped) == 4 and {capped[v] for v in capped} == {"train", "val", "test"}
        assert all(full[v] == s for v, s in capped.items())
