"""The chest X-ray lesion target: the loader option, its run config and protocol, the synthetic stand-in,
TextDiff's QaTa settings on ``cxr``, and ``train --target lesion`` -> ``evaluate`` from the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_dataset
from diffseg_core.cli import main
from diffseg_core.config import DataConfig, RunConfig, data_config
from diffseg_core.data import DataError, load_dataset
from diffseg_core.data.cxr import load_cxr
from diffseg_core.data.reports import NO_INFECTION, parse_report
from diffseg_core.evaluate import describe_protocol
from diffseg_core.methods import get_config


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def _tiny_cxr(root: Path, n: int = 6, lesion_for=lambda i: i % 2 == 1) -> None:
    """``n`` 40 x 40 images with two lungs; odd cases get a lesion in the image's right lung (patient's left)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        _png(root / "images" / f"c{i}.png", rng.integers(0, 256, (40, 40)))
        lung = np.zeros((40, 40))
        lung[5:35, 3:17] = 255
        lung[5:35, 23:37] = 255
        _png(root / "masks" / f"c{i}.png", lung)
        lesion = np.zeros((40, 40))
        if lesion_for(i):
            lesion[6:12, 25:33] = 255
        _png(root / "lesion_masks" / f"c{i}.png", lesion)


def test_lesion_target_reads_lesion_masks_with_generated_reports_and_empty_negatives(tmp_path):
    root = tmp_path / "cxr_lung"
    _tiny_cxr(root)
    ds = load_cxr(root, working_size=20, target="lesion")
    assert ds.has_text and ds.class_names == ("background", "lesion") and len(ds) == 6
    assert "generated" in ds.description
    for i, c in enumerate(sorted(ds.cases, key=lambda c: c.id)):
        assert c.image.shape == (1, 20, 20) and c.meta["lung"].shape == (20, 20)
        assert c.meta["text_source"] == "generated"
        if i % 2:
            assert c.label.any() and c.text == "Unilateral pulmonary infection, one infected area, upper left lung."
        else:  # an all-empty mask is a valid negative case
            assert not c.label.any() and c.text == NO_INFECTION
    lung = load_cxr(root, working_size=20)
    assert not lung.has_text and all(c.text == "" for c in lung.cases) and lung.class_names[1] == "lung"
    assert {c.id: c.split for c in lung.cases} == {c.id: c.split for c in ds.cases}


def test_lesion_target_needs_the_lung_masks_and_names_what_is_missing(tmp_path):
    root = tmp_path / "cxr_lung"
    _tiny_cxr(root)
    (root / "masks" / "c3.png").unlink()
    with pytest.raises(DataError, match=r"c3.png: no lung mask found"):
        load_cxr(root, target="lesion")
    _png(root / "masks" / "c3.png", np.zeros((40, 40)))
    with pytest.raises(DataError, match=r"c3.png: the lung mask is empty"):
        load_cxr(root, working_size=None, target="lesion")
    with pytest.raises(DataError, match="target must be 'lung' or 'lesion'"):
        load_cxr(root, target="infection")


def test_data_config_carries_the_target_to_the_loader(tmp_path):
    root = tmp_path / "cxr_lung"
    _tiny_cxr(root)
    assert get_config("unet", "cxr", "cpu").data.target == "lung"  # the default, recorded in the run config
    assert get_config("unet", "monuseg", "cpu").data.target is None and data_config("cxr", "cpu").target is None
    ds = load_dataset("cxr", root, DataConfig(working_size=16, target="lesion"))
    assert ds.class_names[1] == "lesion" and ds.has_text
    assert load_dataset("cxr", root, DataConfig(working_size=16)).class_names[1] == "lung"  # default: lung
    with pytest.raises(DataError, match="target 'lesion' is not available.*one target only"):
        load_dataset("qata", root, DataConfig(target="lesion"))
    with pytest.raises(DataError, match="choose one of lung, lesion"):
        load_dataset("cxr", root, DataConfig(target="heart"))
    cfg = get_config("unet", "cxr", "smoke")
    assert cfg.data.target == "lung"
    assert RunConfig.from_dict(cfg.to_dict()).data.target == "lung"  # saved with every run
    assert RunConfig.from_dict({"method": "unet", "dataset": "cxr", "preset": "smoke", "data": {}}).data.target is None


