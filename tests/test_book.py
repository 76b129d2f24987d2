"""The main job: incremental execution (keys, reuse, --force, crash safety), staging for a static page, one
repository address, and the whole job on the smoke preset (papermill, manifest, the HTML book with -W)."""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import nbformat
import pytest
import yaml

import diffseg_core.book as book
from conftest import REPO
from diffseg_core.book import (REMOTE_BADGE, WIDGET_MIME, colab_url, data_digest, input_key, install_spec,
                               is_progress_output, repository, repository_links, run_main_job, stage_notebook,
                               toc_files, widget_cells_without_figure)

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


# ---------------------------------------------------------------------------------------------------
# One repository address
# ---------------------------------------------------------------------------------------------------
def test_one_repository_address_feeds_every_badge_and_install_cell():
    repo = repository(REPO / "_config.yml")
    assert repo["url"] == f"https://github.com/{repo['slug']}"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        links = repository_links(nb)
        name = f"notebooks/{path.name}"
        assert links["colab"], f"{path.name}: no Colab link"
        assert set(links["colab"]) == {colab_url(name, repo)}, (
            f"{path.name}: Colab links {sorted(set(links['colab']))} should be {colab_url(name, repo)} "
            "(repository.url and branch of _config.yml)")
        assert set(links["install"]) <= {install_spec(repo)}, (
            f"{path.name}: install cell {links['install']} should install {install_spec(repo)!r}")
    # the launch buttons are built by Jupyter Book from the same repository.url (no second address)
    cfg = yaml.safe_load((REPO / "_config.yml").read_text())
    assert "colab_url" in cfg["launch_buttons"] and "url" not in cfg["launch_buttons"]
    for doc in [REPO / "README.md", *sorted((REPO / "book").glob("*.md"))]:
        for spec in re.findall(r"diffseg @ git\+https://[^\s\"'`]+", doc.read_text()):
            assert spec == install_spec(repo), f"{doc.name}: {spec} disagrees with _config.yml"


def test_repository_must_be_a_github_address(tmp_path):
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://example.org/x\n")
    with pytest.raises(ValueError, match="repository.url"):
        repository(tmp_path / "_config.yml")


# ---------------------------------------------------------------------------------------------------
# Staging an executed notebook for a static page
# ---------------------------------------------------------------------------------------------------
def _executed_like_notebook() -> nbformat.NotebookNode:
    v4 = nbformat.v4
    cells = [
        v4.new_markdown_cell(f"# 99 Test\n\n[![Open In Colab]({REMOTE_BADGE})]"
                             "(https://colab.research.google.com/github/someone/else/blob/dev/notebooks/old.ipynb)"),
        v4.new_code_cell('import sys\nif "google.colab" in sys.modules:\n    %pip install -q "diffseg @ git+https://github.com/x/y"',
                         metadata={"tags": ["remove-cell"]}),
        v4.new_code_cell('PRESET = "auto"\nDATA_ROOT = ""', metadata={"tags": ["parameters"]}),
        v4.new_code_cell('# Parameters\nPRESET = "smoke"\n', metadata={"tags": ["injected-parameters"]}),
        v4.new_code_cell('ctx = setup_notebook("99", PRESET, DATA_ROOT)',
                         outputs=[v4.new_output("stream", name="stdout", text="diffseg | notebook 99\n")]),
        v4.new_code_cell("plot()", outputs=[
            v4.new_output("stream", name="stderr", text="100%|##########| 10/10 [00:01<00:00,  9.5it/s]\n"),
            v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="}),
            v4.new_output("display_data", data={WIDGET_MIME: {"model_id": "x"},
                                                "text/plain": "  0%|          | 0/6 [00:00<?, ?it/s]"}),
        ]),
        v4.new_code_cell("widgets.interact(f)", outputs=[
            v4.new_output("display_data", data={WIDGET_MIME: {"model_id": "y"}, "text/plain": "interactive(...)"})]),
        v4.new_code_cell("print('kept')", outputs=[v4.new_output("stream", name="stdout", text="kept\n")]),
    ]
    return v4.new_notebook(cells=cells, metadata={"widgets": {"application/vnd.jupyter.widget-state+json": {}}})


