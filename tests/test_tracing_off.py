"""Traces off cost nothing: the request path never loads OpenTelemetry (these checks need no extra)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import base_config
from tests.test_structure import ROOT, _imports


def test_only_the_tracing_implementation_imports_opentelemetry():
    for package in ("protocols", "actors", "providers", "gateway", "gateway/routes"):
        for path in sorted((ROOT / package).glob("*.py")):
            if path.relative_to(ROOT).as_posix() != "gateway/otel.py":
                assert "opentelemetry" not in _imports(path), f"{path.relative_to(ROOT)} imports opentelemetry"


def test_a_gateway_without_tracing_loads_no_opentelemetry_module(tmp_path):
    """The whole gateway built from a config without ``tracing``, in a fresh interpreter."""
    code = (
        "import sys, json\n"
        "from gateway.app import Gateway\n"
        "from gateway.config import parse_config\n"
        f"gateway = Gateway(parse_config(json.loads({json.dumps(json.dumps(base_config(tmp_path)))}), env={{}}))\n"
        "assert not gateway.runtime.tracing.enabled\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
