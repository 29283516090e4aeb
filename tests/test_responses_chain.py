"""Stored responses and ``previous_response_id`` over HTTP, with the official openai SDK:
create, retrieve, list input items, chain against every upstream family, delete."""

from __future__ import annotations

import openai
import pytest
import trio

from tests.conftest import DEMO_KEY, base_config, running_gateway

OTHER_KEY = "th-other-key"
FAMILIES = {  # model -> what serves it
    "via-responses": ("simr", "openai_responses", "sim-gpt"),
    "via-chat": ("simc", "openai_chat", "sim-chat"),
    "via-anthropic": ("sima", "anthropic", "sim-claude"),
    "via-gemini": ("simg", "gemini", "sim-gemini"),
}


@pytest.fixture
def chain_doc(tmp_path):
    doc = base_config(tmp_path)
    for model, (provider, protocol, upstream) in FAMILIES.items():
        doc["providers"][provider] = {"family": "simulator", "embedded": True, "protocol": protocol}
        doc["models"][model] = {"targets": [f"{provider}/{upstream}"]}
        doc["pricing"][f"{provider}/*"] = {"input": "1.00", "output": "2.00"}
    doc["keys"].append({"name": "other", "key": OTHER_KEY, "credit_usd": "10.00"})
    return doc


def _client(gw, key: str = DEMO_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def _upstream_text(body: dict) -> str:
    """Everything a captured upstream body says, whatever its family's shape."""
    return str({k: body.get(k) for k in ("input", "messages", "contents", "system", "instructions")})


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("model", list(FAMILIES))
async def test_a_chained_request_sends_the_whole_conversation_to_every_family(chain_doc, model, stream):
    with trio.fail_after(20):
        async with running_gateway(chain_doc) as gw, _client(gw) as client:
            async def create(**kwargs):
                if not stream:
                    return await client.responses.create(model=model, **kwargs)
                async with await client.responses.create(model=model, stream=True, **kwargs) as events:
                    async for event in events:
                        if event.type == "response.completed":
                            return event.response
                raise AssertionError("no response.completed")

            first = await create(input="the first question", instructions="Be brief.")
            second = await create(input="the second question", previous_response_id=first.id)
            assert second.output_text and second.id != first.id
            assert (await client.responses.retrieve(second.id)).previous_response_id == first.id
            sent = gw.simulator.bodies[-1]
            text = _upstream_text(sent)
            assert "previous_response_id" not in sent
            assert "the first question" in text and first.output_text[:30] in text and "the second question" in text
            assert "Be brief." not in text  # instructions are not inherited
            charges = gw.ledger_entries()
            assert len(charges) == 2 and charges[1]["input"] > charges[0]["input"]  # billed as the upstream reports


async def test_store_retrieve_list_and_delete_with_the_sdk(chain_doc):
    with trio.fail_after(20):
        async with running_gateway(chain_doc) as gw, _client(gw) as client:
            items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"part {i}"}]}
                     for i in range(5)]
            created = await client.responses.create(model="via-chat", input=items, store=True)
            got = await client.responses.retrieve(created.id)
            assert got.id == created.id and got.output_text == created.output_text and got.status == "completed"
            page = await client.responses.input_items.list(created.id, limit=2, order="asc")
            assert len(page.data) == 2 and page.has_more
            texts = [item.content[0].text async for item in await client.responses.input_items.list(
                created.id, limit=2, order="asc")]
            assert texts == [f"part {i}" for i in range(5)]
            async with _client(gw, OTHER_KEY) as other:
                with pytest.raises(openai.NotFoundError):
                    await other.responses.retrieve(created.id)
                with pytest.raises(openai.NotFoundError):  # nor may it chain to it
                    await other.responses.create(model="via-chat", input="x", previous_response_id=created.id)
            await client.responses.delete(created.id)
            with pytest.raises(openai.NotFoundError):
                await client.responses.retrieve(created.id)
            with pytest.raises(openai.NotFoundError) as info:
                await client.responses.create(model="via-chat", input="x", previous_response_id=created.id)
            assert info.value.body["code"] == "previous_response_not_found"


async def test_store_false_keeps_nothing(chain_doc):
    with trio.fail_after(20):
        async with running_gateway(chain_doc) as gw, _client(gw) as client:
            created = await client.responses.create(model="via-responses", input="hi", store=False)
            with pytest.raises(openai.NotFoundError):
                await client.responses.retrieve(created.id)


async def test_stored_responses_survive_a_restart(chain_doc):
    with trio.fail_after(30):
        async with running_gateway(chain_doc) as gw, _client(gw) as client:
            created = await client.responses.create(model="via-anthropic", input="remember me")
        async with running_gateway(chain_doc) as gw, _client(gw) as client:
            got = await client.responses.retrieve(created.id)
            assert got.output_text == created.output_text
            chained = await client.responses.create(model="via-gemini", input="and now?",
                                                    previous_response_id=created.id)
            assert chained.output_text and "remember me" in _upstream_text(gw.simulator.bodies[-1])
