"""Every way a Chat stream can end is settled exactly once, with its reason."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from tests.conftest import DEMO_KEY, base_config, running_gateway

AUTH = {"authorization": f"Bearer {DEMO_KEY}"}


def _config(tmp_path, target: str, ttfb_s: float = 10.0, stall_s: float = 10.0):
    """Only the deadline a test is about is short; the simulator's faults stall for 30 s,
    so a slow host never turns one ending into another."""
    doc = base_config(tmp_path)
    doc["models"]["m"] = {"targets": [target]}
    doc["streaming"] = {"ttfb_timeout_s": ttfb_s, "stall_timeout_s": stall_s}
    return doc


async def _post(gw, stream: bool) -> httpx.Response:
    body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=gw.url) as client:
        return await client.post("/v1/chat/completions", json=body, headers=AUTH)


async def test_ttfb_timeout_fails_over_then_reports_504(tmp_path):
    with trio.fail_after(10):
        async with running_gateway(_config(tmp_path, "sim/sim-chat+ttfb_stall=30", ttfb_s=1.0)) as gw:
            r = await _post(gw, stream=True)
            assert r.status_code == 504
            assert r.json()["error"]["type"] == "timeout_error"
            with trio.fail_after(2):
                await gw.simulator.wait_idle()
            [entry] = gw.ledger_entries()
            assert entry["reason"] == "timeout" and entry["provenance"] == "estimated"
            assert entry["amount_micro"] == entry["hold_micro"]


async def test_stall_mid_stream_ends_with_error_chunk_and_timeout_record(tmp_path):
    with trio.fail_after(10):
        async with running_gateway(_config(tmp_path, "sim/sim-chat+stall_after=5", stall_s=1.0)) as gw:
            r = await _post(gw, stream=True)
            assert r.status_code == 200
            chunks = [json.loads(b[6:]) for b in r.text.split("\n\n") if b.startswith("data: {")]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
            assert text == "Hello from the Tollhouse"
            assert chunks[-1]["error"]["type"] == "timeout_error"
            with trio.fail_after(2):
                await gw.simulator.wait_idle()
            [entry] = gw.ledger_entries()
            assert entry["reason"] == "timeout" and entry["provenance"] == "estimated"


async def test_upstream_drop_mid_stream_is_an_error_event(tmp_path):
    with trio.fail_after(10):
        async with running_gateway(_config(tmp_path, "sim/sim-chat+disconnect_after=5")) as gw:
            r = await _post(gw, stream=True)
            assert r.status_code == 200
            assert '"error"' in r.text
            [entry] = gw.ledger_entries()
            assert entry["reason"] == "upstream_error"


async def test_stream_without_usage_charges_the_hold(tmp_path):
    with trio.fail_after(10):
        async with running_gateway(_config(tmp_path, "sim/sim-chat+no_usage=1")) as gw:
            r = await _post(gw, stream=True)
            assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
            [entry] = gw.ledger_entries()
            assert (entry["reason"], entry["provenance"]) == ("end", "estimated")
            assert entry["amount_micro"] == entry["hold_micro"] > 0


@pytest.mark.parametrize("stream", [True, False])
async def test_upstream_refusal_everywhere_passes_its_status_and_charges_nothing(tmp_path, stream):
    with trio.fail_after(10):
        async with running_gateway(_config(tmp_path, "sim/sim-chat+status=503")) as gw:
            r = await _post(gw, stream=stream)
            assert r.status_code == 503
            [entry] = gw.ledger_entries()
            assert (entry["amount_micro"], entry["cost_source"], entry["reason"]) == (0, "refused", "upstream_error")
