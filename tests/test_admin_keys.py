"""The admin key API obeys the config's rules: a bad body is a 400 in JSON that names
what is wrong, changes no key, and never crashes the meter."""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.conftest import ADMIN_TOKEN, running_gateway

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
JSON = {**ADMIN, "content-type": "application/json"}


async def test_a_key_without_credit_needs_unlimited_true(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            r = await client.post("/admin/keys", headers=ADMIN, json={"name": "typo", "credit": "5.00"})
            assert r.status_code == 400 and "unlimited" in r.json()["error"]["message"]
            r = await client.post("/admin/keys", headers=ADMIN, json={"name": "both", "credit_usd": "1",
                                                                      "unlimited": True})
            assert r.status_code == 400
            r = await client.post("/admin/keys", headers=ADMIN, json={"name": "open", "unlimited": True})
            assert r.status_code == 201 and r.json()["credit_usd"] is None
            names = {k["name"] for k in (await client.get("/admin/keys", headers=ADMIN)).json()["keys"]}
            assert names == {"test", "open"}


# (method, path, request kwargs, words the error message must contain)
REFUSED = [
    ("POST", "/admin/keys", {"json": {"name": "big", "credit_usd": "1e30"}}, ["credit_usd", "at most"]),
    ("POST", "/admin/keys", {"json": {"name": "neg", "credit_usd": "-1"}}, ["credit_usd"]),
    ("POST", "/admin/keys", {"json": {"name": "nan", "credit_usd": "NaN"}}, ["credit_usd"]),
    ("POST", "/admin/keys", {"json": {"name": "wide", "unlimited": True, "max_concurrency": 2**70}},
     ["max_concurrency", "between"]),
    ("POST", "/admin/keys", {"json": {"name": "fast", "unlimited": True, "requests_per_minute": 0}},
     ["requests_per_minute"]),
    ("POST", "/admin/keys", {"json": {"name": "half", "unlimited": True, "max_concurrency": 1.5}},
     ["max_concurrency", "integer"]),
    ("POST", "/admin/keys", {"json": {"name": "str", "credit_usd": "1", "models": "demo"}}, ["models", "array"]),
    ("POST", "/admin/keys", {"json": {"name": "odd", "credit_usd": "1", "models": [5]}}, ["models[0]"]),
    ("POST", "/admin/keys", {"json": {"name": "a/b", "credit_usd": "1"}}, ["name", "letters"]),
    ("POST", "/admin/keys", {"json": {"name": "", "credit_usd": "1"}}, ["name"]),
    ("POST", "/admin/keys", {"json": {"name": "x" * 65, "credit_usd": "1"}}, ["name"]),
    ("POST", "/admin/keys", {"json": {"name": "nl\n", "credit_usd": "1"}}, ["name"]),
    ("POST", "/admin/keys", {"json": {"credit_usd": "1"}}, ["name", "required"]),
    ("POST", "/admin/keys", {"json": {"name": "typo", "credit_usd": "1", "max_concurency": 2}},
     ["max_concurency", "did you mean 'max_concurrency'"]),
    ("POST", "/admin/keys", {"json": {"name": "flag", "unlimited": "true"}}, ["unlimited"]),
    ("POST", "/admin/keys", {"json": ["name", "x"]}, ["JSON object"]),
    ("POST", "/admin/keys", {"content": b"\xff\xfe{}", "headers": JSON}, ["UTF-8"]),
    ("POST", "/admin/keys", {"content": b'{"name": "x", ', "headers": JSON}, ["JSON"]),
    ("POST", "/admin/keys", {"content": b'{"name": "\\ud800", "unlimited": true}', "headers": JSON},
     ["surrogate"]),
    ("POST", "/admin/keys", {"content": b"[" * 100_000, "headers": JSON}, []),
    ("POST", "/admin/keys", {"content": b'{"name": "deep", "unlimited": true, "x": ' + b'{"a": ' * 10_000 + b"1"
                             + b"}" * 10_000 + b"}", "headers": JSON}, ["nested too deeply"]),
    ("PATCH", "/admin/keys/test", {"content": b'{"models": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
                                   "headers": JSON}, ["nested too deeply"]),
    ("PATCH", "/admin/keys/test", {"content": b'{"models": ["\\udfff"]}', "headers": JSON}, ["surrogate", "models[0]"]),
    ("POST", "/admin/keys", {"content": '{"name": "wide", "unlimited": true}'.encode("utf-16"), "headers": JSON},
     ["UTF-8"]),
    ("POST", "/admin/keys", {"content": b"", "headers": JSON}, ["empty"]),
    ("PATCH", "/admin/keys/test", {"json": {"disabled": "true"}}, ["disabled", "true/false"]),
    ("PATCH", "/admin/keys/test", {"json": {"disabled": None}}, ["disabled"]),
    ("PATCH", "/admin/keys/test", {"json": {"credit_usd": None}}, ["credit_usd"]),
    ("PATCH", "/admin/keys/test", {"json": {"credit_usd": "1e30"}}, ["credit_usd"]),
    ("PATCH", "/admin/keys/test", {"json": {"add_credit_usd": "999999999.99"}}, ["at most"]),
    ("PATCH", "/admin/keys/test", {"json": {"models": "demo"}}, ["models"]),
    ("PATCH", "/admin/keys/test", {"json": {"max_concurrency": 2**70}}, ["max_concurrency"]),
    ("PATCH", "/admin/keys/test", {"json": {"disabled": True, "credits": "5"}},
     ["credits", "did you mean 'credit_usd'"]),
    ("PATCH", "/admin/keys/test", {"json": {"name": "renamed"}}, ["name", "unknown"]),
    ("GET", "/admin/usage?since_s=nan", {}, ["since_s"]),
    ("GET", "/admin/usage?since_s=inf", {}, ["since_s"]),
    ("GET", "/admin/usage?since_s=-5", {}, ["since_s"]),
    ("GET", "/admin/usage?since_s=soon", {}, ["since_s"]),
]


async def test_bad_admin_requests_are_json_400s_that_change_nothing(config_doc):
    with trio.fail_after(60):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            before = (await client.get("/admin/keys", headers=ADMIN)).json()
            for method, path, kwargs, words in REFUSED:
                kwargs = {"headers": ADMIN, **kwargs}
                r = await client.request(method, path, **kwargs)
                assert r.status_code == 400, (method, path, kwargs, r.status_code, r.text[:300])
                assert r.headers["content-type"].startswith("application/json"), r.text[:300]
                message = r.json()["error"]["message"]
                for word in words:
                    assert word in message, (path, kwargs, message)
            assert (await client.get("/admin/keys", headers=ADMIN)).json() == before
            actors = (await client.get("/admin/actors", headers=ADMIN)).json()
            assert {name: a["restarts"] for name, a in actors.items()} == dict.fromkeys(actors, 0)
            assert gw.runtime.supervisor.slots["usage"].last_crash is None


async def test_admin_bodies_obey_the_configured_depth_limit(config_doc):
    """The admin API reads its bodies where the LLM routes do, with ``server.max_json_depth``."""
    config_doc["server"]["max_json_depth"] = 4
    fits = {"name": "shallow", "unlimited": True, "models": ["demo"]}  # depth 2
    too_deep = {"name": "deep", "unlimited": True, "x": {"a": {"b": {"c": {}}}}}  # depth 5
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            r = await client.post("/admin/keys", headers=ADMIN, json=too_deep)
            assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"], r.text
            assert r.json()["error"]["message"].endswith("at 'x.a.b.c'.")
            r = await client.post("/admin/keys", headers=ADMIN, json=fits)
            assert r.status_code == 201, r.text
            names = {k["name"] for k in (await client.get("/admin/keys", headers=ADMIN)).json()["keys"]}
            assert names == {"test", "shallow"}


async def test_a_disabled_flag_a_limit_and_an_allow_list_are_applied_as_typed(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            r = await client.post("/admin/keys", headers=ADMIN, json={
                "name": "team-a.1", "credit_usd": "2.50", "models": ["demo"], "max_concurrency": 3,
                "key": "th-team-a-chosen"})
            assert r.status_code == 201, r.text
            assert r.json()["key"] == "th-team-a-chosen" and r.json()["models"] == ["demo"]
            r = await client.patch("/admin/keys/team-a.1", headers=ADMIN, json={
                "disabled": True, "models": None, "max_concurrency": None, "add_credit_usd": "1"})
            assert r.status_code == 200, r.text
            key = r.json()
            assert key["disabled"] is True and key["models"] is None and key["max_concurrency"] is None
            assert key["credit_usd"] == "3.500000"
            r = await client.post("/v1/chat/completions", headers={"authorization": "Bearer th-team-a-chosen"},
                                  json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 401 and "disabled" in r.json()["error"]["message"]
            r = await client.patch("/admin/keys/team-a.1", headers=ADMIN, json={})
            assert r.status_code == 200 and r.json() == key


@pytest.mark.parametrize("name", ["a/b", "", "-leading", "x" * 65, "tab\tname", "é"])
def test_the_config_refuses_the_key_names_the_admin_api_refuses(tmp_path, name):
    from gateway.config import ConfigError, parse_config
    from tests.conftest import base_config

    doc = base_config(tmp_path)
    doc["keys"][0]["name"] = name
    with pytest.raises(ConfigError, match=r"keys\[0\]\.name"):
        parse_config(doc, env={})


def test_the_config_refuses_a_key_limit_past_the_ledgers_integers(tmp_path):
    from gateway.config import ConfigError, parse_config
    from tests.conftest import base_config

    doc = base_config(tmp_path)
    doc["keys"][0]["max_concurrency"] = 2**70
    with pytest.raises(ConfigError, match=r"keys\[0\]\.max_concurrency"):
        parse_config(doc, env={})
