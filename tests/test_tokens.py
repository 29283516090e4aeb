"""The BPE token counter: offline, lazy, bounded in time, and what count_tokens answers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import trio

from protocols import anthropic_messages, gemini, openai_chat, tokens
from protocols.unified import ImagePart, Message, TextPart, Tool, ToolResultPart, UnifiedRequest
from protocols.usage import estimate_tokens
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, FIXTURES, base_config, running_gateway

REPO = Path(__file__).resolve().parent.parent
CHINESE = ("网关在转发请求之前先为密钥预留额度，请求结束后再按上游报告的用量结算。"
           "如果客户端中途断开，上游没有报告用量，网关只能估算已经消耗的输入和输出。") * 10
TOOLS = json.loads((FIXTURES / "requests" / "claude-code-2.1.331__print-tool-roundtrip__01_POST_v1_messages.json")
                   .read_text())["body"]["tools"]


def test_counts_with_the_shipped_o200k_vocabulary():
    assert tokens.bpe_available()
    # tiktoken's own documented o200k_base encoding of "hello world" is [24912, 2375]
    assert tokens.count_text_tokens("hello world") == 2
    assert tokens.count_text_tokens("") == 0
    assert tokens.count_text_tokens("<|endoftext|>") > 1, "special-token text is counted as plain text"
    assert tokens.count_text_tokens("\ud800 lone surrogate") > 0


def test_importing_loads_nothing_until_the_first_count():
    probe = ("import sys; from protocols import tokens; "
             "print(tokens._VOCABULARY._tried, 'tiktoken' in sys.modules); "
             "tokens.count_text_tokens('hi'); print(tokens._VOCABULARY._tried)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True,
                         timeout=120).stdout.split()
    assert out == ["False", "False", "True"]


def test_bpe_counts_json_and_chinese_closer_than_bytes_over_four():
    schemas = json.dumps(TOOLS, separators=(",", ":"), ensure_ascii=False)
    for text in (schemas, CHINESE, "The quick brown fox jumps over the lazy dog."):
        exact = tokens.count_text_tokens(text)
        assert exact > 0
        assert exact != estimate_tokens(len(text.encode())), "a real tokenizer, not the byte rule"


def test_long_text_is_sampled_within_two_percent_and_in_bounded_time():
    encoding = tokens._VOCABULARY.load()
    text = ((FIXTURES / "text" / "readme-sample.md").read_text() + json.dumps(TOOLS) + CHINESE) * 40
    assert len(text) > 2 * tokens.EXACT_CHARS
    exact = len(encoding.encode_ordinary(text))
    assert abs(tokens.count_text_tokens(text) - exact) / exact < 0.02
    blob = "A" * 3_000_000  # one 3 MB run with no break: BPE's worst case, unchunked
    start = time.perf_counter()
    assert tokens.count_text_tokens(blob) > 0
    assert time.perf_counter() - start < 10, "chunked and sampled, it takes milliseconds"


def test_request_estimate_covers_text_tools_results_and_images():
    req = UnifiedRequest(
        protocol="openai_chat", model="m",
        system=(TextPart("Be brief."),),
        messages=(Message("user", (TextPart(CHINESE), ImagePart(url="https://x/y.png"))),
                  Message("tool", (ToolResultPart("c1", "sunny, 21 degrees"),))),
        tools=(Tool("get_weather", "Weather in a city", {"type": "object", "properties": {"city": {"type": "string"}}}),))
    text = "\n".join(["Be brief.", CHINESE, "sunny, 21 degrees", json.dumps(
        {"name": "get_weather", "description": "Weather in a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}, separators=(",", ":"))])
    overhead = 3 * tokens.MESSAGE_OVERHEAD + tokens.REPLY_OVERHEAD
    assert tokens.estimate_request_tokens(req) == tokens.count_text_tokens(text) + tokens.IMAGE_TOKENS + overhead


def test_chat_parse_feeds_the_estimate():
    req = openai_chat.parse_request({"model": "m", "messages": [{"role": "user", "content": CHINESE}]})
    direct = tokens.count_text_tokens(CHINESE)
    assert direct <= tokens.estimate_request_tokens(req) <= direct + 10


# ---------------------------------------------------------------- count_tokens routes


def gemini_doc(tmp_path) -> dict:
    doc = base_config(tmp_path)
    # the gateway's own count is under test here (upstream counting: test_count_tokens.py)
    doc["providers"]["simg"] = {"family": "simulator", "embedded": True, "protocol": "gemini",
                                "count_tokens": "estimate"}
    doc["models"]["gemini-sim"] = {"targets": ["simg/sim-gemini"]}
    doc["pricing"]["simg/sim-gemini"] = {"input": "1.00", "output": "2.00"}
    return doc


def within(count: int, direct: int) -> bool:
    return abs(count - direct) <= 0.15 * direct


async def test_count_tokens_routes_use_the_tokenizer_and_are_free(tmp_path):
    anthropic_tools = TOOLS
    gemini_tools = [{"functionDeclarations": [{"name": t["name"], "description": t.get("description", ""),
                                               "parameters": t["input_schema"]} for t in TOOLS]}]
    schema_text = json.dumps([{"name": t["name"], "description": t.get("description", ""),
                               "parameters": t["input_schema"]} for t in TOOLS], separators=(",", ":"),
                             ensure_ascii=False)
    direct_chinese = tokens.count_text_tokens(CHINESE)
    direct_schemas = tokens.count_text_tokens(schema_text)
    with trio.fail_after(30):
        async with running_gateway(gemini_doc(tmp_path)) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
                keys_before = (await client.get("/admin/keys", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})).json()
                anthropic_door = {"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01"}
                r = await client.post("/v1/messages/count_tokens", headers=anthropic_door, json={
                    "model": "demo", "messages": [{"role": "user", "content": CHINESE}]})
                assert r.status_code == 200 and within(r.json()["input_tokens"], direct_chinese), r.text
                r = await client.post("/v1/messages/count_tokens", headers=anthropic_door, json={
                    "model": "demo", "messages": [{"role": "user", "content": "hi"}], "tools": anthropic_tools})
                assert r.status_code == 200 and within(r.json()["input_tokens"], direct_schemas), r.text

                gemini_door = {"x-goog-api-key": DEMO_KEY}
                r = await client.post("/v1beta/models/gemini-sim:countTokens", headers=gemini_door, json={
                    "contents": [{"role": "user", "parts": [{"text": CHINESE}]}]})
                assert r.status_code == 200 and within(r.json()["totalTokens"], direct_chinese), r.text
                r = await client.post("/v1beta/models/gemini-sim:countTokens", headers=gemini_door, json={
                    "generateContentRequest": {"model": "models/gemini-sim", "tools": gemini_tools,
                                               "contents": [{"role": "user", "parts": [{"text": "hi"}]}]}})
                assert r.status_code == 200 and within(r.json()["totalTokens"], direct_schemas), r.text

                r = await client.post("/v1/messages/count_tokens", headers=anthropic_door, json={"model": "demo", "messages": [], "max_tokens": 1})
                assert r.status_code == 400
                keys_after = (await client.get("/admin/keys", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})).json()
            assert gw.ledger_entries() == [], "a count is answered by the gateway and charged nothing"
    assert keys_after == keys_before


def test_protocol_count_functions_agree_with_the_routes_inputs():
    doc = {"model": "m", "messages": [{"role": "user", "content": CHINESE}]}
    assert within(anthropic_messages.count_tokens(doc)["input_tokens"], tokens.count_text_tokens(CHINESE))
    g = {"contents": [{"parts": [{"text": CHINESE}]}]}
    assert within(gemini.count_tokens(g)["totalTokens"], tokens.count_text_tokens(CHINESE))