def test_protocol_sentence_names_the_target():
    cfg = get_config("unet", "cxr", "smoke")
    assert "on cxr (lung target, resized" in describe_protocol(cfg, "test", 3, "best.pt")
    cfg.data.target = "lesion"
    assert "on cxr (lesion target, resized" in describe_protocol(cfg, "test", 3, "best.pt")
    assert "on monuseg (" in describe_protocol(get_config("unet", "monuseg", "smoke"), "test", 3, "best.pt")


def test_synthetic_lesion_stand_in_is_deterministic_and_its_reports_are_true():
    cfg = DataConfig(working_size=48, synthetic_cases=12, synthetic_size=64, target="lesion")
    a, b = load_dataset("synthetic", None, cfg, seed=3), load_dataset("synthetic", None, cfg, seed=3)
    assert a.is_synthetic and a.has_text and a.class_names == ("background", "lesion")
    assert [c.text for c in a.cases] == [c.text for c in b.cases]
    assert all(np.array_equal(c.image, d.image) for c, d in zip(a.cases, b.cases))
    sides = 0
    for c in a.cases:
        f = parse_report(c.text)
        assert (f.n_areas == 0) == (not c.label.any()) or c.label.sum() < 30  # specks are not areas
        assert c.meta["lung"].shape == c.label.shape and not (c.label.astype(bool) & ~c.meta["lung"].astype(bool)).any()
        sides += f.laterality != "none"
    assert sides >= 6  # most cases have opacities
    assert {c.split for c in a.cases} == {"train", "val", "test"}


def test_textdiff_takes_qata_settings_on_cxr_and_keeps_monuseg_unchanged():
    mon = get_config("textdiff", "monuseg", "paper").model
    assert mon["block_fractions"] == (1 / 8, 1 / 4, 1 / 2, 1.0) and mon["train_images"] == 5 and mon["augment"]
    paper = get_config("textdiff", "cxr", "paper")
    assert paper.model["block_fractions"] == (1 / 16, 1 / 8, 1 / 4, 1 / 2)  # QaTa's blocks {4, 6, 8, 12}
    assert paper.model["train_images"] == 150 and paper.model["image_size"] == 256
    assert paper.model["timesteps"] == (50, 150, 250) and paper.model["max_length"] == 10
    for preset in ("smoke", "cpu", "gpu", "paper"):
        m = get_config("textdiff", "cxr", preset).model
        assert not m["augment"], "no mirror/rotation of chest X-rays whose reports name sides and zones"
        if preset != "smoke":
            assert max(m["block_fractions"]) == 1 / 2  # QaTa's blocks stop at half resolution
    cpu = get_config("textdiff", "cxr", "cpu")
    assert cpu.model["image_size"] == 128 and cpu.data.working_size == 128
    assert cpu.model["train_images"] >= 29, "all of the shared subset's training split (26-29 images by seed)"
    assert get_config("textdiff", "cxr", "gpu").model["image_size"] == 256


def test_cli_target_offline_and_a_clear_error_without_lesion_masks(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--method", "unet", "--dataset", "synthetic", "--preset", "smoke", "--target", "lesion",
                 "--out", str(run), "--no-progress"]) == 0  # offline: the synthetic lesion stand-in
    assert json.loads((run / "config.json").read_text())["data"]["target"] == "lesion"
    assert json.loads((run / "run.json").read_text())["train_ids"][0].startswith("synth_lesion_")
    root = tmp_path / "cxr_lung"
    _tiny_cxr(root)
    (root / "lesion_masks").rename(tmp_path / "elsewhere")
    assert main(["train", "--method", "unet", "--dataset", "cxr", "--data", str(root), "--preset", "smoke",
                 "--target", "lesion", "--out", str(tmp_path / "r2"), "--no-progress"]) == 2
    assert "lesion_masks" in capsys.readouterr().err


