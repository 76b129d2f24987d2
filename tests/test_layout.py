"""The package's shape: no import cycle, no import from a lower layer to a higher one, references a reader can follow.

Layers, from the bottom (a module may import its own layer and the layers below it):

0. ``device``, ``distributed``, ``checkpoint``, ``metrics``, ``schedule``, ``uncertainty``, ``provenance``,
   ``troubleshooting`` — leaves, pure math and tables (``distributed`` may use ``device``);
1. ``config`` — dataclasses and preset tables (imports nothing from methods, data or the papers);
2. ``data``, ``weights`` — loaders, synthetic data, batches; where the authors' weight files come from;
3. ``plots`` — figures;
4. ``methods.base`` — the socket every method plugs into;
5. ``methods.unet``, ``cdal``, ``textdiff`` — one home per method (a package per paper);
6. ``methods`` — the registry and ``get_config``;
7. ``train``, ``evaluate``, ``members``, ``released`` — the one loop, the scoring, per-member predictions, the
   authors' checkpoints scored;
8. ``notebook``, ``book`` — chapter set-up and the main job;
9. ``cli``, ``__main__`` and the package itself.

Imports under ``if TYPE_CHECKING:`` are annotations only and are not counted.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from conftest import REPO

PKG = REPO / "diffseg_core"
LAYERS: list[tuple[str, ...]] = [
    ("diffseg_core.device", "diffseg_core.distributed", "diffseg_core.checkpoint", "diffseg_core.metrics",
     "diffseg_core.schedule", "diffseg_core.uncertainty", "diffseg_core.provenance", "diffseg_core.troubleshooting"),
    ("diffseg_core.config",),
    ("diffseg_core.data", "diffseg_core.weights"),
    ("diffseg_core.plots",),
    ("diffseg_core.methods.base",),
    ("diffseg_core.methods.unet", "diffseg_core.cdal", "diffseg_core.segdiff", "diffseg_core.textdiff"),
    ("diffseg_core.methods",),
    ("diffseg_core.train", "diffseg_core.evaluate", "diffseg_core.members", "diffseg_core.released"),
    ("diffseg_core.notebook", "diffseg_core.book"),
    ("diffseg_core.cli", "diffseg_core.__main__", "diffseg_core"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer_of(module: str) -> int:
    """The layer of the longest prefix listed in :data:`LAYERS`."""
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = i, len(name)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return best


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for sub in node.body:
                for n in ast.walk(sub):
                    if hasattr(n, "lineno"):
                        lines.add(n.lineno)
    return lines


def imports_of(module: str) -> set[str]:
    """Every diffseg_core module that ``module`` imports (top-level or inside functions)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("diffseg_core")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("diffseg_core"):
                continue
            for alias in node.names:  # "from pkg import submodule" imports the submodule
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer():
    for m in MODULES:
        layer_of(m)


def test_no_import_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_no_import_reaches_up_a_layer():
    bad = [f"{m} (layer {layer_of(m)}) imports {n} (layer {layer_of(n)})"
           for m, deps in GRAPH.items() for n in deps if layer_of(n) > layer_of(m)]
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(bad))


def test_config_is_a_leaf():
    assert GRAPH["diffseg_core.config"] <= {"diffseg_core.device"}


def test_each_paper_is_one_package():
    assert (PKG / "cdal" / "__init__.py").is_file() and (PKG / "textdiff" / "__init__.py").is_file()
    for name in ("generator", "discriminator", "training", "sampling", "method", "config"):
        assert f"diffseg_core.cdal.{name}" in MODULES
    for name in ("backbone", "pretrain", "features", "text", "cross_attention", "head", "method", "config"):
        assert f"diffseg_core.textdiff.{name}" in MODULES


def test_no_reference_outside_the_repository():
    """The package, the chapters and the tests cite the book's pages and the papers, never design notes."""
    banned = ("shared/" + "design", "method" + ".md", "style" + ".md")
    hits = []
    for folder in ("diffseg_core", "notebooks", "tests", "benchmarks", "book"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix not in (".py", ".ipynb", ".md") or not path.is_file():
                continue
            text = path.read_text()
            if path.suffix == ".ipynb":
                text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"])
            hits += [f"{path.relative_to(REPO)}: {b}" for b in banned if b in text]
    assert not hits, hits
