"""Vigil's packages depend one way: a module imports only its own part or a lower layer.

Read from the source (every ``import``, including the ones inside functions and under
``TYPE_CHECKING``), so a lazy import cannot hide an upward edge. Parts in the same layer
are siblings and import neither each other nor anything above them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("vigil", "streams", "models", "bench", "tests")

# Lowest first. ``vigil`` alone is the package's ``__init__`` (the version); its
# submodules are placed one by one, because the command line sits at the top. Inside
# ``models``, the shared pieces and the imaging family sit below the deterioration and OOD
# families, which stay one part: each serves pieces of the other (the step model carries
# the step OOD module; the OOD detector reads the deterioration network).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("vigil", "vigil.errors"),
    ("streams.core",),
    ("streams.datasets",),
    ("models.common",),
    ("models.imaging",),
    ("models", "streams", "vigil.stack", "vigil.audit"),
    ("vigil.cli",),
    ("vigil.__main__", "vigil.testing"),
    ("bench",),
    ("tests",),
)
_EXACT_ONLY = frozenset({"vigil"})


def part_of(module: str) -> tuple[str, int] | None:
    """The part (longest matching name in :data:`LAYERS`) and layer of a module."""
    best: tuple[str, int] | None = None
    for rank, names in enumerate(LAYERS):
        for name in names:
            inside = module.startswith(name + ".") and name not in _EXACT_ONLY
            if (module == name or inside) and (best is None or len(name) > len(best[0])):
                best = (name, rank)
    return best


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(module: str, tree: ast.AST, known: frozenset[str]) -> Iterator[tuple[str, int]]:
    package = module if module in known and _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield (submodule if submodule in known else base), node.lineno


def _is_package(module: str) -> bool:
    return (ROOT / module.replace(".", "/") / "__init__.py").exists()


def sources() -> dict[str, str]:
    """Every first-party module's source, by dotted name."""
    found: dict[str, str] = {}
    for top in FIRST_PARTY:
        for path in sorted((ROOT / top).rglob("*.py")):
            found[_module_name(path)] = path.read_text(encoding="utf-8")
    return found


def violations(modules: Mapping[str, str]) -> list[str]:
    """Upward or sideways imports, and modules no layer claims, one line each."""
    known = frozenset(modules)
    problems: list[str] = []
    for module, text in sorted(modules.items()):
        home = part_of(module)
        if home is None:
            problems.append(f"{module}: in no layer (add it to LAYERS)")
            continue
        for target, line in _imported(module, ast.parse(text), known):
            if target.split(".")[0] not in FIRST_PARTY:
                continue
            there = part_of(target)
            if there is None:
                problems.append(f"{module}:{line} imports {target}, which is in no layer")
            elif there[0] != home[0] and there[1] >= home[1]:
                problems.append(
                    f"{module}:{line} ({home[0]}, layer {home[1]}) imports {target} "
                    f"({there[0]}, layer {there[1]})"
                )
    return problems


def test_no_package_imports_one_above_it():
    modules = sources()
    # The scan really covers the tree, including the parts that matter most.
    for name in ("vigil.errors", "streams.core.features", "models.cli", "bench.run"):
        assert name in modules
    assert violations(modules) == []


@pytest.mark.parametrize(
    ("module", "text"),
    [
        ("streams.core.news2", "from models.cli import export_app\n"),
        ("streams.core.news2", "def f():\n    import streams.adapters.models\n"),
        ("models.cli", "import vigil.cli\n"),
        ("streams.worker", "from models import cli\n"),
        ("bench.fuzz", "from tests.unit import test_layers\n"),
        ("vigil.errors", "from vigil import cli\n"),
        ("models.common.export", "from models.deterioration import network\n"),
        ("models.imaging.train", "import models.ood.detector\n"),
    ],
)
def test_an_upward_or_sideways_import_is_reported(module: str, text: str):
    # Guard against a check that cannot fail.
    fake = {
        "models.cli": "",
        "models.deterioration.network": "",
        "vigil.cli": "",
        "tests.unit.test_layers": "",
        module: text,
    }
    assert len(violations(fake)) == 1


def test_own_part_and_lower_layers_are_allowed():
    fake = {
        "models.deterioration.train": (
            "from streams.core.features import SERIES_CODES\nimport models.deterioration.network\n"
        ),
        "vigil.cli": "from vigil import __version__\nfrom vigil.errors import VigilError\n",
        "models.deterioration.network": "",
    }
    assert violations(fake) == []
