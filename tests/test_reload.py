"""Config reload (``POST /admin/reload``) on a running gateway: requests in flight finish
on the config they started with (a stream, a WebSocket turn), the next ones use the new
one, a bad file changes nothing, and ``/admin/config`` shows what runs without a secret."""

from __future__ import annotations

import importlib.util
import json
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal

import attrs
import httpx
import pytest
import trio

from actors.credentials import Snapshot
from actors.routing import ListModels

from gateway.generation import ConfigSource
from protocols.errors import GatewayFailure
from protocols.money import Price, cost_micro_usd
from protocols.unified import Usage
from providers.websocket import connect
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway
from tests.gated_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, GatedUpstream
from tests.gateway_process import write_config

AUTH = {"authorization": f"Bearer {DEMO_KEY}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
UPSTREAM_KEY = "sk-upstream-one-0123456789"
OTHER_UPSTREAM_KEY = "sk-upstream-two-9876543210"


def _config(tmp_path, upstream: GatedUpstream, **gated) -> dict:
    doc = base_config(tmp_path)
    doc["providers"]["gated"] = {"family": "openai_compat", "base_url": upstream.url,
                                 "credentials": [{"id": "g-1", "key": UPSTREAM_KEY}], **gated}
    doc["models"]["m"] = {"targets": ["gated/old-model"]}
    doc["pricing"]["gated/*"] = {"input": "1.00", "output": "2.00"}
    return doc


@asynccontextmanager
async def _gateway(tmp_path, doc):
    """The gateway in-process, started from ``doc`` written to a file a reload reads again."""
    path = write_config(tmp_path, doc)
    async with running_gateway(doc) as gw:
        gw.runtime.source = ConfigSource(path, env={})
        yield gw, path


def _chat(model: str, stream: bool) -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


async def _reload(client: httpx.AsyncClient, path, doc) -> httpx.Response:
    path.write_text(json.dumps(doc))
    return await client.post("/admin/reload", headers=ADMIN)


async def test_a_stream_keeps_its_target_and_price_across_a_reload_and_the_next_request_moves(tmp_path):
    upstream = GatedUpstream()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(upstream.serve)
            doc = _config(tmp_path, upstream)
            async with _gateway(tmp_path, doc) as (gw, path), httpx.AsyncClient(base_url=gw.url) as client:
                async with client.stream("POST", "/v1/chat/completions", json=_chat("m", True),
                                         headers=AUTH) as streamed:
                    assert streamed.status_code == 200
                    chunks = streamed.aiter_bytes()
                    first = await chunks.__anext__()
                    assert b"old " in first
                    doc["models"]["m"] = {"targets": ["sim/sim-chat"]}
                    doc["pricing"]["gated/*"] = {"input": "100.00", "output": "200.00"}
                    r = await _reload(client, path, doc)
                    assert r.status_code == 200, r.text
                    assert r.json()["generation"] == 2 and set(r.json()["changed"]) == {"models", "pricing"}
                    after = await client.post("/v1/chat/completions", json=_chat("m", False), headers=AUTH)
                    assert after.status_code == 200
                    assert "simulator" in after.json()["choices"][0]["message"]["content"]
                    upstream.release()
                    rest = b"".join([chunk async for chunk in chunks])
                assert rest.rstrip().endswith(b"data: [DONE]") and b"target" in rest
                assert upstream.models == ["old-model"]  # only the stream reached the old target
                await gw.usage_actor.wait_settles(2)
                by_id = {e["request_id"]: e for e in gw.ledger_entries()}
                old = by_id[streamed.headers["x-request-id"]]
                assert (old["provider"], old["model"], old["reason"]) == ("gated", "old-model", "end")
                old_price = Price(input=Decimal("1.00"), output=Decimal("2.00"))
                charged, _ = cost_micro_usd(Usage(input=PROMPT_TOKENS, output=COMPLETION_TOKENS), old_price)
                assert old["amount_micro"] == charged == 20
                assert by_id[after.headers["x-request-id"]]["provider"] == "sim"
            nursery.cancel_scope.cancel()


async def test_a_removed_credential_finishes_its_request_then_its_pool_closes(tmp_path):
    upstream = GatedUpstream()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(upstream.serve)
            doc = _config(tmp_path, upstream)
            async with _gateway(tmp_path, doc) as (gw, path), httpx.AsyncClient(base_url=gw.url) as client:
                async with client.stream("POST", "/v1/chat/completions", json=_chat("m", True),
                                         headers=AUTH) as streamed:
                    await upstream.wait(lambda u: u.started == 1)
                    doc["providers"]["gated"]["credentials"] = [{"id": "g-2", "key": OTHER_UPSTREAM_KEY}]
                    doc["providers"]["gated"]["headers"] = {"x-tenant": "two"}  # a new pool for the provider
                    assert (await _reload(client, path, doc)).status_code == 200
                    pool = (await client.get("/admin/credentials", headers=ADMIN)).json()["gated"]
                    assert {(c["id"], c["state"], c["in_flight"]) for c in pool} == {
                        ("g-2", "ready", 0), ("g-1", "retiring", 1)}
                    upstream.release()
                    body = b"".join([chunk async for chunk in streamed.aiter_bytes()])
                assert body.rstrip().endswith(b"data: [DONE]")
                await upstream.wait(lambda u: u.closed == 1)  # the old pool's connection, closed by the gateway
                pool = (await client.get("/admin/credentials", headers=ADMIN)).json()["gated"]
                assert [c["id"] for c in pool] == ["g-2"]
                r = await client.post("/v1/chat/completions", json=_chat("m", True), headers=AUTH)
                assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
                assert upstream.keys == [UPSTREAM_KEY, OTHER_UPSTREAM_KEY]
            nursery.cancel_scope.cancel()


async def test_a_broken_config_is_refused_with_its_paths_and_the_old_one_keeps_serving(tmp_path):
    doc = base_config(tmp_path)
    with trio.fail_after(15):
        async with _gateway(tmp_path, doc) as (gw, path), httpx.AsyncClient(base_url=gw.url) as client:
            broken = json.loads(json.dumps(doc))
            broken["models"]["demo"] = {"targets": ["sim/unpriced-model"], "hold_tokens": 5}
            del broken["pricing"]["sim/*"]
            r = await _reload(client, path, broken)
            assert r.status_code == 400
            problems = {p["path"]: p["message"] for p in r.json()["error"]["problems"]}
            assert "unknown setting" in problems["models.demo.hold_tokens"]
            assert "has no price" in problems["models.demo.targets[0]"]
            path.write_text("{not json")
            r = await client.post("/admin/reload", headers=ADMIN)
            assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["problems"][0]["message"]
            served = await client.post("/v1/chat/completions", json=_chat("demo", False), headers=AUTH)
            assert served.status_code == 200
            view = (await client.get("/admin/config", headers=ADMIN)).json()
            assert view["generation"] == 1 and view["config"]["models"]["demo"]["targets"] == ["sim/sim-chat"]


async def test_settings_that_need_a_restart_are_refused_by_name(tmp_path):
    doc = base_config(tmp_path)
    with trio.fail_after(15):
        async with _gateway(tmp_path, doc) as (gw, path), httpx.AsyncClient(base_url=gw.url) as client:
            moved = json.loads(json.dumps(doc))
            moved["server"].update(host="0.0.0.0", port=9999)
            moved["state_dir"] = str(tmp_path / "elsewhere")
            moved["models"]["new"] = {"targets": ["sim/sim-chat"]}
            r = await _reload(client, path, moved)
            assert r.status_code == 400
            problems = {p["path"]: p["message"] for p in r.json()["error"]["problems"]}
            assert set(problems) == {"server.host", "server.port", "state_dir"}
            assert all("needs a restart" in message for message in problems.values())
            view = (await client.get("/admin/config", headers=ADMIN)).json()  # nothing of it was applied
            assert view["generation"] == 1 and "new" not in view["config"]["models"]


async def test_observer_settings_built_at_start_are_refused_and_prompt_logging_is_not(tmp_path):
    doc = base_config(tmp_path)
    with trio.fail_after(15):
        async with _gateway(tmp_path, doc) as (gw, path), httpx.AsyncClient(base_url=gw.url) as client:
            changed = json.loads(json.dumps(doc))
            changed["metrics"] = {"port": 0, "enabled": False}
            changed["logging"] = {"level": "warning", "format": "console", "log_prompts": True}
            r = await _reload(client, path, changed)
            assert r.status_code == 400
            problems = {p["path"] for p in r.json()["error"]["problems"]}
            assert problems == {"metrics.enabled", "metrics.port", "logging.level", "logging.format"}
            if importlib.util.find_spec("opentelemetry.sdk") is not None:  # the otel extra: tracing loads
                traced = {**doc, "tracing": {"otlp_endpoint": "http://127.0.0.1:4318"}}
                r = await _reload(client, path, traced)
                assert [p["path"] for p in r.json()["error"]["problems"]] == ["tracing"]
            assert "logging.log_prompts" not in problems
            assert (await client.get("/metrics", headers=ADMIN)).status_code == 200  # still served
            doc["logging"] = {"log_prompts": True}
            assert (await _reload(client, path, doc)).status_code == 200


async def test_a_config_key_whose_value_an_admin_key_has_is_refused_by_its_path(tmp_path):
    doc = base_config(tmp_path)
    with trio.fail_after(15):
        async with _gateway(tmp_path, doc) as (gw, path), httpx.AsyncClient(base_url=gw.url) as client:
            made = await client.post("/admin/keys", headers=ADMIN, json={"name": "made", "unlimited": True,
                                                                          "key": "th-shared-value-1"})
            assert made.status_code in (200, 201)
            doc["keys"].append({"name": "clash", "key": "th-shared-value-1", "credit_usd": "1.00"})
            r = await _reload(client, path, doc)
            assert r.status_code == 400
            problems = r.json()["error"]["problems"]
            assert [p["path"] for p in problems] == [f"keys[{len(doc['keys']) - 1}].key"]
            assert "th-shared-value-1" not in r.text
            served = await client.post("/v1/chat/completions", json=_chat("demo", False), headers=AUTH)
            assert served.status_code == 200  # the meter is up and the old config serves
            actors = (await client.get("/admin/actors", headers=ADMIN)).json()
            assert "th-shared-value-1" not in json.dumps(actors)


async def test_request_body_limits_change_with_a_reload(tmp_path):
    doc = base_config(tmp_path)
    with trio.fail_after(15):
        async with _gateway(tmp_path, doc) as (gw, path), httpx.AsyncClient(base_url=gw.url) as client:
            big = {**_chat("demo", False), "user": "x" * 2000}
            assert (await client.post("/v1/chat/completions", json=big, headers=AUTH)).status_code == 200
            doc["server"]["max_body_bytes"] = 1000
            assert (await _reload(client, path, doc)).status_code == 200
            assert (await client.post("/v1/chat/completions", json=big, headers=AUTH)).status_code == 413
            r = await client.post("/admin/keys", headers=ADMIN, json={"name": "k", "unlimited": True,
                                                                       "models": ["x" * 2000]})
            assert r.status_code == 413


async def test_keys_new_in_the_config_are_created_and_existing_ones_stay_as_the_ledger_has_them(tmp_path):
    doc = base_config(tmp_path)
    with trio.fail_after(15):
        async with _gateway(tmp_path, doc) as (gw, path), httpx.AsyncClient(base_url=gw.url) as client:
            doc["keys"] = [{"name": "test", "key": DEMO_KEY, "credit_usd": "1.00"},
                           {"name": "fresh", "key": "th-fresh-key", "credit_usd": "3.00"}]
            r = await _reload(client, path, doc)
            assert r.status_code == 200 and r.json()["keys_created"] == ["fresh"]
            served = await client.post("/v1/chat/completions", json=_chat("demo", False),
                                       headers={"authorization": "Bearer th-fresh-key"})
            assert served.status_code == 200
            keys = {k["name"]: k for k in (await client.get("/admin/keys", headers=ADMIN)).json()["keys"]}
            assert keys["test"]["credit_usd"] == "100.000000"  # the ledger owns a key once it exists
            assert keys["fresh"]["credit_usd"] == "3.000000"
            r = await client.post("/admin/reload", headers=ADMIN)  # the same file again: nothing new
            assert r.status_code == 200 and r.json()["keys_created"] == [] and r.json()["changed"] == []


async def test_admin_config_shows_the_running_config_without_a_secret(tmp_path):
    upstream = GatedUpstream()
    doc = _config(tmp_path, upstream, headers={"x-api-key": "header-secret-value", "x-tenant": "visible"},
                  proxy="http://user:proxy-password-42@127.0.0.1:3128",
                  adapters=[{"name": "extra_headers", "headers": {"x-portkey-api-key": "adapter-secret-77"}}])
    secrets = [UPSTREAM_KEY, ADMIN_TOKEN, DEMO_KEY, "header-secret-value", "proxy-password-42", "adapter-secret-77"]
    with trio.fail_after(15):
        async with _gateway(tmp_path, doc) as (gw, path), httpx.AsyncClient(base_url=gw.url) as client:
            r = await client.get("/admin/config", headers=ADMIN)
            assert r.status_code == 200
            assert not [s for s in secrets if s in r.text]
            view = r.json()
            assert view["generation"] == 1 and view["source"] == str(path)
            datetime.fromisoformat(view["loaded_at"])
            config = view["config"]
            assert config["admin"] == {"token": "[redacted]"}
            assert config["keys"][0]["name"] == "test" and config["keys"][0]["key"] == "[redacted]"
            gated = config["providers"]["gated"]
            assert gated["credentials"][0] == {**gated["credentials"][0], "id": "g-1", "key": "[redacted]"}
            assert gated["headers"] == {"x-api-key": "[redacted]", "x-tenant": "visible"}
            assert gated["proxy"] == "http://user:[redacted]@127.0.0.1:3128"
            assert gated["adapters"] == [{"name": "extra_headers", "headers": {"x-portkey-api-key": "[redacted]"}}]
            assert config["pricing"]["gated/*"]["input"] == "1.00"
            assert (await client.get("/admin/config")).status_code == 401
            doc["admin"]["token"] = "th-new-admin-token"
            assert (await _reload(client, path, doc)).status_code == 200
            assert (await client.get("/admin/config", headers=ADMIN)).status_code == 401  # the old token is gone
            r = await client.get("/admin/config", headers={"authorization": "Bearer th-new-admin-token"})
            assert r.json()["generation"] == 2 and "th-new-admin-token" not in r.text


async def test_each_websocket_turn_runs_on_the_config_current_when_it_starts(tmp_path):
    doc = base_config(tmp_path)
    doc["providers"]["simr"] = {"family": "simulator", "embedded": True, "protocol": "openai_responses"}
    doc["models"]["m"] = {"targets": ["simr/sim-gpt"]}
    doc["pricing"]["simr/*"] = {"input": "1.25", "output": "10.00"}

    async def turn(ws) -> dict:
        await ws.send_text(json.dumps({"type": "response.create", "model": "m", "input": "hi"}))
        while True:
            event = json.loads(await ws.receive_text())
            if event["type"] in ("response.completed", "response.failed", "error"):
                return event

    with trio.fail_after(20):
        async with _gateway(tmp_path, doc) as (gw, path), httpx.AsyncClient(base_url=gw.url) as client:
            url = gw.url.replace("http://", "ws://") + "/v1/responses"
            async with connect(url, {"authorization": f"Bearer {DEMO_KEY}"}) as ws:
                assert (await turn(ws))["type"] == "response.completed"
                doc["models"]["m"] = {"targets": ["simr/sim-gpt-next"]}
                assert (await _reload(client, path, doc)).status_code == 200
                assert (await turn(ws))["type"] == "response.completed"
            await gw.usage_actor.wait_settles(2)
            assert [e["model"] for e in gw.ledger_entries()] == ["sim-gpt", "sim-gpt-next"]


async def test_an_actor_restarted_after_a_reload_comes_back_with_the_reloaded_config(tmp_path):
    @attrs.frozen
    class Unhandled:
        """No actor handles this: asking with it crashes the actor, which is restarted."""

    doc = base_config(tmp_path)
    with trio.fail_after(15):
        async with _gateway(tmp_path, doc) as (gw, path), httpx.AsyncClient(base_url=gw.url) as client:
            doc["models"]["later"] = {"targets": ["sim/sim-chat"]}
            doc["providers"]["sim"]["credentials"] = [{"id": "sim-a", "key": "sim-key-a"}]
            assert (await _reload(client, path, doc)).status_code == 200
            for mailbox in (gw.runtime.actors.routing, gw.runtime.actors.credentials):
                with pytest.raises(GatewayFailure):
                    await mailbox.ask(Unhandled())
            # each answer below comes from the restarted actor, built from the running config
            assert "later" in await gw.runtime.actors.routing.ask(ListModels())
            pools = await gw.runtime.actors.credentials.ask(Snapshot())
            assert [c["id"] for c in pools["sim"]] == ["sim-a"]
            assert {name: slot["restarts"] for name, slot in gw.runtime.supervisor.snapshot().items()
                    if name in ("routing", "credentials")} == {"routing": 1, "credentials": 1}
