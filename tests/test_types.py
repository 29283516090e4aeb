"""The typed seams hold: mypy, with the project's ``[tool.mypy]`` settings, finds no error
in protocols/, actors/ and providers/ (the same command .ci/run runs before the tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("protocols", "actors", "providers")


def run_mypy(tmp_path: Path, *targets: str) -> subprocess.CompletedProcess:
    """mypy as .ci/run runs it, with its cache in ``tmp_path`` (never in the tree)."""
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy_cache"), *targets],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def test_protocols_actors_and_providers_type_check(tmp_path):
    result = run_mypy(tmp_path, *CHECKED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success: no issues found"), result.stdout
