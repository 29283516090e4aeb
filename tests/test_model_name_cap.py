"""A model name longer than ``MAX_MODEL_NAME`` is refused where each protocol parses
its request, so every door that parses refuses it the same way: LLM calls, WebSocket
turns and token counts, with the error naming ``model``."""

from __future__ import annotations

import httpx
import pytest
import trio

from protocols import anthropic_messages, gemini, openai_chat, openai_responses
from protocols.errors import InvalidRequest
from protocols.validate import MAX_MODEL_NAME
from tests.conftest import DEMO_KEY, base_config, running_gateway

LONG = "m" * (MAX_MODEL_NAME + 1)
HI = [{"role": "user", "content": "hi"}]

PARSERS = {
    "openai_chat": lambda model: openai_chat.parse_request({"model": model, "messages": HI}),
    "openai_responses": lambda model: openai_responses.parse_request({"model": model, "input": "hi"}),
    "anthropic": lambda model: anthropic_messages.parse_request({"model": model, "max_tokens": 5, "messages": HI}),
    "gemini": lambda model: gemini.parse_request({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
                                                 model=model, stream=False),
}


@pytest.mark.parametrize("protocol", sorted(PARSERS))
def test_every_parser_refuses_a_model_name_past_the_cap(protocol):
    assert PARSERS[protocol]("m" * MAX_MODEL_NAME).model == "m" * MAX_MODEL_NAME
    with pytest.raises(InvalidRequest) as err:
        PARSERS[protocol](LONG)
    assert err.value.param == "model"


async def test_the_counting_doors_refuse_it_too(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(base_config(tmp_path)) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            r = await client.post("/v1/messages/count_tokens", json={"model": LONG, "messages": HI},
                                  headers={"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01"})
            assert r.status_code == 400 and "longer than" in r.json()["error"]["message"]
            r = await client.post(f"/v1beta/models/{LONG}:countTokens", headers={"x-goog-api-key": DEMO_KEY},
                                  json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
            assert r.status_code == 400 and "longer than" in r.json()["error"]["message"]
            assert gw.simulator.counts == []
