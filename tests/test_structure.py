"""Structural rules that keep the design honest."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IO_LIBRARIES = {"trio", "httpx", "httpx2", "quart", "quart_trio", "hypercorn"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_protocols_are_sans_io():
    for path in sorted((ROOT / "protocols").glob("*.py")):
        leaked = _imports(path) & (IO_LIBRARIES | {"actors", "providers", "gateway"})
        assert not leaked, f"{path.name} imports {leaked}"


def test_nothing_imports_gateway_but_gateway():
    for package in ("protocols", "actors", "providers"):
        for path in sorted((ROOT / package).glob("*.py")):
            assert "gateway" not in _imports(path), f"{package}/{path.name} imports gateway"


def test_every_fixture_has_its_attribution():
    import fnmatch
    import re

    fixtures = ROOT / "tests" / "fixtures"
    sources = (fixtures / "SOURCES.md").read_text()
    patterns = set(re.findall(r"`([\w./*-]+\.\w+)`", sources))
    for path in sorted(fixtures.rglob("*")):
        if path.is_file() and path.name != "SOURCES.md":
            name = path.relative_to(fixtures).as_posix()
            assert any(fnmatch.fnmatch(name, p) for p in patterns), f"{name} has no entry in SOURCES.md"
