import httpx
import trio

from tests.conftest import DEMO_KEY, running_gateway


async def test_streams_a_chat_completion_with_usage(config_doc):
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as client:
                body = {"model": "demo", "stream": True, "stream_options": {"include_usage": True},
                        "messages": [{"role": "user", "content": "hi"}]}
                r = await client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {DEMO_KEY}"})
                assert r.status_code == 200
                chunks = [line for line in r.text.split("\n\n") if line]
                assert chunks[-1] == "data: [DONE]"
                assert '"usage"' in chunks[-2]
