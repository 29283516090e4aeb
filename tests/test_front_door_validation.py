"""A body that does not fit its protocol's schema is a 400 in that protocol's shape,
naming the field, on every front door: never a 500, never a charge.

The first cases are bodies that once crashed a parser (a bare 500 before the key was
even checked); the rest pin the depth limit and strict UTF-8 of the one place every
body is parsed.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from protocols.validate import DEFAULT_MAX_JSON_DEPTH, load_json_object, nested_deeper_than
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
GEMINI = "/v1beta/models/demo:generateContent"
GEMINI_COUNT = "/v1beta/models/demo:countTokens"


def _chat(**fields) -> dict:
    return {"model": "demo", "messages": [{"role": "user", "content": "hi"}], **fields}


def _chat_part(part: dict) -> dict:
    return _chat(messages=[{"role": "user", "content": [part]}])


def _anthropic(**fields) -> dict:
    return {"model": "demo", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], **fields}


def _gemini(**fields) -> dict:
    return {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], **fields}


def _nested(levels: int) -> list:
    """``levels`` arrays inside one another, built without recursion."""
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def _raw_nested(levels: int, path: str) -> bytes:
    """A Chat body whose ``path`` field holds ``levels`` nested arrays, spelled as bytes
    (``json.dumps`` itself cannot write ~1,000 levels)."""
    return (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "' + path.encode()
            + b'": ' + b"[" * levels + b"]" * levels + b"}")


# (name, path, body, field named in the error)
CRASHES = [
    ("chat image_url a string", CHAT, _chat_part({"type": "image_url", "image_url": "x"}),
     "messages[0].content[0].image_url"),
    ("chat image_url.url an object", CHAT, _chat_part({"type": "image_url", "image_url": {"url": {}}}),
     "messages[0].content[0].image_url.url"),
    ("chat stop a number", CHAT, _chat(stop=5), "stop"),
    ("responses summary text an array", RESPONSES,
     {"model": "demo", "input": [{"type": "reasoning", "summary": [{"type": "summary_text", "text": []}]}]},
     "input[0].summary[0].text"),
    ("anthropic tool_choice.type an object", MESSAGES, _anthropic(tool_choice={"type": {}}), "tool_choice.type"),
    ("gemini role [null]", GEMINI, {"contents": [{"role": [None], "parts": [{"text": "hi"}]}]}, "contents[0].role"),
    ("gemini functionDeclarations a number", GEMINI, _gemini(tools=[{"functionDeclarations": 5}]),
     "tools[0].functionDeclarations"),
    ("a lone surrogate in a message", CHAT,
     b'{"model": "demo", "messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages[0].content"),
    ("a lone surrogate in an unknown field", MESSAGES,
     b'{"model": "demo", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], "x": ["\\udfff"]}',
     "x[0]"),
    ("a body nested ~990 levels", CHAT, _raw_nested(990, "metadata"), "nested too deeply"),
    ("a UTF-16 body", MESSAGES, json.dumps(_anthropic()).encode("utf-16"), "not UTF-8"),
    ("UTF-8-encoded surrogates", CHAT,
     b'{"model": "demo", "messages": [{"role": "user", "content": "a\xed\xa0\x80b"}]}', "not UTF-8"),
    # Found next to them, also 500s.
    ("chat tool_choice.function a string", CHAT, _chat(tool_choice={"function": "f"}), "tool_choice.function"),
    ("chat tool message text an array", CHAT,
     _chat(messages=[{"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": []}]}]),
     "messages[0].content[0].text"),
    ("responses tool_choice.name an array", RESPONSES,
     {"model": "demo", "input": "hi", "tool_choice": {"type": "function", "name": []}}, "tool_choice.name"),
    ("gemini allowedFunctionNames a number", GEMINI,
     _gemini(toolConfig={"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": 5}}),
     "toolConfig.functionCallingConfig.allowedFunctionNames"),
    # Once accepted, though the schema refuses them (a wrong type then reached the codecs).
    ("chat tool_call arguments an object", CHAT,
     _chat(messages=[{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]}]),
     "messages[0].tool_calls[0].function.arguments"),
    ("anthropic stop_sequences of numbers", COUNT,
     {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stop_sequences": [1]}, "stop_sequences[0]"),
    ("gemini inlineData.mimeType a number", GEMINI_COUNT,
     {"contents": [{"parts": [{"inlineData": {"mimeType": 5, "data": ""}}]}]},
     "contents[0].parts[0].inlineData.mimeType"),
]


def _message(path: str, doc: dict) -> str:
    """The error text, read from the protocol's own envelope."""
    if path.startswith("/v1beta"):
        assert doc["error"]["code"] == 400 and doc["error"]["status"] == "INVALID_ARGUMENT"
        return doc["error"]["message"]
    if path.startswith(MESSAGES):
        assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
        return doc["error"]["message"]
    assert doc["error"]["type"] == "invalid_request_error"
    return doc["error"]["message"]


