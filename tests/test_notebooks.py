"""Every notebook: lint (one parameters cell, no outputs, no device literal, listed in _toc.yml), then nbval on smoke."""
from __future__ import annotations

import os
import subprocess
import sys

import nbformat
import pytest

from conftest import REPO
from diffseg_core.book import toc_files

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_lint(path):
    nb = nbformat.read(path, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name}: exactly one cell tagged 'parameters' (found {len(params)})"
    assert "PRESET" in params[0].source and "DATA_ROOT" in params[0].source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{path.name}: committed with outputs (strip them)"
            assert not cell.get("execution_count"), f"{path.name}: committed with execution counts"
        assert "cuda" not in cell.source.lower(), f"{path.name}: names a device; use diffseg_core.device.pick_device"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "colab.research.google.com" in nb.cells[0].source, f"{path.name}: Colab badge missing"
    assert f"notebooks/{path.stem}" in toc_files(REPO / "_toc.yml"), f"{path.name} is not listed in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter(path, caplog):
    """papermill (``--help-notebook``, the main job's injection) parses every assignment of the parameters cell:
    a second '=' on a line (e.g. in a comment) makes it skip that parameter with a warning."""
    from papermill.translators import PythonTranslator

    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    with caplog.at_level("WARNING", logger="papermill"):
        names = {p.name for p in PythonTranslator.inspect(cell)}
    assert not caplog.records, f"{path.name}: papermill cannot parse: {caplog.records[0].getMessage()}"
    assigned = {line.split("=")[0].strip() for line in cell.source.splitlines()
                if "=" in line and not line.lstrip().startswith(("#", " ")) and line.split("=")[0].strip().isidentifier()}
    assert assigned <= names, f"{path.name}: papermill does not see {sorted(assigned - names)}"


def test_every_toc_page_exists():
    for page in toc_files(REPO / "_toc.yml"):
        assert (REPO / f"{page}.ipynb").is_file() or (REPO / f"{page}.md").is_file(), f"_toc.yml lists missing {page}"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_under_nbval_on_smoke(path, tmp_path):
    """Runs the notebook with nbval (``--nbval-lax``: every cell must run; its asserts are the checks)."""
    env = dict(os.environ, DIFFSEG_PRESET="smoke", DIFFSEG_RESULTS_DIR=str(tmp_path), MPLBACKEND="Agg")
    env.pop("DIFFSEG_DATA", None)
    # "-n 0": one process (pyproject's addopts would otherwise start xdist workers for a single notebook)
    proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider", "-n", "0",
                           "--nbval-current-env", "--rootdir", str(tmp_path), str(path)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert proc.returncode == 0, f"{path.name} failed under nbval:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
