"""The results page: rows travel with the executed notebooks, the main job collects them and writes the page."""
from __future__ import annotations

import json
import shutil

import matplotlib

matplotlib.use("Agg")

import nbformat
import pytest
import yaml
from IPython.core.formatters import DisplayFormatter

from diffseg_core import book
from diffseg_core.evaluate import paper_row
from diffseg_core.plots import RESULTS_MIME, results_table
from diffseg_core.plots.results import plot_results_dice

from conftest import REPO

OURS = {"model": "cDAL (this run)", "data": "synthetic", "dice_mean": 0.71234, "iou_mean": 0.5612,
        "dice_global": 0.7301, "iou_global": 0.58, "n_images": 4,
        "protocol": "cdal on monuseg (resized to 256x256; sliding-window tiles of 64 px, overlap 0.25); test split, 4 images"}
PAPER = paper_row("cDAL (paper, Table 2)", 0.8294, 0.7096, "paper, 30 train / 14 test, 512 px; quoted from cDAL Table 2")
PERCENT = {"source": "paper (Tables 1-2)", "model": "TextDiff", "Dice (%)": 78.67, "IoU (%)": 64.98,
           "protocol": "paper: 256 px, ADM-256 + Bio_ClinicalBERT, 14 test images"}
QUANTITY = {"quantity": "signal sqrt(abar_T), T=4", "value": 0.1, "protocol": "computed"}


def _manifest(entries):
    return {"preset": "smoke", "device": "CPU (2 threads)", "seed": 0, "git_sha": "abc123", "started": "2026-11-29T05:00:00",
            "data_root": None, "notebooks": entries}


def test_a_displayed_results_table_carries_its_rows():
    data, _ = DisplayFormatter().format(results_table([OURS, PAPER]))
    assert "text/html" in data and 'class="protocol"' in data["text/html"]
    rows = data[RESULTS_MIME]["rows"]
    assert [r["model"] for r in rows] == ["cDAL (this run)", "cDAL (paper, Table 2)"]
    assert rows[0]["dice_mean"] == pytest.approx(0.7123) and rows[1]["dice_global"] is None  # NaN -> None
    json.dumps(data[RESULTS_MIME])  # JSON-safe, as nbformat stores it


def test_score_row_reads_fractions_percentages_and_paper_sources():
    ours, paper, pct = book.score_row(OURS), book.score_row(PAPER), book.score_row(PERCENT)
    assert not ours["paper"] and ours["dice"] == 0.71234 and ours["dice_pooled"] == 0.7301
    assert paper["paper"] and paper["dice"] == 0.8294 and paper["dice_pooled"] is None
    assert pct["paper"] and pct["dice"] == pytest.approx(0.7867) and pct["iou"] == pytest.approx(0.6498)
    assert book.score_row(QUANTITY) is None
    assert book.score_row({"features": "raw RGB pixels", "dice_mean": 0.5, "protocol": "p"})["model"] == "raw RGB pixels"


def test_results_page_from_a_fake_manifest(tmp_path):
    entries = [
        {"notebook": "02_unet.ipynb", "page": "notebooks/02_unet", "title": "02 A U-Net baseline", "status": "ok",
         "results_rows": [OURS, PAPER]},
        {"notebook": "03_q.ipynb", "page": "notebooks/03_q", "title": "03 Label diffusion", "status": "ok",
         "results_rows": [QUANTITY]},
        {"notebook": "00_setup.ipynb", "page": "notebooks/00_setup", "title": "00 Setup", "status": "ok", "results_rows": []},
        {"notebook": "12_td.ipynb", "page": "notebooks/12_td", "title": "12 TextDiff *training*", "status": "ok",
         "results_rows": [PERCENT]},
    ]
    template = tmp_path / "results.md"
    template.write_text("# Results\n\nHand-written top.\n\n" + book.RESULTS_MARKER + "\n\nplaceholder to be replaced\n")
    written = book.write_results_page(_manifest(entries), template, tmp_path / "src")
    page = tmp_path / "src" / "book" / "results.md"
    png = tmp_path / "src" / "book" / "_generated" / "results_dice.png"
    assert written == {page, png} and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert text.startswith("# Results\n\nHand-written top.") and "placeholder" not in text
    assert "Preset `smoke`" in text and "git `abc123`" in text and "synthetic stand-ins" in text
    assert "Chapters: 4; rows computed here: 1; rows quoted from the papers: 2." in text
    assert "```{figure} _generated/results_dice.png" in text and ":name: results-dice" in text
    # ours beside the paper in the chapter's table, each with its whole protocol
    assert "## 02 A U-Net baseline" in text and "{doc}`/notebooks/02_unet`" in text
    assert "<td>0.7123</td>" in text and "<td>0.8294</td>" in text and "paper, quoted" in text
    assert "this run (synthetic)" in text and OURS["protocol"] in text and PAPER["protocol"] in text
    assert "## 12 TextDiff \\*training\\*" in text and "<td>0.7867</td>" in text
    assert "None" not in text and "<td>\u2014</td>" in text  # what a source does not report shows as a dash
    # chapters without a scored row are named, with the reason
    silent = text.split("## Chapters without a scored row")[1]
    assert "{doc}`/notebooks/03_q`: its results tables hold other quantities, no Dice score (1 row(s))" in silent
    assert "{doc}`/notebooks/00_setup`: it shows no results table" in silent
    assert "02_unet" not in silent and "12_td" not in silent
    # written again from the same manifest: nothing changes on disk (incremental builds)
    mtime = page.stat().st_mtime_ns
    book.write_results_page(_manifest(entries), template, tmp_path / "src")
    assert page.stat().st_mtime_ns == mtime