async def _post(client: httpx.AsyncClient, path: str, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(path, content=content, headers={
        "authorization": f"Bearer {DEMO_KEY}", "content-type": "application/json"})


async def test_schema_mismatches_are_400s_naming_the_field(tmp_path):
    with trio.fail_after(30):
        async with running_gateway(base_config(tmp_path)) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as client:
                before = (await client.get("/admin/keys", headers=ADMIN)).json()
                for name, path, body, named in CRASHES:
                    r = await _post(client, path, body)
                    assert r.status_code == 400, (name, r.status_code, r.text)
                    assert named in _message(path, r.json()), (name, r.text)
                    if path in (CHAT, RESPONSES) and named not in ("nested too deeply", "not UTF-8"):
                        assert r.json()["error"]["param"] == named, name
                assert (await client.get("/admin/keys", headers=ADMIN)).json() == before
                assert (await client.get("/admin/reservations", headers=ADMIN)).json() == {"reservations": []}
            assert gw.ledger_entries() == []
            assert gw.simulator.requests == 0


async def test_the_depth_limit_comes_from_config_and_guards_every_door(tmp_path):
    doc = base_config(tmp_path)
    doc["server"]["max_json_depth"] = 8
    # ``metadata`` is one level below the body: 7 more arrays make 8 levels.
    fits, too_deep = _chat(metadata=_nested(7)), _chat(metadata=_nested(8))
    with trio.fail_after(30):
        async with running_gateway(doc) as gw:
            assert gw.runtime.config.server.max_json_depth == 8
            async with httpx.AsyncClient(base_url=gw.url) as client:
                assert (await _post(client, CHAT, fits)).status_code == 200
                r = await _post(client, CHAT, too_deep)
                assert r.status_code == 400, r.text
                assert "more than 8 levels" in r.json()["error"]["message"]
                assert r.json()["error"]["param"] == "metadata" + "[0]" * 7
                for path, body in ((RESPONSES, {"model": "demo", "input": "hi", "metadata": _nested(8)}),
                                   (MESSAGES, _anthropic(metadata=_nested(8))),
                                   (COUNT, {"model": "demo", "messages": [], "metadata": _nested(8)}),
                                   (GEMINI, _gemini(labels=_nested(8))),
                                   (GEMINI_COUNT, _gemini(labels=_nested(8)))):
                    r = await _post(client, path, body)
                    assert r.status_code == 400, (path, r.text)
                    assert "nested too deeply" in _message(path, r.json()), path
            assert len(gw.ledger_entries()) == 1


def test_default_depth_limit_admits_real_client_bodies():
    """Every recorded client body fits well inside the default limit."""
    for fixture in sorted((Path(__file__).parent / "fixtures" / "requests").glob("*.json")):
        body = json.loads(fixture.read_text())["body"]
        if isinstance(body, dict):
            load_json_object(json.dumps(body).encode())
            assert not nested_deeper_than(body, DEFAULT_MAX_JSON_DEPTH // 4), fixture.name


@pytest.mark.parametrize("levels,deeper", [(1, False), (3, False), (4, True), (70, True)])
def test_depth_counts_arrays_and_objects(levels, deeper):
    value: dict | list = {}
    for i in range(levels - 1):
        value = [value] if i % 2 else {"k": value}
    assert nested_deeper_than(value, 3) is deeper
