"""The typed seams hold: mypy, with the project's ``[tool.mypy]`` settings, finds no error
in protocols/, actors/ and providers/ (the same command .ci/run runs before the tests),
and a codec or a provider that leaves out part of its seam is an error it reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("protocols", "actors", "providers")


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory) -> Path:
    """One cache for the module's runs, outside the tree."""
    return tmp_path_factory.mktemp("mypy_cache")


def run_mypy(cache: Path, *targets: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache), *targets],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def test_protocols_actors_and_providers_type_check(mypy_cache):
    result = run_mypy(mypy_cache, *CHECKED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success: no issues found"), result.stdout


def test_a_codec_or_provider_missing_part_of_its_seam_is_reported(mypy_cache, tmp_path):
    broken = tmp_path / "broken_seams.py"
    broken.write_text(
        "from protocols import unified\n"
        "from protocols.seams import ClientCodec\n"
        "from providers.openai_compat import OpenAICompatProvider\n"
        "from providers.seams import CountingProvider\n"
        "\n"
        "codec: ClientCodec = unified\n"
        "def counting(p: OpenAICompatProvider) -> CountingProvider:\n"
        "    return p\n"
    )
    result = run_mypy(mypy_cache, str(broken))
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'broken_seams.py:6: error: Incompatible types in assignment (expression has type Module, variable has type "ClientCodec")' in result.stdout
    assert 'broken_seams.py:8: error: Incompatible return value type (got "OpenAICompatProvider", expected "CountingProvider")' in result.stdout
    assert "count_tokens" in result.stdout  # the member it lacks
