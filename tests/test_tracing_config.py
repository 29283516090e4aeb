"""The tracing section of the config, and traces off costing nothing: the request path
never loads OpenTelemetry. None of these needs the otel extra."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.config import ConfigError, parse_config
from gateway.tracing import missing_modules
from tests.conftest import base_config

needs_otel = pytest.mark.skipif(bool(missing_modules()), reason="needs the otel extra: pip install -e '.[test,otel]'")
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


def test_tracing_without_the_extra_installed_is_refused_with_its_path(tmp_path, monkeypatch):
    doc = base_config(tmp_path)
    doc["tracing"] = {"otlp_endpoint": "http://127.0.0.1:4318"}
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(ConfigError) as refused:
        parse_config(doc, env={})
    [problem] = refused.value.problems
    assert problem.startswith("tracing: needs the OpenTelemetry extra") and "pip install 'tollhouse[otel]'" in problem


@pytest.mark.parametrize(("tracing", "problem"), [
    ({}, "tracing.otlp_endpoint: is required"),
    ({"otlp_endpoint": "collector:4318"}, "tracing.otlp_endpoint: expected an OTLP/HTTP URL"),
    ({"otlp_endpoint": "https://user:pw@collector"}, "tracing.otlp_endpoint: expected an OTLP/HTTP URL"),
    ({"otlp_endpoint": "http://c:4318", "sample_ratio": 1.5}, "tracing.sample_ratio: must be between 0 and 1"),
    ({"otlp_endpoint": "http://c:4318", "sample_rate": 0.5}, "tracing.sample_rate: unknown setting; did you mean 'sample_ratio'"),
])
def test_a_bad_tracing_section_is_refused_by_path(tmp_path, tracing, problem):
    doc = base_config(tmp_path)
    doc["tracing"] = tracing
    with pytest.raises(ConfigError) as refused:
        parse_config(doc, env={})
    assert any(p.startswith(problem) for p in refused.value.problems), refused.value.problems


@needs_otel
@pytest.mark.parametrize(("endpoint", "url"), [
    ("http://collector:4318", "http://collector:4318/v1/traces"),
    ("https://collector:4318/", "https://collector:4318/v1/traces"),
    ("http://collector:4318/custom/traces", "http://collector:4318/custom/traces"),
])
def test_a_collector_base_url_gets_the_traces_path(tmp_path, endpoint, url):
    doc = base_config(tmp_path)
    doc["tracing"] = {"otlp_endpoint": endpoint}
    assert parse_config(doc, env={}).tracing.traces_url == url


def test_a_gateway_on_the_local_backend_loads_no_shared_backend_driver(tmp_path):
    """psycopg and coredis are for the shared backend: a local gateway that starts and
    answers a request never imports them (they cost it tens of MB of memory)."""
    code = (
        "import sys, json, trio, httpx\n"
        "from tests.conftest import running_gateway, DEMO_KEY\n"
        "async def main():\n"
        "    with trio.fail_after(60):\n"
        f"        async with running_gateway(json.loads({json.dumps(json.dumps(base_config(tmp_path)))})) as gw:\n"
        "            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:\n"
        "                r = await http.post('/v1/chat/completions', headers={'authorization': 'Bearer ' + DEMO_KEY},\n"
        "                                    json={'model': 'demo', 'messages': [{'role': 'user', 'content': 'hi'}]})\n"
        "                assert r.status_code == 200, r.text\n"
        "trio.run(main)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'coredis'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