def test_stage_notebook_hides_plumbing_widgets_and_progress_bars():
    nb = _executed_like_notebook()
    repo = {"url": "https://github.com/owner/repo", "branch": "main", "slug": "owner/repo"}
    staged = stage_notebook(nb, "notebooks/99_test.ipynb", repo, badge="../book/_static/colab-badge.svg")
    tags = [c.metadata.get("tags", []) for c in staged.cells]
    assert "remove-cell" in tags[1] and "remove-cell" in tags[3]  # Colab install, injected parameters
    assert "hide-cell" in tags[2] and "hide-input" in tags[4]  # parameters folded, set-up shows its output
    assert "remove-cell" in tags[6] and not tags[7]  # the live widget goes; ordinary cells stay
    kinds = [list(o.get("data", {})) or o["name"] for o in staged.cells[5].outputs]
    assert kinds == [["image/png"]], kinds  # the progress bar and the tqdm widget are gone, the figure stays
    md = staged.cells[0].source
    assert REMOTE_BADGE not in md and "../book/_static/colab-badge.svg" in md
    assert "https://colab.research.google.com/github/owner/repo/blob/main/notebooks/99_test.ipynb" in md
    assert "diffseg @ git+https://github.com/owner/repo" in staged.cells[1].source
    assert "widgets" not in staged.metadata, "saved widget state would load the widget manager from a CDN"
    assert nb.cells[3].metadata["tags"] == ["injected-parameters"], "the executed notebook itself is untouched"


def test_progress_outputs_and_widget_order():
    v4 = nbformat.v4
    assert is_progress_output(v4.new_output("stream", name="stderr", text="epoch 3:  40%|####      | 4/10\r"))
    assert not is_progress_output(v4.new_output("stream", name="stdout", text="Dice 0.81 (40% of pixels)\n"))
    slider = v4.new_output("display_data", data={WIDGET_MIME: {}, "text/plain": "interactive(children=(IntSlider("})
    assert not is_progress_output(slider)
    nb = v4.new_notebook(cells=[
        v4.new_code_cell("interact()", outputs=[v4.new_output("display_data", data={WIDGET_MIME: {}})]),
        v4.new_code_cell("fig", outputs=[v4.new_output("display_data", data={"image/png": ""})]),
        v4.new_code_cell("interact()", outputs=[v4.new_output("display_data", data={WIDGET_MIME: {}})]),
    ])
    assert widget_cells_without_figure(nb) == [0]


# ---------------------------------------------------------------------------------------------------
# Incremental execution, with a stand-in executor (no kernel) so that the logic is tested in milliseconds
# ---------------------------------------------------------------------------------------------------
def _mini_repo(root: Path, names=("00_a", "01_b")) -> Path:
    (root / "book").mkdir(parents=True)
    (root / "notebooks").mkdir()
    (root / "diffseg_core").mkdir()
    (root / "diffseg_core" / "core.py").write_text("X = 1\n")
    (root / "book" / "intro.md").write_text("# Intro\n")
    (root / "_config.yml").write_text("title: t\nrepository:\n  url: https://github.com/o/r\n  branch: main\n")
    toc = {"format": "jb-book", "root": "book/intro",
           "parts": [{"caption": "P", "chapters": [{"file": f"notebooks/{n}"} for n in names]}]}
    (root / "_toc.yml").write_text(yaml.safe_dump(toc))
    for n in names:
        nb = nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_markdown_cell(f"# {n}"),
            nbformat.v4.new_code_cell('PRESET = "auto"\nDATA_ROOT = ""\nSEED = 0', metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell("x = 1 + 1\nassert x == 2")])
        nbformat.write(nb, root / "notebooks" / f"{n}.ipynb")
    return root


