"""Shared fixtures. Real-data tests read ../shared/data (read-only) and skip cleanly when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DIFFSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
#: fact files (names and shapes of the authors' checkpoints), beside the shared data
SHARED_OFFICIAL = Path(os.environ.get("DIFFSEG_SHARED_OFFICIAL", SHARED_DATA.parent / "official"))

# One intra-op thread for the tests that run in this process. Their networks are tiny, and with two OpenMP
# threads a single competing process on a 2-core machine made the two overfit tests take ~10 minutes each
# instead of ~5 s (every parallel region waits for the thread that lost its core). Notebook kernels and
# torchrun workers are separate processes: they get one thread each from the environment below unless the
# caller chose otherwise (the same slowdown hit the notebook kernels of the smoke book: minutes per chapter).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


#: the tests that read the smoke book (the ``smoke_book`` fixture): under pytest-xdist they run on one worker,
#: so that the book is built once per test session (checked at collection, below)
SMOKE_BOOK_TESTS = ("tests/test_book.py::test_main_job_", "tests/test_browser.py::")


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (the default in pyproject.toml): one worker per core, at most 4 (each worker imports torch and
    the notebook kernels it starts take ~1 GB)."""
    return max(1, min(4, os.cpu_count() or 1))


def pytest_xdist_make_scheduler(config, log):
    """``--dist load`` (the default), except that the :data:`SMOKE_BOOK_TESTS` go to one worker as a group.

    (xdist's own ``--dist loadgroup`` reads ``xdist_group`` marks by rewriting node ids, which pytest 9 no
    longer allows, so the group is named here by node-id prefix.)"""
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SmokeBookTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "smoke_book" if nodeid.startswith(SMOKE_BOOK_TESTS) else nodeid

    return SmokeBookTogether(config, log)


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if "smoke_book" in getattr(item, "fixturenames", ()) and not item.nodeid.startswith(SMOKE_BOOK_TESTS):
            raise pytest.UsageError(f"{item.nodeid} uses the smoke_book fixture: add its node-id prefix to "
                                    "SMOKE_BOOK_TESTS in tests/conftest.py so that xdist keeps it with the book")


def shared_dataset(name: str) -> Path:
    """Path of ``../shared/data/<name>``; skips the calling test (with the reason) when absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real-data subset {path} is not present (it lives in ../shared/data, read-only)")
    return path


@pytest.fixture
def monuseg_root() -> Path:
    return shared_dataset("monuseg")


@pytest.fixture
def cxr_root() -> Path:
    return shared_dataset("cxr_lung")


@pytest.fixture
def hippocampus_root() -> Path:
    return shared_dataset("hippocampus")


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory):
    """The main job on the ``smoke`` preset, run once per test session: ``(out_dir, exit_status)``.

    Shared by the book test and the browser test (``pytest -m browser``), so the book is built once.
    """
    from diffseg_core.book import run_main_job

    out = tmp_path_factory.mktemp("smoke_book")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DIFFSEG_DATA", raising=False)
        mp.setenv("MPLBACKEND", "Agg")
        # one chapter at a time: the other xdist worker already uses the second core
        status = run_main_job(preset="smoke", data_root="", out=out, jobs=1)
    return out, status


def load_benchmark(script: str):
    """``benchmarks/<script>`` loaded as a module (its ``main(argv)`` then runs in this process: a fresh interpreter
    would spend most of a tiny-mode test importing torch and MONAI again)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{Path(script).stem}", REPO / "benchmarks" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_facts(name: str) -> dict:
    """``../shared/official/<name>.json`` (names, shapes and save format of an official checkpoint), parsed;
    skips the calling test (with the reason) when the fact files are absent."""
    import json

    path = SHARED_OFFICIAL / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"official fact file {path} is not present (it lives in ../shared/official, read-only)")
    return json.loads(path.read_text())


@pytest.fixture
def official_root() -> Path:
    if not SHARED_OFFICIAL.is_dir():
        pytest.skip(f"official fact files {SHARED_OFFICIAL} are not present (they live in ../shared/official)")
    return SHARED_OFFICIAL
