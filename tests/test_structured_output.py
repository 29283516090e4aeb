"""Structured output from each SDK against each upstream family.

The client asks for JSON of a schema in its own protocol's field; the simulator answers
schema-valid JSON only when it finds the schema in its own family's field, so a valid
answer proves the schema arrived, and the captured upstream body shows where.
Anthropic is reached twice: a Claude 4.5 model (``output_config.format``) and an older
one (a forced answer tool, turned back into text whole and streamed).
"""

from __future__ import annotations

import json

import pytest
import trio

from tests.clients import CLIENTS
from tests.conftest import base_config, running_gateway

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temperature": {"type": "integer"},
                   "sky": {"type": "string", "enum": ["sunny", "cloudy"]}},
    "required": ["city", "temperature", "sky"],
    "additionalProperties": False,
}

UPSTREAMS = {
    "chat": ("sim", "openai_chat", "sim-chat"),
    "responses": ("simr", "openai_responses", "sim-gpt"),
    "anthropic": ("sima", "anthropic", "claude-sonnet-4-5"),
    "anthropic-tool": ("sima", "anthropic", "claude-3-7-sonnet"),
    "gemini": ("simg", "gemini", "sim-gemini"),
}


def _schema_in_family_field(body: dict, upstream: str) -> dict | None:
    """Where each family carries the schema, read from the body the upstream got."""
    if upstream == "chat":
        return body["response_format"]["json_schema"]["schema"]
    if upstream == "responses":
        return body["text"]["format"]["schema"]
    if upstream == "anthropic":
        assert "tool_choice" not in body
        return body["output_config"]["format"]["schema"]
    if upstream == "anthropic-tool":
        assert "output_config" not in body
        assert body["tool_choice"] == {"type": "tool", "name": "structured_answer"}
        [tool] = body["tools"]
        return tool["input_schema"]
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    return body["generationConfig"]["responseJsonSchema"]


def _valid(value: object) -> bool:
    """``value`` against SCHEMA (no validator library here: the schema is small)."""
    return (isinstance(value, dict) and set(value) == set(SCHEMA["required"])
            and isinstance(value["city"], str) and type(value["temperature"]) is int
            and value["sky"] in ("sunny", "cloudy"))


@pytest.fixture(scope="module")
def config_doc(tmp_path_factory):
    doc = base_config(tmp_path_factory.mktemp("structured"))
    for upstream, (provider, protocol, model) in UPSTREAMS.items():
        doc["providers"][provider] = {"family": "simulator", "embedded": True, "protocol": protocol}
        doc["models"][f"to-{upstream}"] = {"targets": [f"{provider}/{model}"]}
        doc["pricing"][f"{provider}/*"] = {"input": "1.00", "output": "2.00"}
    return doc


@pytest.fixture
async def gateway(config_doc):
    async with running_gateway(config_doc) as gw:
        yield gw


PAIRS = [(c, u, s) for c in CLIENTS for u in UPSTREAMS for s in (False, True)]


@pytest.mark.parametrize("client_name,upstream,stream", PAIRS,
                         ids=[f"{c}-to-{u}-{'stream' if s else 'whole'}" for c, u, s in PAIRS])
async def test_structured_output_reaches_every_family(gateway, client_name, upstream, stream):
    client = CLIENTS[client_name](gateway.url)
    try:
        with trio.fail_after(15):
            text = await client.structured(f"to-{upstream}", stream, SCHEMA)
    finally:
        await client.aclose()
    assert _valid(json.loads(text)), text
    body = gateway.simulator.bodies[-1]
    same = (client_name, upstream) in (("chat", "chat"), ("responses", "responses"), ("gemini", "gemini"),
                                       ("anthropic", "anthropic"), ("anthropic", "anthropic-tool"))
    if same and upstream == "anthropic-tool":
        return  # the client's own output_config went as written; the simulator does not check model support
    assert _schema_in_family_field(body, upstream) == SCHEMA
