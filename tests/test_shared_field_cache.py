"""The field cache on the shared backend: a conversation that moves to another
instance still gets its signed fields back.

An Anthropic client (thinking on, a tool loop, its session header) talks to a model a
Gemini upstream serves. Gemini's call comes back to the client without its
``thoughtSignature``; the client's next turn reaches the other instance, which must
send the signature back on that call. The two instances' simulators stand for one
vendor: they share one signer, and refuse a signature it did not make.
"""

from __future__ import annotations

import anthropic
import httpx
import trio

from tests.conftest import ADMIN_TOKEN, DEMO_KEY, running_gateway
from tests.shared_backend import shared_config
from tests.test_field_cache import SESSION, Conversation

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def _config(tmp_path, pg_dsn, redis_url, name):
    doc = shared_config(tmp_path, pg_dsn, name, redis_url=redis_url)
    doc["providers"] = {"gem": {"family": "simulator", "embedded": True, "protocol": "gemini",
                                "credentials": [{"id": "g", "key": "kg"}]}}
    doc["models"] = {"sonnet": {"targets": ["gem/gemini-2.5-sim"]}}
    doc["pricing"] = {"gem/*": {"input": "1.00", "output": "2.00"}}
    doc["keys"] = [{"name": "test", "key": DEMO_KEY, "credit_usd": "100.00"}]
    return doc


def _signed_calls(body: dict) -> dict[str, str | None]:
    """Each function call the upstream was sent back, with its signature."""
    return {p["functionCall"]["id"]: p.get("thoughtSignature")
            for c in body["contents"] if c.get("role") == "model" for p in c["parts"] if "functionCall" in p}


async def test_a_gemini_signature_kept_on_one_instance_goes_back_from_the_other(tmp_path, pg_dsn, redis_url):
    with trio.fail_after(60):
        async with running_gateway(_config(tmp_path, pg_dsn, redis_url, "a")) as a, \
                running_gateway(_config(tmp_path, pg_dsn, redis_url, "b")) as b:
            b.simulator.signer = a.simulator.signer  # one vendor behind both instances
            sdks = [anthropic.AsyncAnthropic(base_url=gw.url, api_key=DEMO_KEY, max_retries=0) for gw in (a, b)]
            try:
                talk = Conversation(sdks[0])
                first = await talk.turn("What is the weather in Paris?")
                [call] = [blk for blk in first if blk["type"] == "tool_use"]
                assert all(blk.get("signature", "") == "" for blk in first if blk["type"] == "thinking")
                talk.sdk = sdks[1]  # the next turn lands on the other instance
                final = await talk.answer_tool()
                assert any(blk["type"] == "text" for blk in final)
            finally:
                for sdk in sdks:
                    await sdk.close()
            assert len(b.simulator.bodies) == 1
            signature = _signed_calls(b.simulator.bodies[0]).get(call["id"])
            assert a.simulator.signer.valid("gemini", "The user wants an answer; a tool may help.", signature)
            async with httpx.AsyncClient(timeout=10) as http:
                stats = (await http.get(b.url + "/admin/field-cache", headers=ADMIN)).json()
            assert stats["shared"]["loaded"] >= 1 and signature not in str(stats)


async def test_with_redis_away_an_instance_still_puts_back_what_it_kept(tmp_path, pg_dsn, redis_server, redis_url):
    with trio.fail_after(60):
        async with running_gateway(_config(tmp_path, pg_dsn, redis_url, "a")) as a:
            link = a.runtime.redis.link
            redis_server.stop()
            sdk = anthropic.AsyncAnthropic(base_url=a.url, api_key=DEMO_KEY, max_retries=0)
            try:
                talk = Conversation(sdk)
                first = await talk.turn("What is the weather in Paris?")  # finds Redis gone
                [call] = [blk for blk in first if blk["type"] == "tool_use"]
                await link.wait_state(link.state.DOWN)
                final = await talk.answer_tool()
                assert any(blk["type"] == "text" for blk in final)
            finally:
                await sdk.close()
                redis_server.start()
            signature = _signed_calls(a.simulator.bodies[-1]).get(call["id"])
            assert a.simulator.signer.valid("gemini", "The user wants an answer; a tool may help.", signature)
            assert link.stats().fallbacks.get("fields", 0) >= 1