class FakeExecutor:
    """Stands in for papermill: copies the notebook to ``dst`` via ``NAME.partial.ipynb``; can fail or be 'interrupted'."""

    def __init__(self):
        self.calls: list[str] = []
        self.fail: set[str] = set()
        self.interrupt: set[str] = set()

    def __call__(self, src, dst, preset, data_root, results_dir, timeout=None, seed=0, heartbeat=None, threads=None,
                 cache_dir=None):
        self.calls.append(src.stem)
        self.threads = threads
        assert cache_dir == results_dir.parent / "cache", "every chapter gets the job's shared cache folder"
        partial = dst.with_name(dst.stem + ".partial.ipynb")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(src.read_text()[:40])  # half a notebook
        if src.stem in self.interrupt:
            raise KeyboardInterrupt
        if src.stem in self.fail:
            return {"notebook": src.name, "status": "error", "error": "boom", "seconds": 0.1, "peak_rss_mb": 10.0}
        shutil.copy(src, partial)
        partial.replace(dst)
        return {"notebook": src.name, "status": "ok", "seconds": 0.2, "peak_rss_mb": 123.0, "metrics": {"dice": 0.5}}


def _job(root, out, **kw):
    kw.setdefault("jobs", 1)
    return run_main_job(preset="smoke", data_root=kw.pop("data_root", ""), out=out, build=False, repo=root, **kw)


def test_second_run_reuses_and_changes_re_execute_only_what_they_touch(tmp_path, monkeypatch, capsys):
    root, out = _mini_repo(tmp_path / "repo"), tmp_path / "out"
    fake = FakeExecutor()
    monkeypatch.setattr(book, "execute_notebook", fake)
    assert _job(root, out) == 0 and fake.calls == ["00_a", "01_b"]
    first = json.loads((out / "manifest.json").read_text())
    assert [e["action"] for e in first["notebooks"]] == ["executed", "executed"]
    assert all(e["seconds"] == 0.2 and e["peak_rss_mb"] == 123.0 for e in first["notebooks"])
    assert first["memory_budget_mb"] == 6144 and first["within_memory_budget"]
    assert (out / "src" / "notebooks" / "00_a.ipynb").is_file(), "the staged copy the book is built from"

    fake.calls.clear()
    capsys.readouterr()
    assert _job(root, out) == 0 and fake.calls == []
    log = capsys.readouterr().out
    assert log.count("reused") >= 2 and "0 executed, 2 reused" in log
    second = json.loads((out / "manifest.json").read_text())
    assert [e["action"] for e in second["notebooks"]] == ["reused", "reused"]
    assert second["notebooks"][0]["seconds"] == 0.2 and second["notebooks"][0]["metrics"] == {"dice": 0.5}

    nb = nbformat.read(root / "notebooks" / "01_b.ipynb", as_version=4)  # the notebook itself
    nb.cells.append(nbformat.v4.new_code_cell("y = 3"))
    nbformat.write(nb, root / "notebooks" / "01_b.ipynb")
    fake.calls.clear()
    assert _job(root, out) == 0 and fake.calls == ["01_b"]
    assert "inputs changed: notebook" in capsys.readouterr().out

    (root / "diffseg_core" / "core.py").write_text("X = 2\n")  # the core's source: every chapter
    fake.calls.clear()
    assert _job(root, out) == 0 and fake.calls == ["00_a", "01_b"]

    fake.calls.clear()
    assert _job(root, out, seed=1) == 0 and fake.calls == ["00_a", "01_b"]  # the seed
    fake.calls.clear()
    assert _job(root, out, seed=1) == 0 and fake.calls == []
    assert _job(root, out, seed=1, force=True) == 0 and fake.calls == ["00_a", "01_b"]  # --force

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("1")
    fake.calls.clear()
    assert _job(root, out, seed=1, data_root=str(data)) == 0 and fake.calls == ["00_a", "01_b"]  # the data
    (data / "a.txt").write_text("2")
    fake.calls.clear()
    assert _job(root, out, seed=1, data_root=str(data)) == 0 and fake.calls == ["00_a", "01_b"]


