"""The TextDiff benchmark script runs (tiny mode) and reports every figure of its table."""
from __future__ import annotations

import math

from conftest import load_benchmark


def test_benchmark_tiny_mode_runs(capsys):
    rows = load_benchmark("textdiff.py").main(["--tiny"])
    out = capsys.readouterr().out
    assert len(rows) == 1 and rows[0]["preset"] == "smoke"
    row = rows[0]
    for key in ("ddpm_s_per_step", "extract_s_per_image", "extract_batched_s_per_image", "train_s_per_step",
                "predict_s_per_image", "predict_unseen_s_per_image", "feature_mb_per_image", "stream_s_per_image",
                "peak_rss_mb"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    # streamed features: the memory they hold stays at the cache's bound (2 images), the rest is on disk
    assert row["stream_mb_in_memory"] <= 2 * row["feature_mb_per_image"] + 1e-6
    assert row["stream_mb_on_disk"] >= (row["stream_images"] - 2) * row["feature_mb_per_image"] * 0.99
    assert row["images_per_pass"] >= 1 and "predict_unseen_s_per_image" in out
    assert "extract_s_per_image" in out and "projected whole 5-image MoNuSeg run" in out
