"""Stored Responses in the shared backend: a conversation started on one instance
continues on another, and a response deleted on one is gone on every one."""

from __future__ import annotations

import openai
import psycopg
import pytest
import trio

from actors.store_messages import Flush, Sweep

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


async def test_the_stores_byte_cap_bounds_every_instances_responses_together(tmp_path, redis_url, pg_dsn):
    """Each instance's own share stays under ``max_bytes``, both together do not: a
    sweep on either brings the table under it, whichever instance stored what goes."""
    cap = 12_000
    docs = [shared_config(tmp_path, pg_dsn, name, redis_url=redis_url) for name in ("a", "b")]
    for doc in docs:
        doc["store"] = {"max_bytes": cap}
    stored: list[str] = []
    with trio.fail_after(60):
        async with running_gateway(docs[0]) as a, running_gateway(docs[1]) as b, \
                _client(a.url) as on_a, _client(b.url) as on_b:
            stores = [gw.gateway.runtime.actors.store for gw in (a, b)]
            while _stored_bytes(pg_dsn) <= cap:
                for client, store in zip((on_a, on_b), stores):
                    stored.append((await client.responses.create(model="demo", input="a question")).id)
                    await store.ask(Flush())
            assert _stored_ids(pg_dsn) == set(stored), "each instance alone is under the cap: none evicted"
            with psycopg.connect(pg_dsn) as conn:  # a's were stored a minute before b's
                conn.execute("UPDATE responses SET created_at = created_at - 60 WHERE id = ANY(%s)", (stored[0::2],))
            assert await stores[1].ask(Sweep()) >= 1
            await stores[1].ask(Flush())
            kept = _stored_ids(pg_dsn)
            assert _stored_bytes(pg_dsn) <= cap and kept < set(stored)
            # b's sweep removed the oldest: a's, which b never stored
            gone_from_a = [i for i in stored[0::2] if i not in kept]
            assert gone_from_a and set(stored[1::2]) <= kept
            with pytest.raises(openai.NotFoundError):
                await on_a.responses.retrieve(gone_from_a[0])


def _stored_bytes(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()[0]


def _stored_ids(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM responses")}