def test_an_interrupted_or_failed_chapter_is_never_reused(tmp_path, monkeypatch):
    root, out = _mini_repo(tmp_path / "repo"), tmp_path / "out"
    fake = FakeExecutor()
    monkeypatch.setattr(book, "execute_notebook", fake)
    assert _job(root, out) == 0
    (root / "diffseg_core" / "core.py").write_text("X = 3\n")  # new inputs, then a crash mid-chapter
    fake.interrupt = {"01_b"}
    with pytest.raises(KeyboardInterrupt):
        _job(root, out)
    assert not (out / "state" / "01_b.json").exists(), "no stamp for a chapter that did not finish"
    fake.interrupt, fake.calls = set(), []
    assert _job(root, out) == 0 and fake.calls == ["01_b"], "the half-executed chapter runs again"

    fake.fail, fake.calls = {"00_a"}, []
    (root / "diffseg_core" / "core.py").write_text("X = 4\n")
    assert _job(root, out) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["notebooks"][0]["status"] == "error"
    fake.fail, fake.calls = set(), []
    assert _job(root, out) == 0 and fake.calls == ["00_a"]

    # an executed copy that does not match its stamp (truncated, edited by hand) is not trusted
    dst = out / "executed" / "notebooks" / "01_b.ipynb"
    dst.write_text(dst.read_text()[:50])
    fake.calls = []
    assert _job(root, out) == 0 and fake.calls == ["01_b"]