def test_results_page_without_any_scored_row(tmp_path):
    template = tmp_path / "results.md"
    template.write_text("# Results\n\n" + book.RESULTS_MARKER + "\n")
    entries = [{"notebook": "00_setup.ipynb", "page": "notebooks/00_setup", "title": "00 Setup", "status": "ok"},
               {"notebook": "06_cdal.ipynb", "page": "notebooks/06_cdal", "title": "06 cDAL", "status": "error"}]
    written = book.write_results_page(_manifest(entries), template, tmp_path / "src")
    text = (tmp_path / "src" / "book" / "results.md").read_text()
    assert len(written) == 1 and "{figure}" not in text
    assert "No chapter produced a scored row in this run." in text
    assert "{doc}`/notebooks/06_cdal`: the chapter did not run to the end in this job" in text


def test_results_figure_draws_one_bar_per_row_in_two_colours():
    from matplotlib.colors import to_hex

    from diffseg_core.plots.results import OURS_COLOUR, PAPER_COLOUR

    groups = {"02": [book.score_row(OURS), book.score_row(PAPER)], "12": [book.score_row(PERCENT)]}
    fig = plot_results_dice(groups)
    ax = fig.axes[0]
    bars = ax.patches
    assert [round(b.get_width(), 4) for b in bars] == [0.7123, 0.8294, 0.7867]
    assert [to_hex(b.get_facecolor()) for b in bars] == [OURS_COLOUR, PAPER_COLOUR, PAPER_COLOUR]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cDAL (this run)", "cDAL (paper, Table 2)", "TextDiff"]
    assert ax.get_xlabel() == "Dice (per-image mean)" and {"02", "12"} <= {t.get_text() for t in ax.texts}
    with pytest.raises(ValueError):
        plot_results_dice({})
    with pytest.raises(ValueError):
        plot_results_dice({"x": [{"model": "m", "paper": False, "dice": 78.0}]})


def test_main_job_collects_rows_and_writes_the_page_on_every_run(tmp_path, monkeypatch):
    """The main job, with a stand-in executor, puts each chapter's rows in the manifest and writes the page."""
    from test_book import FakeExecutor, _job, _mini_repo

    root, out = _mini_repo(tmp_path / "repo"), tmp_path / "out"
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    toc["parts"].append({"caption": "Results", "chapters": [{"file": "book/results"}]})
    (root / "_toc.yml").write_text(yaml.safe_dump(toc))
    shutil.copy(REPO / "book" / "results.md", root / "book" / "results.md")
    nb_path = root / "notebooks" / "01_b.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    data, _ = DisplayFormatter().format(results_table([OURS, PAPER]))
    nb.cells[-1].outputs = [nbformat.v4.new_output("execute_result", data=data, execution_count=1)]
    nbformat.write(nb, nb_path)
    monkeypatch.setattr(book, "execute_notebook", FakeExecutor())
    assert _job(root, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    by_name = {e["notebook"]: e for e in manifest["notebooks"]}
    assert by_name["00_a.ipynb"]["results_rows"] == [] and by_name["00_a.ipynb"]["title"] == "00_a"
    assert [r["model"] for r in by_name["01_b.ipynb"]["results_rows"]] == ["cDAL (this run)", "cDAL (paper, Table 2)"]
    page = out / "src" / "book" / "results.md"
    assert "<td>0.7123</td>" in page.read_text() and (out / "src" / "book" / "_generated" / "results_dice.png").is_file()
    staged = nbformat.read(out / "src" / "notebooks" / "01_b.ipynb", as_version=4)
    assert RESULTS_MIME not in staged.cells[-1].outputs[0]["data"] and "text/html" in staged.cells[-1].outputs[0]["data"]
    # a second run (every chapter reused) writes the page again, from the reused chapters' rows
    page.unlink()
    assert _job(root, out) == 0
    assert "<td>0.7123</td>" in page.read_text()
