"""Revoked, expired and over-budget keys through the real gateway: every front door
refuses them in its own protocol's shape, nothing is charged for a refusal, the
history stays in the ledger, and a revocation outlives a restart."""

from __future__ import annotations

import copy
import json
from decimal import Decimal

import httpx
import pytest
import trio

from actors.key_terms import parse_utc
from gateway.config import parse_config
from gateway.generation import ReloadRefused
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, running_gateway

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def doors(key: str) -> dict:
    """(path, headers, body, how the protocol shapes an error body) for each front door."""
    chat = {"model": "demo", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    openai_error = lambda body: body["error"]["type"]  # noqa: E731
    return {
        "chat": ("/v1/chat/completions", {"authorization": f"Bearer {key}"}, chat, openai_error),
        "chat-stream": ("/v1/chat/completions", {"authorization": f"Bearer {key}"}, {**chat, "stream": True},
                        openai_error),
        "responses": ("/v1/responses", {"authorization": f"Bearer {key}"},
                      {"model": "demo", "max_output_tokens": 16, "input": "hi"}, openai_error),
        "anthropic": ("/v1/messages", {"x-api-key": key, "anthropic-version": "2023-06-01"}, chat,
                      lambda body: body["type"] == "error" and body["error"]["type"]),
        "gemini": ("/v1beta/models/demo:generateContent", {"x-goog-api-key": key},
                   {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
                   lambda body: body["error"]["status"]),
    }


EXPECTED_KIND = {
    401: {"chat": "authentication_error", "chat-stream": "authentication_error", "responses": "authentication_error",
          "anthropic": "authentication_error", "gemini": "UNAUTHENTICATED"},
    429: {"chat": "rate_limit_error", "chat-stream": "rate_limit_error", "responses": "rate_limit_error",
          "anthropic": "rate_limit_error", "gemini": "RESOURCE_EXHAUSTED"},
}


async def refused_everywhere(http: httpx.AsyncClient, key: str, status: int, words: str) -> list:
    """Every door answers ``status`` in its own error shape, its message holding ``words``."""
    answers = []
    for name, (path, headers, body, kind) in doors(key).items():
        r = await http.post(path, json=body, headers=headers)
        assert r.status_code == status, (name, r.text)
        assert kind(r.json()) == EXPECTED_KIND[status][name], (name, r.text)
        assert words in r.text, (name, r.text)
        answers.append(r)
    return answers


async def served(http: httpx.AsyncClient, gw, key: str) -> None:
    before = gw.usage_actor.settles
    path, headers, body, _ = doors(key)["chat"]
    r = await http.post(path, json=body, headers=headers)
    assert r.status_code == 200, r.text
    await gw.usage_actor.wait_settles(before + 1)


async def test_a_revoked_key_gets_401_everywhere_and_keeps_its_history(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as http:
            made = (await http.post("/admin/keys", headers=ADMIN, json={"name": "temp", "unlimited": True})).json()
            await served(http, gw, made["key"])
            r = await http.delete("/admin/keys/temp", headers=ADMIN)
            assert r.status_code == 200 and r.json()["revoked"] is True and r.json()["revoked_at"]
            entries = len(gw.ledger_entries())
            await refused_everywhere(http, made["key"], 401, "revoked")
            assert len(gw.ledger_entries()) == entries  # a refusal is never charged
            assert gw.usage_actor.snapshot()["open_reservations"] == 0
            again = await http.delete("/admin/keys/temp", headers=ADMIN)
            assert again.status_code == 200 and again.json() == r.json()  # idempotent
            unknown = await http.delete("/admin/keys/nobody", headers=ADMIN)
            assert unknown.status_code == 404 and "nobody" in unknown.json()["error"]["message"]
            patch = await http.patch("/admin/keys/temp", headers=ADMIN, json={"disabled": False})
            assert patch.status_code == 400 and "revoked" in patch.json()["error"]["message"]
            records = (await http.get("/admin/usage/records", headers=ADMIN)).json()["records"]
            assert [e["kind"] for e in records if e["key_name"] == "temp"] == ["charge"]
            listed = {k["name"]: k for k in (await http.get("/admin/keys", headers=ADMIN)).json()["keys"]}
            assert listed["temp"]["revoked"] is True and listed["test"]["revoked"] is False
            await served(http, gw, DEMO_KEY)  # other keys are untouched


async def test_a_revoked_config_key_stays_revoked_across_reload_and_restart(config_doc):
    with trio.fail_after(40):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as http:
            await served(http, gw, DEMO_KEY)
            assert (await http.delete("/admin/keys/test", headers=ADMIN)).status_code == 200
            await refused_everywhere(http, DEMO_KEY, 401, "revoked")
        async with running_gateway(copy.deepcopy(config_doc)) as gw, httpx.AsyncClient(base_url=gw.url) as http:
            await refused_everywhere(http, DEMO_KEY, 401, "revoked")
            await gw.runtime.reload(parse_config(copy.deepcopy(config_doc), env={}))  # it still lists the key
            await refused_everywhere(http, DEMO_KEY, 401, "revoked")
            listed = {k["name"]: k for k in (await http.get("/admin/keys", headers=ADMIN)).json()["keys"]}
            assert listed["test"]["revoked"] is True
            records = (await http.get("/admin/usage/records", headers=ADMIN)).json()["records"]
            assert [e["key_name"] for e in records] == ["test"]


async def test_an_expired_key_gets_401_everywhere_and_keeps_its_history(config_doc):
    config_doc["keys"][0]["expires_at"] = "2999-01-01T00:00:00Z"
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as http:
            listed = (await http.get("/admin/keys", headers=ADMIN)).json()["keys"]
            assert listed[0]["expires_at"] == "2999-01-01T00:00:00Z" and listed[0]["expired"] is False
            await served(http, gw, DEMO_KEY)
            r = await http.patch("/admin/keys/test", headers=ADMIN, json={"expires_at": "2020-01-01T00:00:00Z"})
            assert r.status_code == 200 and r.json()["expired"] is True
            entries = len(gw.ledger_entries())
            await refused_everywhere(http, DEMO_KEY, 401, "expired at 2020-01-01T00:00:00Z")
            assert len(gw.ledger_entries()) == entries
            records = (await http.get("/admin/usage/records", headers=ADMIN)).json()["records"]
            assert [e["key_name"] for e in records] == ["test"]
            r = await http.post("/admin/keys", headers=ADMIN, json={"name": "old", "unlimited": True,
                                                                   "expires_at": "2000-01-01T00:00:00Z"})
            assert r.status_code == 201
            await refused_everywhere(http, r.json()["key"], 401, "expired")


class Wall:
    """The meter's wall clock, set by the test (the core's clock argument)."""

    def __init__(self, iso: str) -> None:
        self.t = float(parse_utc(iso))

    def __call__(self) -> float:
        return self.t


async def test_a_daily_budget_refuses_with_429_and_resets_at_the_utc_boundary(config_doc):
    wall = Wall("2026-12-02T23:59:00Z")
    with trio.fail_after(40):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as http:
            gw.usage_actor.core.wall = wall
            r = await http.patch("/admin/keys/test", headers=ADMIN,
                                 json={"budget": {"period": "day", "limit_usd": "1.00"}})
            assert r.status_code == 200 and r.json()["budget"]["resets_at"] == "2026-12-03T00:00:00Z"
            await served(http, gw, DEMO_KEY)
            spent = (await http.get("/admin/keys", headers=ADMIN)).json()["keys"][0]["budget"]["spent_usd"]
            assert spent != "0.000000"
            # the limit lowered to twice what one request costs (the day's count is kept):
            # what is left is less than the next request's hold
            r = await http.patch("/admin/keys/test", headers=ADMIN,
                                 json={"budget": {"period": "day", "limit_usd": str(2 * Decimal(spent))}})
            assert r.json()["budget"]["spent_usd"] == r.json()["budget"]["available_usd"] == spent
            entries = len(gw.ledger_entries())
            for answer in await refused_everywhere(http, DEMO_KEY, 429, "daily budget"):
                assert answer.headers["retry-after"] == "60"  # to the end of the UTC day
            assert len(gw.ledger_entries()) == entries
            assert gw.usage_actor.snapshot()["open_reservations"] == 0
            wall.t = float(parse_utc("2026-12-03T00:00:00Z"))
            await served(http, gw, DEMO_KEY)
            budget = (await http.get("/admin/keys", headers=ADMIN)).json()["keys"][0]["budget"]
            assert budget["period_start"] == "2026-12-03T00:00:00Z" and budget["spent_usd"] != "0.000000"
            today = budget["spent_usd"]
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as http:
            gw.usage_actor.core.wall = wall
            budget = (await http.get("/admin/keys", headers=ADMIN)).json()["keys"][0]["budget"]
            assert budget["spent_usd"] == today  # durable: a restart keeps the day's count


@pytest.mark.parametrize("body, words", [
    ({"name": "b", "unlimited": True, "budget": {"period": "dya", "limit_usd": "1"}},
     ["budget.period", "one of day, week, month"]),
    ({"name": "b", "unlimited": True, "budget": {"period": "day", "limit_usd": "-1"}}, ["budget.limit_usd"]),
    ({"name": "b", "unlimited": True, "budget": {"period": "day"}}, ["budget.limit_usd", "required"]),
    ({"name": "b", "unlimited": True, "budget": {"period": "day", "limit": "1"}}, ["budget.limit", "limit_usd"]),
    ({"name": "b", "unlimited": True, "expires_at": "2026-12-31 00:00"}, ["expires_at", "UTC"]),
    ({"name": "b", "unlimited": True, "expires_at": 1767225600}, ["expires_at", "string"]),
])
async def test_bad_key_terms_are_refused_with_their_path(config_doc, body, words):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as http:
            r = await http.post("/admin/keys", headers=ADMIN, json=body)
            assert r.status_code == 400, r.text
            for word in words:
                assert word in r.json()["error"]["message"], r.text
            names = {k["name"] for k in (await http.get("/admin/keys", headers=ADMIN)).json()["keys"]}
            assert names == {"test"}


async def test_a_revoked_secret_does_not_come_back_under_a_new_name(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as http:
            assert (await http.delete("/admin/keys/test", headers=ADMIN)).status_code == 200
            renamed = copy.deepcopy(config_doc)
            renamed["keys"][0]["name"] = "test-again"
            with pytest.raises(ReloadRefused) as refused:
                await gw.runtime.reload(parse_config(renamed, env={}))
            [(path, message)] = refused.value.problems
            assert path == "keys[0].key"
            assert "'test-again' has the secret of the ledger's key 'test' (revoked)" in message
            assert gw.runtime.generation.number == 1  # the reload changed nothing
            await refused_everywhere(http, DEMO_KEY, 401, "revoked")
            names = {k["name"] for k in (await http.get("/admin/keys", headers=ADMIN)).json()["keys"]}
            assert names == {"test"}


async def _handshake(url: str, key: str, until: bytes = b"}}") -> bytes:
    """A Responses WebSocket handshake on a raw socket: the gateway's answer, up to ``until``."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(
            b"GET /v1/responses HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer " + key.encode() + b"\r\n\r\n")
        reply = b""
        while until not in reply:
            chunk = await stream.receive_some()
            if not chunk:
                break
            reply += chunk
    return reply


COUNT_DOORS = {
    "anthropic": lambda key: ("/v1/messages/count_tokens", {"x-api-key": key, "anthropic-version": "2023-06-01"},
                              {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}),
    "gemini": lambda key: ("/v1beta/models/demo:countTokens", {"x-goog-api-key": key},
                           {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
}


@pytest.mark.parametrize("term", ["revoked", "expired"])
async def test_a_revoked_or_expired_key_is_refused_at_the_websocket_and_count_doors(config_doc, term):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as http:
            made = {"name": "gone", "unlimited": True}
            if term == "expired":
                made["expires_at"] = "2000-01-01T00:00:00Z"
            key = (await http.post("/admin/keys", headers=ADMIN, json=made)).json()["key"]
            if term == "revoked":
                for door in COUNT_DOORS.values():  # served before the revocation
                    path, headers, body = door(key)
                    assert (await http.post(path, headers=headers, json=body)).status_code == 200
                assert b" 101 " in (await _handshake(gw.url, key, b"\r\n\r\n")).split(b"\r\n")[0]
                assert (await http.delete("/admin/keys/gone", headers=ADMIN)).status_code == 200
            head, _, body = (await _handshake(gw.url, key)).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 401 "), head
            assert json.loads(body)["error"]["type"] == "authentication_error" and term.encode() in body
            for name, door in COUNT_DOORS.items():
                path, headers, body = door(key)
                r = await http.post(path, headers=headers, json=body)
                assert r.status_code == 401, (name, r.text)
                assert term in r.text and key not in r.text, (name, r.text)
            assert gw.ledger_entries() == []  # a refusal charges nothing
