"""The main job on the smoke preset: every notebook through papermill, a manifest, the HTML book with -W."""
from __future__ import annotations

import json

import pytest

from conftest import REPO
from diffseg_core.book import run_main_job, toc_files


@pytest.mark.notebook
def test_main_job_builds_the_book_on_smoke(tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFSEG_DATA", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    assert run_main_job(preset="smoke", data_root="", out=tmp_path) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["preset"] == "smoke" and manifest["git_sha"]
    assert {"torch", "monai", "jupyter-book"} <= set(manifest["versions"])
    assert all(e["status"] == "ok" for e in manifest["notebooks"])
    html = tmp_path / "src" / "_build" / "html"
    for page in toc_files(REPO / "_toc.yml"):
        assert (html / f"{page}.html").is_file(), page
    # figures were really produced: the baseline chapter embeds images
    page = (html / "notebooks" / "02_unet_baseline.html").read_text()
    assert "<img" in page, "the executed baseline chapter should show figures"
