"""SIGHUP on a real ``tollhouse serve`` process: the config file is read again; a stream
in flight ends on its old target; a broken file is refused and logged by path."""

from __future__ import annotations

import json
import signal

import httpx
import trio

from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config
from tests.gateway_process import serve_process, write_config

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
AUTH = {"authorization": f"Bearer {DEMO_KEY}"}
RELOADED = "tollhouse reloaded "
REFUSED = "tollhouse reload refused "


def _chat(model: str, words: int) -> dict:
    return {"model": model, "stream": True, "messages": [{"role": "user", "content": f"[[sim tokens={words}]] hi"}]}


async def test_sighup_reloads_the_file_and_a_broken_one_is_refused(tmp_path):
    doc = base_config(tmp_path)
    doc["simulator"] = {"tokens_per_second": 20}  # a 40-word stream lasts about 2 s
    doc["pricing"]["sim/sim-fast"] = {"input": "5.00", "output": "5.00"}
    path = write_config(tmp_path, doc)
    with trio.fail_after(40):
        async with serve_process(path) as gateway:
            url = await gateway.url()
            async with httpx.AsyncClient(base_url=url, timeout=20) as client:
                async with client.stream("POST", "/v1/chat/completions", json=_chat("demo", 40),
                                         headers=AUTH) as streamed:
                    assert streamed.status_code == 200
                    chunks = streamed.aiter_bytes()
                    await chunks.__anext__()
                    doc["models"]["demo"] = {"targets": ["sim/sim-fast"]}
                    doc["aliases"] = {"renamed": "demo"}
                    path.write_text(json.dumps(doc))
                    gateway.send_signal(signal.SIGHUP)
                    assert (await gateway.line(RELOADED)).endswith("generation 2")
                    after = await client.post("/v1/chat/completions", json=_chat("renamed", 2), headers=AUTH)
                    assert after.status_code == 200
                    rest = b"".join([chunk async for chunk in chunks])
                assert rest.rstrip().endswith(b"data: [DONE]")
                records = {r["request_id"]: r for r in
                           (await client.get("/admin/usage/records", headers=ADMIN)).json()["records"]}
                assert records[streamed.headers["x-request-id"]]["model"] == "sim-chat"
                assert records[after.headers["x-request-id"]]["model"] == "sim-fast"

                path.write_text(json.dumps({**doc, "models": {"demo": {"targets": ["nowhere/x"]}}}))
                gateway.send_signal(signal.SIGHUP)
                assert "generation 2 keeps running" in await gateway.line(REFUSED)
                assert "is not 'provider/model'" in await gateway.line("config reload refused: models.demo.targets[0]")
                served = await client.post("/v1/chat/completions", json=_chat("renamed", 2), headers=AUTH)
                assert served.status_code == 200
            gateway.send_signal(signal.SIGTERM)
            assert await gateway.wait() == 0
