"""Stored responses through a real gateway: the official openai SDK and raw HTTP.

Records are put by telling the running store directly, as the request path does.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest
import trio

from actors.store import Put, StoredResponse
from actors.usage_messages import UpdateKey, hash_key
from tests.conftest import DEMO_KEY, base_config, running_gateway

OTHER_KEY = "th-other-key"
QUIET_KEY = "th-quiet-key"
INPUTS = ({"role": "user", "content": "first"},
          {"type": "message", "id": "msg_client_2", "role": "assistant", "content": "second"},
          {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
          {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
          {"role": "user", "content": [{"type": "input_text", "text": "fifth"}]})
NOT_FOUND = "Response with id '{}' not found."


@pytest.fixture
def store_doc(tmp_path):
    doc = base_config(tmp_path)
    doc["providers"]["simr"] = {"family": "simulator", "embedded": True, "protocol": "openai_responses"}
    doc["models"]["gpt-sim"] = {"targets": ["simr/sim-gpt"]}
    doc["pricing"]["simr/sim-gpt"] = {"input": "1.25", "output": "10.00"}
    doc["keys"] += [{"name": "other", "key": OTHER_KEY, "credit_usd": "1.00"},
                    {"name": "quiet", "key": QUIET_KEY, "credit_usd": "1.00"}]
    return doc


def stored(rid: str, key: str = DEMO_KEY, inputs: tuple = INPUTS) -> StoredResponse:
    now = time.time()
    response = {"id": rid, "object": "response", "created_at": int(now), "status": "completed", "model": "gpt-sim",
                "output": [{"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB-opaque"},
                           {"type": "message", "id": "msg_out", "role": "assistant", "status": "completed",
                            "content": [{"type": "output_text", "text": "It is sunny.", "annotations": []}]}],
                "usage": {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13}, "parallel_tool_calls": True,
                "tool_choice": "auto", "tools": []}
    return StoredResponse(id=rid, owner=hash_key(key), previous_id=None, model="gpt-sim", provider="simr",
                          credential="simr-embedded", input=inputs, response=response, created_at=now)


def sdk(gw, key: str = DEMO_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def auth(key: str = DEMO_KEY) -> dict:
    return {"authorization": f"Bearer {key}"}


async def test_retrieve_page_and_delete_with_the_sdk(store_doc):
    with trio.fail_after(15):
        async with running_gateway(store_doc) as gw, sdk(gw) as client:
            await gw.runtime.actors.store.tell(Put(stored("resp_abc")))
            reply = await client.responses.retrieve("resp_abc")
            assert reply.id == "resp_abc" and reply.status == "completed" and reply.output_text == "It is sunny."
            assert reply.output[0].encrypted_content == "gAAAAB-opaque"
            assert reply.usage.output_tokens == 4

            first = await client.responses.input_items.list("resp_abc", limit=2)
            assert len(first.data) == 2 and first.has_more
            items = [item async for item in await client.responses.input_items.list("resp_abc", limit=2)]
            assert [item.type for item in items] == ["message", "function_call_output", "function_call", "message",
                                                     "message"]  # newest first, the API's default
            assert items[-1].content[0].text == "first" and items[-2].id == "msg_client_2"
            assert items[0].content[0].text == "fifth" and items[1].output == "sunny"
            assert len({item.id for item in items}) == 5
            ascending = [item.id async for item in await client.responses.input_items.list(
                "resp_abc", limit=3, order="asc")]
            assert ascending == [item.id for item in reversed(items)]

            await client.responses.delete("resp_abc")
            with pytest.raises(openai.NotFoundError) as gone:
                await client.responses.retrieve("resp_abc")
            assert gone.value.body == {"message": NOT_FOUND.format("resp_abc"), "type": "invalid_request_error",
                                       "param": None, "code": None}
            with pytest.raises(openai.NotFoundError):
                await client.responses.delete("resp_abc")
            with pytest.raises(openai.NotFoundError):
                await client.responses.input_items.list("resp_abc")


async def test_another_key_sees_the_same_404_as_an_unknown_id(store_doc):
    with trio.fail_after(15):
        async with running_gateway(store_doc) as gw, sdk(gw, OTHER_KEY) as other, sdk(gw, "th-wrong") as wrong:
            await gw.runtime.actors.store.tell(Put(stored("resp_mine")))
            errors = []
            for call in (lambda: other.responses.retrieve("resp_mine"), lambda: other.responses.retrieve("resp_none"),
                         lambda: other.responses.input_items.list("resp_mine"),
                         lambda: other.responses.delete("resp_mine")):
                with pytest.raises(openai.NotFoundError) as refused:
                    await call()
                errors.append(refused.value.body["message"])
            assert errors == [NOT_FOUND.format(i) for i in ("resp_mine", "resp_none", "resp_mine", "resp_mine")]
            with pytest.raises(openai.AuthenticationError):
                await wrong.responses.retrieve("resp_mine")
            await gw.runtime.actors.usage.ask(UpdateKey("test", disabled=True))
            async with sdk(gw) as owner:
                with pytest.raises(openai.AuthenticationError):
                    await owner.responses.retrieve("resp_mine")
            await gw.runtime.actors.usage.ask(UpdateKey("test", disabled=False))
            async with sdk(gw) as owner:
                assert (await owner.responses.retrieve("resp_mine")).id == "resp_mine"  # untouched by the others


@pytest.mark.parametrize("query,param", [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=two", "limit"), ("order=newest", "order"),
    ("after=msg_unknown", "after"), ("before=msg_unknown", "before"),
])
async def test_bad_paging_parameters_are_named(store_doc, query, param):
    with trio.fail_after(15):
        async with running_gateway(store_doc) as gw, httpx.AsyncClient(base_url=gw.url) as http:
            await gw.runtime.actors.store.tell(Put(stored("resp_p")))
            r = await http.get(f"/v1/responses/resp_p/input_items?{query}", headers=auth())
            assert r.status_code == 400
            error = r.json()["error"]
            assert error["param"] == param and error["type"] == "invalid_request_error"
            stranger = await http.get(f"/v1/responses/resp_p/input_items?{query}", headers=auth("th-wrong"))
            assert stranger.status_code == 401  # the key is checked before anything else


async def test_pages_before_and_after_an_item(store_doc):
    with trio.fail_after(15):
        async with running_gateway(store_doc) as gw, httpx.AsyncClient(base_url=gw.url, headers=auth()) as http:
            await gw.runtime.actors.store.tell(Put(stored("resp_q")))
            whole = (await http.get("/v1/responses/resp_q/input_items?order=asc")).json()
            ids = [item["id"] for item in whole["data"]]
            assert len(ids) == 5 and not whole["has_more"] and (whole["first_id"], whole["last_id"]) == (ids[0], ids[-1])
            page = (await http.get(f"/v1/responses/resp_q/input_items?order=asc&after={ids[1]}&limit=2")).json()
            assert [item["id"] for item in page["data"]] == ids[2:4] and page["has_more"]
            page = (await http.get(f"/v1/responses/resp_q/input_items?order=asc&before={ids[3]}&limit=2")).json()
            assert [item["id"] for item in page["data"]] == ids[1:3] and page["has_more"]
            page = (await http.get(f"/v1/responses/resp_q/input_items?order=asc&after={ids[0]}&before={ids[3]}"))
            assert [item["id"] for item in page.json()["data"]] == ids[1:3] and not page.json()["has_more"]
            replay = await http.get("/v1/responses/resp_q?stream=true")
            assert replay.status_code == 400 and replay.json()["error"]["param"] == "stream"


async def test_one_path_serves_get_and_delete_and_refuses_other_methods(store_doc):
    with trio.fail_after(15):
        async with running_gateway(store_doc) as gw, httpx.AsyncClient(base_url=gw.url, headers=auth()) as http:
            await gw.runtime.actors.store.tell(Put(stored("resp_m")))
            assert (await http.get("/v1/responses/resp_m")).status_code == 200
            for method, path in (("POST", "/v1/responses/resp_m"), ("PUT", "/v1/responses/resp_m"),
                                 ("POST", "/v1/responses/resp_m/input_items"), ("GET", "/v1/responses"),
                                 ("PUT", "/v1/responses")):
                r = await http.request(method, path)
                assert r.status_code == 405, (method, path)
                assert r.json()["error"]["message"] == f"Method {method} is not allowed on {path}."
            assert (await http.delete("/v1/responses/resp_m")).json() == {
                "id": "resp_m", "object": "response", "deleted": True}
            async with sdk(gw) as client:
                created = await client.responses.create(model="gpt-sim", input="hi")  # POST on its own path
                assert created.status == "completed"


async def test_a_disabled_store_answers_404(store_doc):
    store_doc["store"] = {"enabled": False}
    with trio.fail_after(15):
        async with running_gateway(store_doc) as gw, sdk(gw) as client:
            assert gw.runtime.actors.store is None and "store" not in gw.runtime.supervisor.slots
            with pytest.raises(openai.NotFoundError) as refused:
                await client.responses.retrieve("resp_any")
            assert refused.value.body["message"] == NOT_FOUND.format("resp_any")
            async with sdk(gw, "th-wrong") as wrong:
                with pytest.raises(openai.AuthenticationError):
                    await wrong.responses.retrieve("resp_any")


async def test_stored_responses_survive_a_gateway_restart(store_doc):
    with trio.fail_after(20):
        async with running_gateway(store_doc) as gw:
            await gw.runtime.actors.store.tell(Put(stored("resp_kept")))
        async with running_gateway(store_doc) as gw, sdk(gw) as client:
            assert (await client.responses.retrieve("resp_kept")).output_text == "It is sunny."
            assert len([item async for item in await client.responses.input_items.list("resp_kept")]) == 5