class SlowFake(FakeExecutor):
    """A stand-in that takes ``seconds[name]`` and records how many chapters ran at once."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds, self.running, self.most, self.lock = seconds, 0, 0, threading.Lock()
        self.started: list[str] = []
        self.active: set[str] = set()
        self.beside: dict[str, set[str]] = {}   # chapter -> the chapters that ran at some moment beside it
        self.threads_of: dict[str, int | None] = {}

    def __call__(self, src, dst, *args, **kw):
        with self.lock:
            self.started.append(src.stem)
            self.threads_of[src.stem] = kw.get("threads")
            self.running += 1
            self.most = max(self.most, self.running)
            self.beside[src.stem] = set(self.active)
            for other in self.active:
                self.beside.setdefault(other, set()).add(src.stem)
            self.active.add(src.stem)
        time.sleep(self.seconds[src.stem])
        with self.lock:
            self.running -= 1
            self.active.discard(src.stem)
        entry = super().__call__(src, dst, *args, **kw)
        return {**entry, "seconds": self.seconds[src.stem]}


def test_chapters_run_on_lanes_longest_first_and_the_book_keeps_its_order(tmp_path, monkeypatch, capsys):
    names = ("00_a", "01_b", "02_c", "03_d")
    root, out = _mini_repo(tmp_path / "repo", names), tmp_path / "out"
    fake = SlowFake({"00_a": 0.05, "01_b": 0.3, "02_c": 0.1, "03_d": 0.2})
    monkeypatch.setattr(book, "execute_notebook", fake)
    for name, seconds in (("00_a", 5), ("01_b", 20), ("02_c", 60), ("03_d", 10)):  # hints: the 2-core CPU figures
        nb = nbformat.read(root / "notebooks" / f"{name}.ipynb", as_version=4)
        nb.metadata["diffseg"] = {"seconds": {"smoke": seconds}}
        nbformat.write(nb, root / "notebooks" / f"{name}.ipynb")
    assert book.seconds_hint(root / "notebooks" / "02_c.ipynb", "smoke") == 60.0
    assert book.seconds_hint(root / "notebooks" / "02_c.ipynb", "gpu") is None
    assert _job(root, out, jobs=2) == 0
    assert set(fake.started[:2]) == {"02_c", "01_b"}, "a first run is ordered by the notebooks' hints"
    assert re.search(r"02_c +running .*expected ~1 min 00 s on a 2-core CPU", capsys.readouterr().out)
    assert fake.most == 2, "two chapters ran at once"
    assert fake.threads == max(1, (os.cpu_count() or 1) // 2), "each kernel gets its share of the cores"
    first = json.loads((out / "manifest.json").read_text())
    assert first["jobs"] == 2 and [e["notebook"] for e in first["notebooks"]] == [f"{n}.ipynb" for n in names]

    (root / "diffseg_core" / "core.py").write_text("X = 5\n")  # everything again: now the times are known
    fake.calls, fake.started, fake.fail = [], [], {"02_c"}
    assert _job(root, out, jobs=2) == 1, "a failed chapter fails the job"
    assert set(fake.started[:2]) == {"01_b", "03_d"}, "the longest chapters (by the last run) start first"
    assert sorted(fake.calls) == sorted(names), "a failure in one lane does not stop the others"
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["status"] for e in manifest["notebooks"]] == ["ok", "ok", "error", "ok"]
    with pytest.raises(ValueError, match="jobs must be 1 or more"):
        _job(root, out, jobs=0)

    # a chapter that measures speed runs with nothing beside it, on every core (no thread cap)
    nb = nbformat.read(root / "notebooks" / "03_d.ipynb", as_version=4)
    nb.metadata["diffseg"] = {"runs_alone": True}
    nbformat.write(nb, root / "notebooks" / "03_d.ipynb")
    assert book.runs_alone(root / "notebooks" / "03_d.ipynb") and not book.runs_alone(root / "notebooks" / "00_a.ipynb")
    (root / "diffseg_core" / "core.py").write_text("X = 6\n")
    fake.fail, fake.started, fake.beside, fake.threads_of = set(), [], {}, {}
    assert _job(root, out, jobs=2) == 0
    assert fake.beside["03_d"] == set() and fake.threads_of["03_d"] is None
    assert fake.started[-1] == "03_d" and fake.beside["01_b"] and fake.threads_of["01_b"] is not None
    assert re.search(r"03_d +runs alone", capsys.readouterr().out)


def test_auto_jobs_and_the_kernel_environment(tmp_path):
    assert book.auto_jobs("cpu", cores=2, memory_gb=24) == 2
    assert book.auto_jobs("cpu", cores=2, memory_gb=8) == 1, "one chapter per 7 GiB"
    assert book.auto_jobs("cpu", cores=64, memory_gb=512) == 4
    assert book.auto_jobs("cpu", cores=1, memory_gb=64) == 1
    assert book.auto_jobs("NVIDIA H200", cores=16, memory_gb=128) == 1, "chapters would share the accelerator"
    env = book.kernel_environment(tmp_path, threads=3, base={"PATH": "/bin"})
    assert env["OMP_NUM_THREADS"] == "3" and env["DIFFSEG_RESULTS_DIR"] == str(tmp_path) and env["PATH"] == "/bin"
    assert env["TQDM_DISABLE"] == "1"
    assert book.kernel_environment(tmp_path, threads=3, base={"OMP_NUM_THREADS": "7"})["OMP_NUM_THREADS"] == "7", \
        "a thread count the user set is kept"
    assert "OMP_NUM_THREADS" not in book.kernel_environment(tmp_path, base={})
    from diffseg_core.textdiff.pretrain import CACHE_ENV
    assert book.CACHE_ENV == CACHE_ENV
    assert book.kernel_environment(tmp_path, base={}, cache_dir=tmp_path / "c")[CACHE_ENV] == str(tmp_path / "c")
    assert book.kernel_environment(tmp_path, base={CACHE_ENV: "/mine"}, cache_dir=tmp_path)[CACHE_ENV] == "/mine", \
        "the user's own cache folder wins"
    assert CACHE_ENV not in book.kernel_environment(tmp_path, base={})


def test_kernel_waits_without_timeout_are_cut_into_slices(monkeypatch):
    """A wait with no timeout becomes 1-s polls until a message comes (a missed wake-up costs a slice, not the
    chapter); a wait with a timeout is passed through."""
    import asyncio
    from queue import Empty

    from jupyter_client.channels import AsyncZMQSocketChannel

    seen = []

    async def fake_get_msg(self, timeout=None):
        seen.append(timeout)
        if timeout is None:
            raise AssertionError("the sliced wait never waits without a timeout")
        if len(seen) < 3:
            raise Empty
        return {"msg": len(seen)}

    monkeypatch.setattr(AsyncZMQSocketChannel, "get_msg", fake_get_msg)
    book.sliced_kernel_waits(slice_s=0.25)
    book.sliced_kernel_waits(slice_s=0.25)  # idempotent: not wrapped twice
    assert asyncio.run(AsyncZMQSocketChannel.get_msg(None)) == {"msg": 3} and seen == [0.25, 0.25, 0.25]
    seen.clear()
    with pytest.raises(Empty):
        asyncio.run(AsyncZMQSocketChannel.get_msg(None, 5.0))
    assert seen == [5.0], "a wait with a timeout keeps it (and its Empty)"


def test_input_key_covers_its_parts(tmp_path):
    nb = tmp_path / "a.ipynb"
    nb.write_text("{}")
    base = dict(preset="cpu", seed=0, core="c", data="synthetic", device="cpu", versions={"torch": "2"})
    key, parts = input_key(nb, **base)
    assert set(parts) == {"notebook", "core", "preset", "data", "seed", "device", "versions"}
    for change in (dict(preset="gpu"), dict(seed=1), dict(core="d"), dict(data="x"), dict(device="gpu"),
                   dict(versions={"torch": "3"})):
        assert input_key(nb, **{**base, **change})[0] != key, change
    assert input_key(nb, **base)[0] == key


def test_data_digest_is_about_content_not_names_of_the_copy(tmp_path):
    assert data_digest("") == "synthetic"
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "imgs").mkdir(parents=True)
    (a / "imgs" / "1.png").write_bytes(b"x" * 100)
    (a / "big.bin").write_bytes(b"y" * 5000)
    shutil.copytree(a, b)
    assert data_digest(a) == data_digest(b)  # a copy keeps its key (modification times are ignored)
    assert data_digest(a, full_below=1000, edge=100) == data_digest(b, full_below=1000, edge=100)
    (b / "imgs" / "1.png").write_bytes(b"z" * 100)
    assert data_digest(a) != data_digest(b)
    (b / "imgs" / "1.png").write_bytes(b"x" * 100)
    (b / "imgs" / "2.png").write_bytes(b"")
    assert data_digest(a) != data_digest(b)


# ---------------------------------------------------------------------------------------------------
# One real execution: papermill writes to .partial, renames on success, measures the kernel's memory
# ---------------------------------------------------------------------------------------------------
@pytest.mark.notebook
def test_execute_notebook_writes_partial_then_renames(tmp_path, monkeypatch):
    v4 = nbformat.v4
    good = v4.new_notebook(cells=[v4.new_code_cell('PRESET = "x"\nDATA_ROOT = ""\nSEED = 0', metadata={"tags": ["parameters"]}),
                                  v4.new_code_cell("import os, time\nbuf = bytearray(80 * 2**20)\n"
                                                  "print(os.environ['TQDM_DISABLE'], os.environ.get('OMP_NUM_THREADS'))\n"
                                                  "time.sleep(1.2)  # > 2 polls of the monitor while the kernel lives")],
                           metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    bad = copy_with(good, "raise RuntimeError('stop here')")
    nbformat.write(good, tmp_path / "good.ipynb")
    nbformat.write(bad, tmp_path / "bad.ipynb")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    e = book.execute_notebook(tmp_path / "good.ipynb", tmp_path / "out" / "good.ipynb", "smoke", "", tmp_path / "res",
                              threads=3)
    assert e["status"] == "ok" and (tmp_path / "out" / "good.ipynb").is_file() and e["threads"] == 3
    assert not (tmp_path / "out" / "good.partial.ipynb").exists()
    assert e["peak_rss_mb"] is None or e["peak_rss_mb"] > 80, e  # the kernel's 80 MiB buffer is seen
    out = nbformat.read(tmp_path / "out" / "good.ipynb", as_version=4)
    assert out.cells[-1].outputs[0]["text"].split() == ["1", "3"], "progress bars off, 3 threads in the kernel"
    assert not list((tmp_path / "out").glob("*.json")), "the child's request and answer files are removed"
    e = book.execute_notebook(tmp_path / "bad.ipynb", tmp_path / "out" / "bad.ipynb", "smoke", "", tmp_path / "res")
    assert e["status"] == "error" and "stop here" in e["error"]
    assert not (tmp_path / "out" / "bad.ipynb").exists() and (tmp_path / "out" / "bad.partial.ipynb").exists()


def copy_with(nb: nbformat.NotebookNode, source: str) -> nbformat.NotebookNode:
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    nb.cells.append(nbformat.v4.new_code_cell(source))
    return nb


# ---------------------------------------------------------------------------------------------------
# The whole main job on smoke
# ---------------------------------------------------------------------------------------------------
@pytest.mark.notebook
def test_main_job_builds_the_book_on_smoke(smoke_book):
    out, status = smoke_book
    assert status == 0, "the main job failed; see the captured output"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preset"] == "smoke" and manifest["git_sha"]
    assert {"torch", "monai", "jupyter-book"} <= set(manifest["versions"])
    assert all(e["status"] == "ok" and e["action"] == "executed" for e in manifest["notebooks"])
    for e in manifest["notebooks"]:
        assert e["seconds"] > 0 and "executed_at" in e
        assert e["peak_rss_mb"] is None or 0 < e["peak_rss_mb"] <= manifest["memory_budget_mb"], e
    html = out / "src" / "_build" / "html"
    for page in toc_files(REPO / "_toc.yml"):
        assert (html / f"{page}.html").is_file(), page
    # figures were really produced: the baseline chapter embeds images
    page = (html / "notebooks" / "02_unet_baseline.html").read_text()
    assert "<img" in page, "the executed baseline chapter should show figures"
    for path in sorted((html / "notebooks").glob("*.html")):
        text = path.read_text()
        assert "# Parameters" not in text, f"{path.name}: papermill's injected-parameters cell is shown"
        assert REMOTE_BADGE not in text and "colab-badge.svg" in text, f"{path.name}: remote Colab badge"
        assert "mathjax/tex-chtml.js" in text and "cdn.jsdelivr.net" not in text, f"{path.name}: MathJax from a CDN"
        assert not re.search(r"\d+%\|[#█▏▎▍▌▋▊▉ ]*\|", text), f"{path.name}: a progress bar in the outputs"
        assert "google.colab" not in text, f"{path.name}: the Colab install cell is shown"
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    for path in sorted((out / "executed" / "notebooks").glob("*.ipynb")):  # the book's rule for widgets
        if not path.name.endswith(".partial.ipynb"):
            bad = widget_cells_without_figure(nbformat.read(path, as_version=4))
            assert not bad, f"{path.name}: widget cell(s) {bad} come before any static figure"
    # results tables show their protocol sentences whole (pandas would cut them to 50 characters)
    tables = [t for p in sorted((html / "notebooks").glob("*.html")) for t in
              re.findall(r'<table[^>]*results-table.*?</table>', p.read_text(), flags=re.S)]
    assert tables, "no results table found in the rendered chapters"
    for t in tables:
        assert '<tr class="protocol">' in t, "every results row shows its protocol beneath it"
        assert "...</td>" not in t and "…</td>" not in t, "a results table cell is truncated"


@pytest.mark.notebook
def test_main_job_second_run_reuses_every_chapter(smoke_book, capsys):
    out, status = smoke_book
    assert status == 0
    assert run_main_job(preset="smoke", data_root="", out=out, build=False) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {e["action"] for e in manifest["notebooks"]} == {"reused"}
    assert manifest["executed"] == 0 and manifest["reused"] == len(manifest["notebooks"])
    assert "reused" in capsys.readouterr().out
