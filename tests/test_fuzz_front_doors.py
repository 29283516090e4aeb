"""A fuzzer per front door: no body a client can send gets a 500, and a refused body
costs nothing.

Bodies come from each protocol's shape: a valid skeleton that uses every field the
gateway reads, with one to three of its fields (at any depth) replaced by an arbitrary
JSON value or removed, plus arbitrary JSON objects over the protocol's top-level names.
Each is posted through a real socket to one gateway per protocol. After every answer:
the status is below 500, an error is the protocol's JSON error, and after a refusal
(4xx) the key's balance is what it was and no reservation is open.

Hypothesis runs derandomized with a fixed number of examples, so a run is the same
on every host; it runs in a worker thread (a sync HTTP client) while the gateway
serves in the test's trio loop.

A sweep in process backs it up: every field of every skeleton replaced by each of a
set of wrong values, parsed, and if accepted counted and built for every upstream
protocol. It is whole where the sampled fuzzer is not, and costs two seconds.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import anthropic_messages, gemini, openai_chat, openai_responses
from protocols.server_tools import UnsupportedServerTool
from protocols.errors import InvalidRequest
from protocols.tokens import estimate_request_tokens
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway

EXAMPLES = 150
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}

CHAT = {
    "model": "demo",
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "reasoning_content": "r",
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "42"}]},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "description": "d",
                                                "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}],
    "tool_choice": {"type": "function", "function": {"name": "f"}},
    "stop": ["END"], "max_tokens": 32, "max_completion_tokens": 32, "temperature": 0.5, "top_p": 1,
    "stream": True, "stream_options": {"include_usage": True},
}

RESPONSES = {
    "model": "demo",
    "instructions": "be brief",
    "input": [
        {"type": "message", "role": "developer", "content": "x"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"},
                                                        {"type": "input_image", "image_url": "https://x.test/y.png"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "t"}],
         "encrypted_content": "e"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}", "id": "fc_1"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "42"}]},
        {"type": "custom_tool_call", "call_id": "c2", "name": "g", "input": "x"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": "ok"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "done"}]},
    ],
    "tools": [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": False},
              {"type": "web_search"}],
    "tool_choice": {"type": "function", "name": "f"},
    "max_output_tokens": 32, "temperature": 0.5, "top_p": 1, "stream": True, "store": False,
    "reasoning": {"effort": "low"},
}

ANTHROPIC = {
    "model": "demo",
    "max_tokens": 32,
    "system": [{"type": "text", "text": "be brief"}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": "AAAA"}}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"},
                                          {"type": "redacted_thinking", "data": "x"},
                                          {"type": "tool_use", "id": "tu1", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu1", "is_error": False,
                                      "content": [{"type": "text", "text": "42"}]}]},
    ],
    "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}},
              {"type": "web_search_20250305", "name": "web_search"}],
    "tool_choice": {"type": "tool", "name": "f"},
    "stop_sequences": ["END"], "temperature": 0.5, "top_p": 1, "stream": True,
    "thinking": {"type": "enabled", "budget_tokens": 1024}, "metadata": {"user_id": "u"},
}

GEMINI = {
    "contents": [
        {"role": "user", "parts": [{"text": "hi"}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}},
                                   {"fileData": {"mimeType": "image/png", "fileUri": "https://x.test/y.png"}}]},
        {"role": "model", "parts": [{"text": "t", "thought": True},
                                    {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "sig"}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"output": "42"}}}]},
    ],
    "systemInstruction": {"parts": [{"text": "be brief"}]},
    "tools": [{"functionDeclarations": [{"name": "f", "description": "d",
                                         "parameters": {"type": "OBJECT", "properties": {"a": {"type": "INTEGER"}}}},
                                        {"name": "g", "parametersJsonSchema": {"type": "object"}}]},
              {"googleSearch": {}}],
    "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}},
    "generationConfig": {"maxOutputTokens": 32, "temperature": 0.5, "topP": 1, "stopSequences": ["END"],
                         "thinkingConfig": {"thinkingBudget": -1}},
    "safetySettings": [],
}

# door: (skeleton, the paths it is posted to)
DOORS = {
    "chat": (CHAT, ["/v1/chat/completions"]),
    "responses": (RESPONSES, ["/v1/responses"]),
    "anthropic": (ANTHROPIC, ["/v1/messages", "/v1/messages/count_tokens"]),
    "gemini": (GEMINI, ["/v1beta/models/demo:generateContent", "/v1beta/models/demo:streamGenerateContent?alt=sse",
                        "/v1beta/models/demo:streamGenerateContent", "/v1beta/models/demo:countTokens"]),
}

_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2**70, max_value=2**70)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
            | st.sampled_from(["", "user", "text", "function", "auto", "image_url", "\ud800", "x\udfffy"]))
JSON = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6) | st.sampled_from(["type", "text", "name", "role"]),
                                      inner, max_size=3), max_leaves=6)
# The wrong types a parser most often trips on, offered as often as arbitrary JSON.
WRONG = st.sampled_from([None, [], {}, [None], [[]], [{}], 0, 5, -1, 1.5, 2**64, "", "x", True, {"": None}])
REMOVE = object()


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in ``doc`` a value sits, as key/index tuples."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        out.append(prefix + (key,))
        out.extend(_paths(value, prefix + (key,)))
    return out


def _mutated(skeleton: dict, changes: list) -> dict:
    doc = copy.deepcopy(skeleton)
    for path, value in changes:
        parent = doc
        for key in path[:-1]:
            try:
                parent = parent[key]
            except (KeyError, IndexError, TypeError):
                break  # an earlier change replaced this branch
        else:
            if isinstance(parent, dict) and value is REMOVE:
                parent.pop(path[-1], None)
            elif isinstance(parent, dict) or (isinstance(parent, list) and isinstance(path[-1], int)
                                              and path[-1] < len(parent)):
                # a copy: sampled values are shared, and one placed twice would nest in itself
                parent[path[-1]] = None if value is REMOVE else copy.deepcopy(value)
    return doc


def bodies(skeleton: dict):
    """Skeletons with fields replaced or removed, and arbitrary objects."""
    change = st.tuples(st.sampled_from(_paths(skeleton)), WRONG | JSON | st.just(REMOVE))
    mutated = st.lists(change, min_size=1, max_size=3).map(lambda changes: _mutated(skeleton, changes))
    anything = st.dictionaries(st.sampled_from(sorted(skeleton)) | st.text(max_size=6), JSON, max_size=5)
    return mutated | mutated | anything


def _balance(client: httpx.Client) -> list:
    return client.get("/admin/keys", headers=ADMIN).json()["keys"]


def _reservations(client: httpx.Client) -> list:
    return client.get("/admin/reservations", headers=ADMIN).json()["reservations"]


def _fuzz(url: str, door: str) -> dict:
    skeleton, paths = DOORS[door]
    seen: dict = {}
    headers = {"authorization": f"Bearer {DEMO_KEY}", "content-type": "application/json"}
    with httpx.Client(base_url=url, timeout=20) as client:
        for path in paths:
            r = client.post(path, content=json.dumps(skeleton), headers=headers)
            assert r.status_code == 200, (path, r.text)
        state = {"balance": _balance(client)}

        @settings(derandomize=True, max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(body=bodies(skeleton), path=st.sampled_from(paths))
        def probe(body: dict, path: str) -> None:
            r = client.post(path, content=json.dumps(body), headers=headers)
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, (path, body, r.status_code, r.text)
            balance = _balance(client)
            if r.status_code >= 400:
                assert "error" in r.json(), r.text
                assert balance == state["balance"], (path, body, r.text)
            state["balance"] = balance
            assert _reservations(client) == [], (path, body)

        probe()
    return seen


@pytest.mark.parametrize("door", sorted(DOORS))
async def test_no_body_gets_a_500_and_a_refusal_costs_nothing(tmp_path, door):
    with trio.fail_after(60):
        doc = base_config(tmp_path)
        # the skeletons offer web search; the Chat simulator has none: the operator drops it
        for provider in doc["providers"].values():
            provider["server_tools"] = {"web_search": "drop"}
        async with running_gateway(doc) as gw:
            seen = await trio.to_thread.run_sync(_fuzz, gw.url, door, abandon_on_cancel=True)
            actors = gw.runtime.supervisor.snapshot()
    # Both sides were reached: bodies the gateway served and bodies it refused.
    assert any(s < 300 for s in seen) and any(400 <= s < 500 for s in seen), seen
    assert {name: a["restarts"] for name, a in actors.items() if a["restarts"]} == {}


# ---------------------------------------------------------------- the sweep, in process

SWEEP_VALUES = [None, [], {}, [None], [[]], [{}], 0, 5, -1, 1.5, 2**64, "", "x", True, {"": None}, "\ud800"]


def _parse(door: str, doc: dict):
    if door == "chat":
        return openai_chat.parse_request(doc)
    if door == "responses":
        return openai_responses.parse_request(doc)
    if door == "anthropic":
        return anthropic_messages.parse_request(doc)
    return gemini.parse_request(doc, model="demo", stream=True)


def _carry_on(req) -> None:
    """What the gateway does with an accepted request: count it, and build it for an
    upstream of every protocol (the bodies must be JSON)."""
    estimate_request_tokens(req)
    for build in (lambda: openai_chat.build_request(req, "m", include_usage=True),
                  lambda: openai_responses.build_request(req, "m"),
                  lambda: anthropic_messages.build_request(req, "m"),
                  lambda: gemini.build_request(req, "m")):
        try:
            json.dumps(build())
        except UnsupportedServerTool:
            pass  # a server tool that upstream cannot run: the client's 400, by name


@pytest.mark.parametrize("door", sorted(DOORS))
def test_every_field_of_every_door_takes_every_wrong_type(door):
    """Each field of the skeleton, at every depth, replaced by each of a set of wrong
    values or removed: the parser accepts the body (and the request can then be
    counted and sent to any upstream) or refuses it with InvalidRequest. In process,
    so the sweep is whole: every path times every value."""
    skeleton = DOORS[door][0]
    _carry_on(_parse(door, skeleton))
    failures = []
    for path in _paths(skeleton):
        for value in SWEEP_VALUES + [REMOVE]:
            doc = _mutated(skeleton, [(path, value)])
            try:
                req = _parse(door, doc)
            except InvalidRequest:
                continue
            except Exception as exc:  # a crash: collected, so one run shows them all
                failures.append((path, value, f"parse: {type(exc).__name__}: {exc}"))
                continue
            try:
                _carry_on(req)
            except Exception as exc:
                failures.append((path, value, f"carry on: {type(exc).__name__}: {exc}"))
    assert failures == []
