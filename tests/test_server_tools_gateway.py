"""Server tools through the gateway: Codex's ``web_search`` (and its ``multi_agent_v1``
namespace) against upstreams with and without an equivalent.

Refused requests are the client's own error: a 400 in its protocol naming the tool,
charged nothing and recorded as ``client_error``; an operator's ``drop`` serves them,
and so does a later target of the route whose family has the tool.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway

CODEX = Path(__file__).parent / "fixtures" / "requests" / "codex-0.169.0__http-tool-roundtrip__01_POST_v1_responses.json"
AUTH = {"authorization": f"Bearer {DEMO_KEY}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def _config(tmp_path, **sim_settings) -> dict:
    doc = base_config(tmp_path)
    doc["providers"]["sim"].update(sim_settings)
    doc["providers"]["sima"] = {"family": "simulator", "embedded": True, "protocol": "anthropic"}
    doc["models"]["to-anthropic"] = {"targets": ["sima/claude-sonnet-4-5"]}
    doc["models"]["chat-then-anthropic"] = {"targets": ["sim/sim-chat", "sima/claude-sonnet-4-5"]}
    doc["pricing"]["sima/*"] = {"input": "1.00", "output": "2.00"}
    return doc


def _codex(model: str, stream: bool = False) -> dict:
    body = json.loads(CODEX.read_bytes())["body"]
    return {**body, "model": model, "stream": stream}


async def _post(gw, body: dict) -> tuple[httpx.Response, list]:
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        r = await http.post("/v1/responses", json=body, headers=AUTH)
        records = (await http.get("/admin/usage/records", params={"request_id": r.headers["x-request-id"]},
                                  headers=ADMIN)).json()["records"]
    return r, records


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_web_search_without_an_equivalent_is_a_client_error_charged_nothing(tmp_path, stream):
    with trio.fail_after(20):
        async with running_gateway(_config(tmp_path)) as gw:
            r, records = await _post(gw, _codex("demo", stream))
            bodies = list(gw.simulator.bodies)
    assert r.status_code == 400
    error = r.json()["error"]
    assert "web_search" in error["message"] and "drop" in error["message"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "tools")
    assert bodies == []  # nothing reached the upstream
    assert records, "the refusal is on the ledger"
    assert {e["reason"] for e in records} == {"client_error"}
    assert [(e["kind"], e["amount_micro"]) for e in records] == [("charge", 0)], records


async def test_a_dropped_web_search_serves_codex_through_chat(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(_config(tmp_path, server_tools={"web_search": "drop"})) as gw:
            r, _ = await _post(gw, _codex("demo"))
            [sent] = gw.simulator.bodies
    assert r.status_code == 200
    names = [t["function"]["name"] for t in sent["tools"]]
    assert "multi_agent_v1__spawn_agent" in names and "exec_command" in names
    assert all(t["type"] == "function" for t in sent["tools"])  # web_search dropped, nothing else


async def test_web_search_reaches_an_anthropic_upstream_as_its_server_tool(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(_config(tmp_path)) as gw:
            r, _ = await _post(gw, _codex("to-anthropic", stream=True))
            [sent] = gw.simulator.bodies
    assert r.status_code == 200
    assert {"type": "web_search_20250305", "name": "web_search"} in sent["tools"]


async def test_a_target_without_the_tool_gives_way_to_one_with_it(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(_config(tmp_path)) as gw:
            r, records = await _post(gw, _codex("chat-then-anthropic"))
            [sent] = gw.simulator.bodies
    assert r.status_code == 200 and r.headers["x-tollhouse-target"].startswith("sima/")
    assert {"type": "web_search_20250305", "name": "web_search"} in sent["tools"]
    assert [(e["provider"], e["reason"]) for e in records if e["kind"] == "charge"] == [("sima", "end")]


class _Heard:
    def __init__(self) -> None:
        self.records: list = []

    def served(self, record) -> None:
        self.records.append(record)


async def _leases(http: httpx.AsyncClient) -> dict:
    view = (await http.get("/admin/credentials", headers=ADMIN)).json()
    pools = view.get("providers", view)
    return {provider: sum(c["leases_total"] for c in creds) for provider, creds in pools.items()}


@pytest.mark.parametrize("model", ["demo", "chat-then-anthropic"])
async def test_a_target_that_cannot_take_the_tool_is_skipped_without_a_lease_or_an_attempt(tmp_path, model):
    heard = _Heard()
    with trio.fail_after(20):
        async with running_gateway(_config(tmp_path)) as gw:
            gw.runtime.observers.add(heard)
            r, _ = await _post(gw, _codex(model))
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
                leases = await _leases(http)
    [record] = heard.records
    if model == "demo":  # no target can: the client's 400 naming the tool, nothing leased or tried
        assert r.status_code == 400 and "web_search" in r.json()["error"]["message"]
        assert record.attempts == 0 and leases.get("sim", 0) == 0
    else:  # the Chat target is passed over; the Anthropic one serves on the first attempt
        assert r.status_code == 200 and r.headers["x-tollhouse-target"].startswith("sima/")
        assert record.attempts == 1 and leases.get("sim", 0) == 0 and leases["sima"] == 1
