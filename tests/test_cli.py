"""The CLI contract: train -> evaluate, JSON keys, other folders, clear errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, shared_dataset
from diffseg_core.cli import main

REQUIRED = {"method", "dataset", "preset", "n_images", "dice_mean", "iou_mean", "dice_global", "iou_global",
            "per_class", "seconds_per_image", "device", "protocol"}


def test_train_and_evaluate_synthetic(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--method", "unet", "--dataset", "synthetic", "--preset", "smoke", "--out", str(run),
                 "--no-progress"]) == 0
    out = tmp_path / "test.json"
    assert main(["evaluate", "--run", str(run), "--json", str(out), "--split", "test"]) == 0
    res = json.loads(out.read_text())
    assert REQUIRED <= set(res)
    assert res["method"] == "unet" and res["preset"] == "smoke" and 0 <= res["dice_mean"] <= 1
    assert "validation" in res["protocol"] and "test split" in res["protocol"]


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    """(tests/test_bad_input.py checks every refused input with its exact message; these are the classics.)"""
    assert main(["train", "--method", "unet", "--dataset", "monuseg", "--data", str(tmp_path / "nowhere"),
                 "--preset", "smoke", "--out", str(tmp_path / "r")]) == 2
    assert "no monuseg dataset found" in capsys.readouterr().err
    assert main(["train", "--method", "unet", "--dataset", "monuseg", "--data", "", "--preset", "smoke",
                 "--out", str(tmp_path / "r")]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "diffseg_core", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "evaluate" in out.stdout and "book" in out.stdout


@pytest.mark.realdata
def test_monuseg_train_evaluate_and_other_folder(tmp_path):
    root = shared_dataset("monuseg")
    run = tmp_path / "run"
    assert main(["train", "--method", "unet", "--dataset", "monuseg", "--data", str(root), "--preset", "smoke",
                 "--out", str(run), "--no-progress"]) == 0
    out = tmp_path / "test.json"
    assert main(["evaluate", "--run", str(run), "--data", str(root), "--split", "test", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert REQUIRED <= set(res) and res["dataset"] == "monuseg" and res["n_images"] >= 1
    # a folder in the same layout with other case ids and no split column: --split all
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    (other / "masks").mkdir()
    for src in sorted((root / "images").glob("*.png"))[:2]:
        (other / "images" / f"renamed_{src.name}").symlink_to(src)
        (other / "masks" / f"renamed_{src.name}").symlink_to(root / "masks" / src.name)
    out2 = tmp_path / "other.json"
    assert main(["evaluate", "--run", str(run), "--data", str(other), "--split", "all", "--json", str(out2)]) == 0
    res2 = json.loads(out2.read_text())
    assert res2["n_images"] == 2


def test_every_method_flag_sets_a_real_field_and_names_come_from_the_registries():
    """The CLI builds its flags and choices from the registries: nothing is kept by hand in two places."""
    import argparse
    from dataclasses import fields

    from diffseg_core.cli import _parser
    from diffseg_core.config import DATASETS, PRESETS
    from diffseg_core.methods import METHODS, get_method_class

    parser = _parser()
    train = next(a for a in parser._subparsers._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    by_dest = {a.dest: a for a in train._actions}
    assert tuple(by_dest["method"].choices) == METHODS
    assert tuple(by_dest["dataset"].choices) == DATASETS
    assert tuple(by_dest["preset"].choices) == (*PRESETS, "auto")
    seen = set()
    for name in METHODS:
        cls = get_method_class(name)
        known = {f.name: f for f in fields(cls.config_class)}
        for option in cls.cli_options:
            assert option.field in known, f"{name}: {option.flag} maps to {option.field!r}, not a field of {cls.config_class.__name__}"
            assert option.dest in by_dest and option.flag in by_dest[option.dest].option_strings
            assert option.flag not in seen, f"{option.flag} is declared by two methods"
            seen.add(option.flag)
            default = getattr(cls.config_class.for_preset("smoke", "synthetic"), option.field)
            if option.is_switch:  # a switch must change the default, or it would do nothing
                assert option.const != default, f"{option.flag} sets {option.field} to its default {default!r}"


def test_method_option_of_another_method_is_refused(tmp_path, capsys):
    rc = main(["train", "--method", "unet", "--dataset", "synthetic", "--preset", "smoke", "--out", str(tmp_path / "r"),
               "--no-latent", "--no-progress"])
    assert rc == 2 and "--no-latent is a cdal option" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
