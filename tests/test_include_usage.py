"""stream_options.include_usage: injected, stripped, kept, retried, remembered."""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.conftest import DEMO_KEY, base_config, running_gateway

CHAT = {"stream": True, "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"authorization": f"Bearer {DEMO_KEY}"}


def _data_lines(text: str) -> list[str]:
    return [block for block in text.split("\n\n") if block.startswith("data:")]


async def _stream(gw, model: str, **extra) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url) as client:
        return await client.post("/v1/chat/completions", json={"model": model, **CHAT, **extra}, headers=AUTH)


@pytest.mark.parametrize("flavour", ["openai", "azure", "vllm", "mistral"])
async def test_rejected_stream_options_is_retried_once_then_remembered(tmp_path, flavour):
    doc = base_config(tmp_path)
    doc["models"]["picky"] = {"targets": [f"sim/sim-chat+reject_stream_options={flavour}"]}
    with trio.fail_after(10):
        async with running_gateway(doc) as gw:
            first = await _stream(gw, "picky")
            assert first.status_code == 200
            assert _data_lines(first.text)[-1] == "data: [DONE]"
            assert gw.simulator.requests == 2, "one rejected attempt, one retry without stream_options"
            assert "stream_options" in gw.simulator.bodies[0]
            assert "stream_options" not in gw.simulator.bodies[1]
            second = await _stream(gw, "picky")
            assert second.status_code == 200
            assert gw.simulator.requests == 3, "the rejection was remembered: no second retry"
            assert "stream_options" not in gw.simulator.bodies[2]
            with trio.fail_after(1):
                await gw.usage_actor.wait_settles(2)
            entries = gw.ledger_entries()
            assert [e["provenance"] for e in entries] == ["estimated", "estimated"]


async def test_unrelated_400_is_not_retried(tmp_path):
    doc = base_config(tmp_path)
    doc["models"]["broken"] = {"targets": ["sim/sim-chat+status=400"]}
    with trio.fail_after(10):
        async with running_gateway(doc) as gw:
            r = await _stream(gw, "broken")
            assert r.status_code == 400
            assert r.json()["error"]["type"] == "invalid_request_error"
            assert gw.simulator.requests == 1


async def test_injected_usage_chunk_is_stripped_but_metered(config_doc):
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw:
            r = await _stream(gw, "demo")
            lines = _data_lines(r.text)
            assert lines[-1] == "data: [DONE]"
            assert not any('"usage":{' in line for line in lines)
            [entry] = gw.ledger_entries()
            assert entry["provenance"] == "reported" and entry["output"] == 12


async def test_client_requested_usage_chunk_is_forwarded_byte_for_byte(config_doc):
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw:
            r = await _stream(gw, "demo", stream_options={"include_usage": True})
            lines = _data_lines(r.text)
            assert '"choices":[]' in lines[-2] and '"usage":{' in lines[-2]
            assert gw.simulator.bodies[-1]["stream_options"] == {"include_usage": True}
