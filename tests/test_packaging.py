"""environment.yml and pyproject.toml must list the same dependencies; pyproject keeps lower bounds only."""
from __future__ import annotations

import re
import tomllib

import yaml

from conftest import REPO


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _env_pip() -> list[str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return [p for p in pip if not p.startswith("-e")]


def test_environment_matches_pyproject():
    proj = _pyproject()["project"]
    expected = {_norm(r) for r in proj["dependencies"]} | {_norm(r) for r in proj["optional-dependencies"]["dev"]}
    got = {_norm(r) for r in _env_pip()}
    assert got == expected, f"only in environment.yml: {sorted(got - expected)}; only in pyproject: {sorted(expected - got)}"


def test_pyproject_has_lower_bounds_only_and_jupyter_book_1():
    proj = _pyproject()["project"]
    reqs = proj["dependencies"] + [r for extra in proj["optional-dependencies"].values() for r in extra]
    pinned = [r for r in reqs if "==" in r]
    assert not pinned, f"pyproject.toml must not pin versions (Colab keeps its own torch): {pinned}"
    torch_req = [r for r in proj["dependencies"] if r.startswith("torch")]
    assert torch_req and ">=" in torch_req[0]
    jb = [r for r in reqs if r.startswith("jupyter-book")]
    assert jb and all(_norm(r) == "jupyter-book>=1.0.4.post1,<2" for r in jb), jb


def test_readme_commands_and_ci_agree():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    test_cmd = next(line for line in readme.splitlines() if line.endswith("-m pytest"))
    assert test_cmd in ci, ".ci/run must run the README's test command verbatim"
    assert 'torch==2.13.0' in test_cmd
    assert any(line.endswith("-m diffseg_core book") for line in readme.splitlines()), "README must give the main-job command"