@pytest.mark.realdata
def test_cli_trains_and_evaluates_textdiff_on_the_lesion_target(tmp_path):
    root = shared_dataset("cxr_lung")
    run = tmp_path / "run"
    assert main(["train", "--method", "textdiff", "--dataset", "cxr", "--target", "lesion", "--data", str(root),
                 "--preset", "smoke", "--out", str(run), "--no-progress"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["target"] == "lesion"
    texts = json.loads((run / "run.json").read_text())["method_info"]["train_text"]
    assert all(parse_report(t) is not None for t in texts.values())  # generated reports reached the model
    out = tmp_path / "test.json"
    assert main(["evaluate", "--run", str(run), "--data", str(root), "--split", "test", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["dataset"] == "cxr" and "lesion target" in res["protocol"] and 0 <= res["dice_mean"] <= 1


def test_cli_lesion_run_scores_negative_cases_as_the_metric_defines(tmp_path):
    """Train and evaluate from the CLI on a folder where half the lesion masks are empty; every per-image Dice
    equals the hand formula (an empty mask scores 1 when nothing is predicted, 0 otherwise)."""
    from diffseg_core.evaluate import evaluate_cases
    from diffseg_core.train import load_run

    root = tmp_path / "cxr_lung"
    _tiny_cxr(root)
    run = tmp_path / "run"
    assert main(["train", "--method", "unet", "--dataset", "cxr", "--data", str(root), "--preset", "smoke",
                 "--target", "lesion", "--steps", "2", "--out", str(run), "--no-progress"]) == 0
    saved = json.loads((run / "config.json").read_text())["data"]
    assert saved["target"] == "lesion"
    out = tmp_path / "all.json"
    assert main(["evaluate", "--run", str(run), "--data", str(root), "--split", "all", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n_images"] == 6 and "cxr (lesion target, resized" in res["protocol"]
    cfg = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    ds = load_dataset("cxr", root, cfg.data)  # evaluate reads the target back from the run config
    assert ds.class_names[1] == "lesion" and sum(not c.label.any() for c in ds.cases) == 3
    method, _, _ = load_run(run, ds)
    scores = evaluate_cases(method, ds.cases, keep_predictions=True)
    assert scores["per_image_dice"] == pytest.approx(res["per_image_dice"])
    for cid, dice in zip(scores["ids"], scores["per_image_dice"]):
        pred, gt = scores["predictions"][cid].astype(bool), next(c for c in ds.cases if c.id == cid).label.astype(bool)
        expected = (1.0 if not pred.any() else 0.0) if not gt.any() else \
            2 * (pred & gt).sum() / (pred.sum() + gt.sum())
        assert dice == pytest.approx(expected), (cid, gt.any())


def test_train_refuses_target_for_datasets_without_a_choice_before_writing(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--method", "unet", "--dataset", "monuseg", "--preset", "smoke", "--target", "lesion",
                 "--out", str(run), "--no-progress"]) == 2
    assert "only --dataset cxr offers a choice of target" in capsys.readouterr().err and not run.exists()
    assert main(["train", "--method", "unet", "--dataset", "cxr", "--preset", "smoke", "--target", "heart",
                 "--out", str(run), "--no-progress"]) == 2
    assert "invalid choice: 'heart'" in capsys.readouterr().err and not run.exists()


def test_text_tokens_flag_reaches_the_run_config_and_the_text_encoder(tmp_path, capsys):
    """--text-tokens sets max_length: saved with the run, used by the encoder that trains and that evaluates."""
    from diffseg_core.train import load_run

    run = tmp_path / "run"
    assert main(["train", "--method", "textdiff", "--dataset", "synthetic", "--target", "lesion", "--preset", "smoke",
                 "--steps", "1", "--text-tokens", "24", "--out", str(run), "--no-progress"]) == 0
    cfg = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert cfg.model["max_length"] == 24 and cfg.data.target == "lesion"
    assert get_config("textdiff", "synthetic", "smoke").model["max_length"] == 10  # the paper's, without the flag
    ds = load_dataset("synthetic", None, cfg.data, seed=cfg.seed)
    method, _, _ = load_run(run, ds)
    assert method.text_encoder.max_length == 24
    report = max((c.text for c in ds.cases), key=len)  # the longest generated report
    tokens, mask = method.text_encoder.encode([report])
    assert tokens.shape[:2] == (1, 24)
    assert int(mask.sum()) > 10, f"{report!r} fits in 10 word pieces; the flag would change nothing for it"
    assert main(["train", "--method", "textdiff", "--dataset", "synthetic", "--preset", "smoke", "--text-tokens", "1",
                 "--out", str(tmp_path / "r1"), "--no-progress"]) == 2
    assert "--text-tokens 1: must be at least 2" in capsys.readouterr().err and not (tmp_path / "r1").exists()
    assert main(["train", "--method", "unet", "--dataset", "synthetic", "--preset", "smoke", "--text-tokens", "24",
                 "--out", str(tmp_path / "r2"), "--no-progress"]) == 2
    assert "--text-tokens is a textdiff option" in capsys.readouterr().err
