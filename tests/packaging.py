"""The packages the distribution ships, as setuptools' ``packages.find`` in
pyproject.toml selects them (read without importing setuptools)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def shipped_packages() -> set[str]:
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    names = {".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.glob("*/**/__init__.py")
             if p.parts[len(ROOT.parts)] != ".venv"}
    return {name for name in names if any(fnmatch.fnmatchcase(name, pattern) for pattern in include)}
