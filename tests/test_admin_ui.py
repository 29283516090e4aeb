"""The admin web page over real HTTP: signing in and out, the session cookie's rules,
CSRF on every form, the strict Content-Security-Policy, and what each page shows."""

from __future__ import annotations

import attrs
import httpx
import trio

from protocols.secret import Secret
from tests.admin_page import csrf, parse, rows, sign_in
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, running_gateway
from tests.packaging import shipped_packages

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
AUTH = {"authorization": f"Bearer {DEMO_KEY}"}
PAGES = ["actors", "credentials", "cooldowns", "reservations", "keys", "usage", "requests"]


def browser(gw) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gw.url, follow_redirects=False, timeout=30)


def set_cookie(response: httpx.Response, name: str) -> str:
    [header] = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    return header


async def chat(client: httpx.AsyncClient, model: str = "demo", prompt: str = "hi") -> httpx.Response:
    return await client.post("/v1/chat/completions", headers=AUTH,
                             json={"model": model, "messages": [{"role": "user", "content": prompt}]})


async def test_a_page_without_a_session_sends_the_browser_to_the_sign_in_form(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            for name in PAGES:
                r = await client.get(f"/admin/ui/{name}")
                assert (r.status_code, r.headers["location"]) == (303, "/admin/ui/login"), name
            for home in ("/admin/ui", "/admin/ui/"):
                r = await client.get(home)
                assert (r.status_code, r.headers["location"]) == (303, "/admin/ui/actors")
            form = await client.get("/admin/ui/login")
            assert form.status_code == 200
            cookie = set_cookie(form, "th_login")
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin/ui/login" in cookie
            assert 'type="password" name="token"' in form.text


async def test_signing_in_sets_a_strict_http_only_session_cookie(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            r = await sign_in(client)
            assert (r.status_code, r.headers["location"]) == (303, "/admin/ui/actors")
            cookie = set_cookie(r, "th_session")
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin;" in cookie + ";"
            session_id = cookie.split(";")[0].split("=", 1)[1]
            assert len(session_id) >= 40 and ADMIN_TOKEN not in cookie
            for name in PAGES:
                page = await client.get(f"/admin/ui/{name}")
                assert page.status_code == 200, (name, page.text)
                assert page.headers["content-type"] == "text/html; charset=utf-8"
                csp = page.headers["content-security-policy"]
                assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp
                assert page.headers["cache-control"] == "no-store"
                parsed = parse(page.text)
                assert parsed.scripts == [{"src": "/admin/ui/static/ui.js", "defer": None}]
                assert not parsed.inline_script, name
                assert ADMIN_TOKEN not in page.text, name
                assert parsed.hidden["csrf"]  # the sign-out form carries it on every page


async def test_a_wrong_token_is_refused_and_begins_no_session(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            r = await sign_in(client, "th-not-the-token")
            assert r.status_code == 401 and "Wrong admin token." in r.text
            assert not [h for h in r.headers.get_list("set-cookie") if h.startswith("th_session=")]
            assert "th-not-the-token" not in r.text
            assert (await client.get("/admin/ui/actors")).status_code == 303


async def test_a_sign_in_without_the_forms_own_nonce_is_refused(config_doc):
    """Login CSRF: another site cannot post the form (it has neither the cookie nor the nonce)."""
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            r = await client.post("/admin/ui/login", data={"token": ADMIN_TOKEN, "login_csrf": "made-up"})
            assert r.status_code == 403 and not [h for h in r.headers.get_list("set-cookie")
                                                 if h.startswith("th_session=")]
            form = await client.get("/admin/ui/login")
            nonce = parse(form.text).hidden["login_csrf"]
            client.cookies.clear()  # the nonce without its cookie
            r = await client.post("/admin/ui/login", data={"token": ADMIN_TOKEN, "login_csrf": nonce})
            assert r.status_code == 403


async def test_a_form_without_the_sessions_csrf_token_changes_nothing(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            await sign_in(client)
            token = await csrf(client)
            for data, headers in (({"name": "sneaky", "credit_usd": "5"}, {}),
                                  ({"name": "sneaky", "credit_usd": "5", "csrf": "x" * len(token)}, {}),
                                  ({"name": "sneaky", "credit_usd": "5", "csrf": token},
                                   {"origin": "http://evil.example"})):
                r = await client.post("/admin/ui/keys", data=data, headers=headers)
                assert r.status_code == 403, r.text
            names = [k["name"] for k in (await client.get("/admin/keys", headers=ADMIN)).json()["keys"]]
            assert names == ["test"]
            r = await client.post("/admin/ui/keys", data={"name": "made", "credit_usd": "5", "csrf": token})
            assert r.status_code == 201
            [made] = [k for k in (await client.get("/admin/keys", headers=ADMIN)).json()["keys"] if k["name"] == "made"]
            assert made["credit_usd"] == "5.000000"
            secret = parse(r.text)  # shown once, on the answer to the form
            assert "th-" in r.text and "created-secret" in r.text and secret.hidden["csrf"] == token


async def test_signing_out_ends_the_session_on_the_server(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            r = await sign_in(client)
            session_id = set_cookie(r, "th_session").split(";")[0].split("=", 1)[1]
            token = await csrf(client, "/admin/ui/actors")
            out = await client.post("/admin/ui/logout", data={"csrf": token})
            assert (out.status_code, out.headers["location"]) == (303, "/admin/ui/login")
            assert 'th_session=""' in set_cookie(out, "th_session") or "Max-Age=0" in set_cookie(out, "th_session")
            client.cookies.set("th_session", session_id)  # the old id, replayed
            assert (await client.get("/admin/ui/actors")).status_code == 303


async def test_a_session_expires_when_idle_and_when_the_admin_token_changes(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            ui = gw.gateway.quart.extensions["tollhouse_ui"]
            offset = [0.0]
            real = ui.clock
            ui.clock = lambda: real() + offset[0]
            await sign_in(client)
            offset[0] = ui.sessions.rules.idle_s - 5
            assert (await client.get("/admin/ui/actors")).status_code == 200  # used: idle time starts again
            offset[0] += ui.sessions.rules.idle_s + 1
            assert (await client.get("/admin/ui/actors")).status_code == 303
            await sign_in(client)
            assert (await client.get("/admin/ui/actors")).status_code == 200
            runtime = gw.runtime
            runtime.config = attrs.evolve(runtime.config, admin_token=Secret("th-rotated-admin"))
            assert (await client.get("/admin/ui/actors")).status_code == 303
            assert (await sign_in(client)).status_code == 401  # the old token no longer signs in
            assert (await sign_in(client, "th-rotated-admin")).status_code == 303


async def test_the_requests_page_lists_a_request_and_its_ledger_entries(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            answered = await chat(client)
            assert answered.status_code == 200
            request_id = answered.headers["x-request-id"]
            odd = await chat(client, model="<img src=x onerror=alert(1)>")  # the catch-all routes it
            assert odd.status_code == 200
            await sign_in(client)
            page = await client.get("/admin/ui/requests")
            listed = rows(page.text, "requests")
            assert [row[0] for row in listed] == [odd.headers["x-request-id"], request_id]  # newest first
            [entry] = gw.ledger_entries()[:1]
            assert listed[1][2:5] == ["test", "demo", "sim/sim-chat"]
            assert listed[1][-1] == f"{entry['amount_micro'] / 1e6:.6f}"
            assert "<img src=x" not in page.text and "&lt;img src=x onerror=alert(1)&gt;" in page.text
            detail = await client.get(f"/admin/ui/requests/{request_id}")
            fields = {row[0]: row[1] for row in rows(detail.text, "entries")}
            assert fields["kind"] == "charge" and fields["amount_micro"] == str(entry["amount_micro"])
            assert fields["input"] == str(entry["input"]) and fields["provenance"] == entry["provenance"]


async def test_the_usage_page_charts_the_ledgers_series(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            for _ in range(2):
                assert (await chat(client)).status_code == 200
            await sign_in(client)
            page = await client.get("/admin/ui/usage", params={"by": "model", "metric": "tokens"})
            assert 'id="usage-chart"' in page.text and 'data-metric="tokens"' in page.text
            entries = gw.ledger_entries()
            [total] = rows(page.text, "usage-totals")
            assert total[:2] == ["sim-chat", "2"]
            assert int(total[3]) == sum(e["input"] for e in entries)
            series = (await client.get("/admin/ui/usage/series.json")).json()
            assert series["bucket_s"] == 1800 and sum(p["requests"] for p in series["points"]) == 2
            api = (await client.get("/admin/usage/series", headers=ADMIN,
                                    params={"since_s": 3600, "bucket_s": 60})).json()
            assert sum(p["output_tokens"] for p in api["points"]) == sum(e["output"] for e in entries)
            assert {p["key_name"] for p in api["points"]} == {"test"}
            assert (await client.get("/admin/usage/series", headers=ADMIN,
                                     params={"since_s": 86400, "bucket_s": 1})).status_code == 400
            assert (await client.get("/admin/usage/series")).status_code == 401


async def test_keys_are_created_credited_and_disabled_from_the_page(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            await sign_in(client)
            token = await csrf(client)
            bad = await client.post("/admin/ui/keys", data={"name": "nolimit", "csrf": token})
            assert bad.status_code == 400 and "credit_usd" in bad.text  # the config's rule, named
            made = await client.post("/admin/ui/keys", data={"name": "team", "credit_usd": "2.50", "csrf": token})
            assert made.status_code == 201
            r = await client.post("/admin/ui/keys/team/credit", data={"add_credit_usd": "1.25", "csrf": token})
            assert (r.status_code, r.headers["location"]) == (303, "/admin/ui/keys")
            r = await client.post("/admin/ui/keys/team/disable", data={"csrf": token})
            assert r.status_code == 303
            page = await client.get("/admin/ui/keys")
            [team] = [row for row in rows(page.text, "keys") if row[0] == "team"]
            assert team[1:3] == ["disabled", "3.750000"]
            [api] = [k for k in (await client.get("/admin/keys", headers=ADMIN)).json()["keys"] if k["name"] == "team"]
            assert api["disabled"] is True and api["credit_usd"] == "3.750000"


async def test_a_key_is_revoked_from_the_page_after_a_confirmation(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            await sign_in(client)
            token = await csrf(client)
            made = await client.post("/admin/ui/keys", data={"name": "team", "credit_usd": "2.50", "csrf": token})
            secret = made.text.split('id="created-secret">')[1].split("<")[0]
            [team] = [row for row in rows(made.text, "keys") if row[0] == "team"]
            assert team[-1] == "Revoke"
            ask = await client.post("/admin/ui/keys/team/revoke", data={"csrf": token})
            assert ask.status_code == 200 and "This cannot be undone" in ask.text
            assert parse(ask.text).hidden == {"csrf": token, "confirm": "yes"}
            listed = (await client.get("/admin/keys", headers=ADMIN)).json()["keys"]
            assert [k["revoked"] for k in listed if k["name"] == "team"] == [False]  # asked, not done
            forged = await client.post("/admin/ui/keys/team/revoke", data={"confirm": "yes", "csrf": "forged"})
            assert forged.status_code == 403
            done = await client.post("/admin/ui/keys/team/revoke", data={"confirm": "yes", "csrf": token})
            assert (done.status_code, done.headers["location"]) == (303, "/admin/ui/keys")
            [team] = [row for row in rows((await client.get("/admin/ui/keys")).text, "keys") if row[0] == "team"]
            assert team[1] == "revoked" and team[-1] == "" and team[-2] == ""
            refused = await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {secret}"},
                                        json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
            assert refused.status_code == 401 and "revoked" in refused.text
            again = await client.post("/admin/ui/keys/team/revoke", data={"csrf": token})
            assert again.status_code == 409 and "already revoked" in again.text
            unknown = await client.post("/admin/ui/keys/nobody/revoke", data={"csrf": token})
            assert unknown.status_code == 404


async def test_a_dead_credential_is_shown_and_enabled_from_the_page(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            refused = await chat(client, prompt="[[sim status=401]]")
            assert refused.status_code >= 400
            await sign_in(client)
            page = await client.get("/admin/ui/credentials")
            [cred] = rows(page.text, "credentials")
            assert cred[:3] == ["sim", "sim-embedded", "dead"]
            token = parse(page.text).hidden["csrf"]
            failures = rows((await client.get("/admin/ui/cooldowns")).text, "failures")
            assert failures and failures[0][0] == "sim/sim-chat" and failures[0][3] == "401"
            r = await client.post("/admin/ui/credentials/sim/sim-embedded/enable", data={"csrf": token})
            assert (r.status_code, r.headers["location"]) == (303, "/admin/ui/credentials")
            [cred] = rows((await client.get("/admin/ui/credentials")).text, "credentials")
            assert cred[2] == "ready"


async def test_the_actors_page_and_the_static_assets(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            await sign_in(client)
            listed = rows((await client.get("/admin/ui/actors")).text, "actors")
            assert [row[0] for row in listed] == sorted(gw.runtime.supervisor.slots)
            assert all(row[4] == "0" for row in listed)  # no restarts
            for name, kind in (("ui.js", "javascript"), ("ui.css", "text/css")):
                asset = await client.get(f"/admin/ui/static/{name}")
                assert asset.status_code == 200 and kind in asset.headers["content-type"]


def test_the_page_and_its_assets_ship_in_the_distribution():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "gateway.ui" in shipped_packages()
    assert project["package-data"]["gateway.ui"] == ["static/*"]
    assert {p.name for p in (root / "gateway/ui/static").iterdir()} == {"ui.css", "ui.js", "favicon.svg"}


async def test_the_page_is_closed_when_no_admin_token_is_configured(config_doc):
    config_doc["admin"] = {}
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            form = await client.get("/admin/ui/login")
            assert form.status_code == 403 and "no admin token is configured" in form.text
            r = await client.post("/admin/ui/login", data={"token": "", "login_csrf": ""})
            assert r.status_code == 403
            assert (await client.get("/admin/ui/actors")).status_code == 303


async def test_a_request_in_flight_is_on_the_reservations_page(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            await sign_in(client)
            assert "no request in flight" in (await client.get("/admin/ui/reservations")).text
            async with trio.open_nursery() as nursery:
                nursery.start_soon(chat, client, "demo", "[[sim ttfb_stall=30]]")  # waits for its first byte
                while not gw.usage_actor.core.holds:
                    await trio.sleep(0.01)  # the hold is made: polled under the deadline
                [hold] = rows((await client.get("/admin/ui/reservations")).text, "reservations")
                [held] = gw.usage_actor.core.holds.values()
                assert hold[:2] == [held.id, "test"] and hold[2] == "demo" and hold[4] == "open"
                nursery.cancel_scope.cancel()  # the client leaves


async def test_an_active_cooldown_is_on_the_cooldowns_page(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            assert (await chat(client, prompt="[[sim status=429 retry_after=30]]")).status_code == 429
            await sign_in(client)
            [active] = rows((await client.get("/admin/ui/cooldowns")).text, "cooldowns")
            assert active[:4] == ["sim/sim-chat", "sim-embedded", "model", "rate_limited"]
            assert 0 < float(active[4].removesuffix(" s")) <= 30 and active[5:] == ["30.0 s", "30.0 s"]
            [cred] = rows((await client.get("/admin/ui/credentials")).text, "credentials")
            assert cred[7].startswith("sim-chat ")  # the model's cooldown left, on its credential


async def test_the_recent_requests_api_bounds_its_limit(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            for _ in range(3):
                assert (await chat(client)).status_code == 200
            got = (await client.get("/admin/requests", headers=ADMIN, params={"limit": 2})).json()["requests"]
            entries = gw.ledger_entries()
            assert [r["request_id"] for r in got] == [e["request_id"] for e in entries[::-1][:2]]
            for bad in ("0", "501", "x", "-1"):
                r = await client.get("/admin/requests", headers=ADMIN, params={"limit": bad})
                assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", bad


async def test_repeated_wrong_tokens_make_the_address_wait(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, browser(gw) as client:
            limit = gw.gateway.quart.extensions["tollhouse_ui"].guard.limits.max_failures
            for _ in range(limit):
                assert (await sign_in(client, "th-guess")).status_code == 401
            held = await sign_in(client)  # even the right token waits now
            assert held.status_code == 429 and "Too many wrong tokens" in held.text
            assert 1 <= int(held.headers["retry-after"]) <= 300
            assert (await client.get("/admin/ui/actors")).status_code == 303
