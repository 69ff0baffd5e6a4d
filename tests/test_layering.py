"""Imports follow the data flow of docs/design.md (devices → config → engine process → pool →
router → interface): a package never imports one further along it. Read from the source, so a
wrong-way import fails here even where it would not (yet) make an import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "katapool"
INTERFACES = ("katapool.server", "katapool.client", "katapool.cli", "katapool.gtp")
FORBIDDEN = {
    "config": ("katapool.pool", *INTERFACES),
    "engine": ("katapool.pool", *INTERFACES),
}


def imported_modules(source: str, package: str) -> set[str]:
    """Every module a file of ``package`` imports (relative imports resolved, ``from katapool
    import x`` counted as ``katapool.x``), including those only imported for type checking."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _package_of(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).parts[:-1])


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_import_against_the_data_flow(layer: str) -> None:
    wrong = sorted(
        f"{path.relative_to(PACKAGE.parent)} imports {module}"
        for path in (PACKAGE / layer).rglob("*.py")
        for module in imported_modules(path.read_text(), _package_of(path))
        if any(_within(module, banned) for banned in FORBIDDEN[layer]))
    assert wrong == []


def test_the_check_sees_each_import_form() -> None:
    source = ("import katapool.pool.member\nfrom katapool import pool\n"
              "from ..pool.router import Router\n"
              "if TYPE_CHECKING:\n    from katapool.server.hub import Hub\n")
    found = imported_modules(source, "katapool.config")
    assert {"katapool.pool.member", "katapool.pool", "katapool.pool.router",
            "katapool.server.hub"} <= found
