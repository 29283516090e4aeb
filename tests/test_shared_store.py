"""Stored Responses in the shared backend: a conversation started on one instance
continues on another, and a response deleted on one is gone on every one."""

from __future__ import annotations

import openai
import trio

from tests.conftest import DEMO_KEY, running_gateway
from tests.shared_backend import shared_config


def _client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=DEMO_KEY, max_retries=0)


async def test_a_chain_started_on_one_instance_continues_on_the_other(tmp_path, redis_url, pg_dsn):
    docs = [shared_config(tmp_path, pg_dsn, name, redis_url=redis_url) for name in ("a", "b")]
    with trio.fail_after(60):
        async with running_gateway(docs[0]) as a, running_gateway(docs[1]) as b, \
                _client(a.url) as on_a, _client(b.url) as on_b:
            first = await on_a.responses.create(model="demo", input="the first question")
            second = await on_b.responses.create(model="demo", input="the second question",
                                                 previous_response_id=first.id)
            sent = str(b.simulator.bodies[-1])
            assert "the first question" in sent and "the second question" in sent
            assert first.output_text[:20] in sent
            third = await on_a.responses.create(model="demo", input="the third", previous_response_id=second.id)
            assert third.output_text
            assert (await on_a.responses.retrieve(second.id)).previous_response_id == first.id
            await on_b.responses.delete(first.id)
            for client in (on_a, on_b):
                try:
                    await client.responses.retrieve(first.id)
                except openai.NotFoundError:
                    continue
                raise AssertionError("a deleted response is still served")
