"""``GET /metrics`` through the real gateway: what a scrape says agrees with the ledger,
who may scrape, the separate metrics port, bounded labels, no secret."""

from __future__ import annotations

import json
import signal
import socket
from collections import defaultdict

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import parse_config
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway
from tests.gateway_process import serve_process, write_config
from tests.test_config import problems_of

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
USER = {"authorization": f"Bearer {DEMO_KEY}"}
POOR_KEY = "th-poor-key"
CONFIGURED = ("demo", "stall", "limited", "failing")


def hi(model: str, stream: bool = False) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


class Heard:
    """An observer beside the metrics one (told after it): the test waits on it to know
    every request has been counted, without polling."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = trio.Event()

    def served(self, record) -> None:
        self.count += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, n: int) -> None:
        while self.count < n:
            await self._changed.wait()


def samples(text: str, name: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def total_by(text: str, name: str, *labels: str) -> dict:
    out: dict = defaultdict(float)
    for s in samples(text, name):
        out[tuple(s.labels[label] for label in labels)] += s.value
    return dict(out)


async def quiet_scrape(client: httpx.AsyncClient) -> str:
    """A scrape once nothing is in flight. A request leaves the in-flight gauge in the same
    step as its record reaches the observers (no checkpoint between), so such a scrape
    has counted every request answered before it; the client may read its answer a few
    scheduler turns before that step, hence the loop (bounded by the caller's deadline)."""
    while True:
        response = await client.get("/metrics", headers=ADMIN)
        assert response.status_code == 200
        if not any(total_by(response.text, "tollhouse_requests_in_flight").values()):
            return response.text


def workload_config(tmp_path) -> dict:
    doc = base_config(tmp_path)
    doc["models"].update({
        "stall": {"targets": ["sim/sim-chat+stall_after=2"]},
        "limited": {"targets": ["sim/sim-chat+status=429+retry_after=30"]},
        "failing": {"targets": ["sim/sim-chat+error_after=2"]},
    })
    doc["keys"].append({"name": "poor", "key": POOR_KEY, "credit_usd": "0.000001"})
    doc["streaming"] = {"ttfb_timeout_s": 5, "stall_timeout_s": 30}
    return doc


async def test_a_scrape_after_a_mixed_workload_agrees_with_the_ledger(tmp_path):
    heard = Heard()
    with trio.fail_after(30):
        async with running_gateway(workload_config(tmp_path)) as gw:
            gw.runtime.observers.add(heard)
            async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
                chat = "/v1/chat/completions"
                assert (await client.post(chat, json=hi("demo"), headers=USER)).status_code == 200
                assert (await client.post(chat, json=hi("demo", True), headers=USER)).status_code == 200
                unknown = await client.post(chat, json=hi("a-model-nobody-configured"), headers=USER)
                assert unknown.status_code == 200, "the config's '*' model serves any name"
                poor = await client.post(chat, json=hi("demo"), headers={"authorization": f"Bearer {POOR_KEY}"})
                assert poor.status_code == 402
                assert (await client.post(chat, json=hi("limited"), headers=USER)).status_code == 429
                async with client.stream("POST", chat, json=hi("stall", True), headers=USER) as stalled:
                    assert stalled.status_code == 200
                    chunks = stalled.aiter_bytes()  # kept: a dropped iterator would close the stream
                    await chunks.__anext__()  # the stream began; the upstream now stalls
                    during = (await client.get("/metrics", headers=ADMIN)).text
                # the client left mid-stream
                failing = await client.post(chat, json=hi("failing", True), headers=USER)
                assert failing.status_code == 200 and b"error" in failing.content
                await heard.wait(7)
                after = await client.get("/metrics", headers=ADMIN)
                totals = (await client.get("/admin/usage", headers=ADMIN)).json()["by"]
            entries = gw.ledger_entries()
    assert after.headers["content-type"].startswith("text/plain; version=")
    text = after.text

    # while a stream stalls, it is in flight and it holds its credential's lease
    assert total_by(during, "tollhouse_requests_in_flight", "stream")[("true",)] == 1
    assert total_by(during, "tollhouse_credential_in_flight", "credential") == {("sim-embedded",): 1}
    assert total_by(text, "tollhouse_requests_in_flight", "stream").get(("true",), 0) == 0
    assert total_by(text, "tollhouse_credential_in_flight", "credential") == {("sim-embedded",): 0}

    def label(model: str) -> str:
        return model if model in CONFIGURED else "other"

    charges = [e for e in entries if e["kind"] == "charge"]
    by_model: dict = defaultdict(int)
    by_target: dict = defaultdict(int)
    tokens: dict = defaultdict(int)
    cost: dict = defaultdict(int)
    for e in charges:
        by_model[(label(e["client_model"]),)] += 1
        by_target[(f"{e['provider']}/{e['model']}",)] += 1
    for e in entries:
        for bucket in ("input", "cached_input", "cache_write", "output", "reasoning"):
            if e[bucket]:
                tokens[(label(e["client_model"]), bucket)] += e[bucket]
        cost[(e["key_name"],)] += e["amount_micro"]
    assert len(charges) == 6, "every request but the 402 was reserved and settled"
    assert total_by(text, "tollhouse_charges_total", "model") == by_model
    assert total_by(text, "tollhouse_charges_total", "target") == by_target
    assert total_by(text, "tollhouse_tokens_total", "model", "bucket") == tokens
    assert {k: pytest.approx(v / 1e6) for k, v in cost.items()} == total_by(text, "tollhouse_cost_usd_total", "key")
    # the ledger's own totals (/admin/usage) by upstream model: the same requests and tokens
    ledger_models = {model: (row["requests"], row["input"], row["output"]) for model, row in totals["model"].items()}
    scraped: dict = defaultdict(lambda: [0, 0, 0])
    for (target,), n in total_by(text, "tollhouse_charges_total", "target").items():
        scraped[target.partition("/")[2]][0] += n
    for (target, bucket), n in total_by(text, "tollhouse_tokens_total", "target", "bucket").items():
        scraped[target.partition("/")[2]][1 if bucket == "input" else 2] += n
    assert {model: tuple(v) for model, v in scraped.items()} == ledger_models
    reasons = total_by(text, "tollhouse_charges_total", "model", "reason")
    assert reasons[("stall", "client_cancel")] == 1 and reasons[("failing", "upstream_error")] == 1

    statuses = total_by(text, "tollhouse_requests_total", "status")
    assert statuses == {("200",): 5, ("402",): 1, ("429",): 1}
    assert total_by(text, "tollhouse_requests_total", "model")[("other",)] == 1
    assert total_by(text, "tollhouse_time_to_first_byte_seconds_count", "stream")[("true",)] == 3
    assert total_by(text, "tollhouse_request_duration_seconds_count", "protocol") == {("openai_chat",): 7}

    # the upstream's 429 rests that model on its credential; the mid-stream error counts too
    errors = total_by(text, "tollhouse_upstream_errors_total", "provider", "class")
    assert errors[("sim", "rate_limited")] == 1 and errors[("sim", "server_error")] == 1
    cooling = total_by(text, "tollhouse_cooldowns_active", "scope", "reason")
    assert cooling[("model", "rate_limited")] == 1
    assert total_by(text, "tollhouse_reservations_held", "status") == {("open",): 0, ("settling",): 0}
    handled = total_by(text, "tollhouse_actor_handled_total", "actor")
    assert handled[("usage",)] > 0 and set(handled) >= {("routing",), ("credentials",), ("cooldown",)}
    assert total_by(text, "tollhouse_ledger_commit_seconds_count")[()] >= 1

    # bounded labels and no secret
    for forbidden in ("a-model-nobody-configured", DEMO_KEY, POOR_KEY, ADMIN_TOKEN, "sim-key", "req_"):
        assert forbidden not in text


async def test_a_stream_holds_its_credential_until_it_ends(tmp_path):
    """``max_concurrency`` covers streams: a stalled stream keeps its lease, so a second
    call finds its only credential busy."""
    doc = workload_config(tmp_path)
    doc["providers"]["sim"]["credentials"] = [{"id": "only", "key": "sim-key-1", "max_concurrency": 1}]
    with trio.fail_after(20):
        async with running_gateway(doc) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                chat = "/v1/chat/completions"
                async with client.stream("POST", chat, json=hi("stall", True), headers=USER) as stalled:
                    chunks = stalled.aiter_bytes()
                    await chunks.__anext__()
                    text = (await client.get("/metrics", headers=ADMIN)).text
                    busy = await client.post(chat, json=hi("demo"), headers=USER)
                after = await client.post(chat, json=hi("demo"), headers=USER)
    assert total_by(text, "tollhouse_credential_in_flight", "credential") == {("only",): 1}
    assert total_by(text, "tollhouse_credential_state", "state")[("busy",)] == 1
    assert busy.status_code == 503
    assert after.status_code == 200, "the stream's end gave the lease back"


async def test_a_failover_is_counted(tmp_path):
    doc = base_config(tmp_path)
    doc["providers"]["spare"] = {"family": "simulator", "embedded": True, "protocol": "openai_chat"}
    doc["pricing"]["spare/*"] = {"input": "1.00", "output": "2.00"}
    doc["models"]["backed"] = {"targets": ["spare/sim-chat+status=503", "sim/sim-chat"]}
    heard = Heard()
    with trio.fail_after(20):
        async with running_gateway(doc) as gw:
            gw.runtime.observers.add(heard)
            async with httpx.AsyncClient(base_url=gw.url) as client:
                r = await client.post("/v1/chat/completions", json=hi("backed"), headers=USER)
                assert r.status_code == 200
                await heard.wait(1)
                text = (await client.get("/metrics", headers=ADMIN)).text
    assert total_by(text, "tollhouse_failovers_total", "model") == {("backed",): 1}
    assert total_by(text, "tollhouse_requests_total", "target") == {("sim/sim-chat",): 1}
    assert total_by(text, "tollhouse_upstream_errors_total", "provider", "class") == {("spare", "overloaded"): 1}


async def test_tollhouse_serve_answers_a_scrape(tmp_path):
    with trio.fail_after(30):
        async with serve_process(write_config(tmp_path, base_config(tmp_path))) as gateway:
            async with httpx.AsyncClient(base_url=await gateway.url()) as client:
                assert (await client.post("/v1/chat/completions", json=hi("demo"), headers=USER)).status_code == 200
                scrape = await quiet_scrape(client)
            gateway.send_signal(signal.SIGTERM)
            assert await gateway.wait() == 0
    assert total_by(scrape, "tollhouse_charges_total", "model", "reason") == {("demo", "end"): 1}
    assert DEMO_KEY not in scrape and ADMIN_TOKEN not in scrape


async def test_the_main_port_wants_the_admin_token(config_doc):
    with trio.fail_after(20):
        async with running_gateway(config_doc) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as client:
                bare = await client.get("/metrics")
                wrong = await client.get("/metrics", headers={"authorization": "Bearer nope"})
                user = await client.get("/metrics", headers=USER)
                ok = await client.get("/metrics", headers=ADMIN)
    for refused in (bare, wrong, user):
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        assert refused.headers["www-authenticate"] == "Bearer"
    assert ok.status_code == 200 and "tollhouse_requests_in_flight" in ok.text


async def test_without_an_admin_token_a_scrape_that_needs_one_is_refused(tmp_path):
    doc = base_config(tmp_path)
    del doc["admin"]
    with trio.fail_after(20):
        async with running_gateway(doc) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as client:
                refused = await client.get("/metrics")
    assert refused.status_code == 403 and "require_token" in refused.json()["error"]["message"]


async def test_an_open_main_port_and_a_switched_off_one(tmp_path):
    doc = base_config(tmp_path, metrics={"require_token": False})
    with trio.fail_after(20):
        async with running_gateway(doc) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as client:
                assert (await client.get("/metrics")).status_code == 200
    doc = base_config(tmp_path, metrics={"enabled": False})
    with trio.fail_after(20):
        async with running_gateway(doc) as gw:
            assert not gw.runtime.observers, "nothing observes requests for metrics"
            async with httpx.AsyncClient(base_url=gw.url) as client:
                off = await client.get("/metrics", headers=ADMIN)
    assert off.status_code == 404 and off.json()["error"]["type"] == "not_found_error"


async def test_a_separate_metrics_port(tmp_path):
    doc = base_config(tmp_path, metrics={"port": 0, "require_token": False})
    with trio.fail_after(20):
        async with running_gateway(doc) as gw:
            assert gw.runtime.metrics_url not in (None, gw.url)
            async with httpx.AsyncClient(base_url=gw.url) as client:
                assert (await client.post("/v1/chat/completions", json=hi("demo"), headers=USER)).status_code == 200
                main = await client.get("/metrics", headers=ADMIN)
            async with httpx.AsyncClient(base_url=gw.runtime.metrics_url) as scraper:
                scrape = await scraper.get("/metrics")
                head = await scraper.head("/metrics")
                other = await scraper.get("/admin/keys", headers=ADMIN)
                post = await scraper.post("/metrics")
    assert main.status_code == 404, "the main port no longer serves it"
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    assert total_by(scrape.text, "tollhouse_requests_total", "model") == {("demo",): 1}
    assert head.status_code == 200 and head.content == b""
    assert other.status_code == 404, "the metrics port serves nothing else"
    assert post.status_code == 405


async def test_a_metrics_port_in_use_refuses_the_start_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        doc = base_config(tmp_path, metrics={"port": taken.getsockname()[1]})
        with trio.fail_after(30):
            async with serve_process(write_config(tmp_path, doc)) as gateway:
                await gateway.until_exit()
    assert gateway.process.returncode != 0
    port = doc["metrics"]["port"]
    refusal = f"tollhouse: cannot start: metrics.port: cannot listen on 127.0.0.1:{port} (Address already in use)"
    assert refusal in gateway.stderr
    assert not any("Traceback" in line for line in gateway.stderr)


async def test_a_separate_port_can_want_the_token_too(tmp_path):
    doc = base_config(tmp_path, metrics={"port": 0})
    with trio.fail_after(20):
        async with running_gateway(doc) as gw:
            async with httpx.AsyncClient(base_url=gw.runtime.metrics_url) as scraper:
                bare = await scraper.get("/metrics")
                ok = await scraper.get("/metrics", headers=ADMIN)
    assert bare.status_code == 401 and bare.json()["error"]["type"] == "authentication_error"
    assert ok.status_code == 200


def test_metrics_settings_are_checked_with_their_paths(tmp_path):
    doc = base_config(tmp_path, metrics={"enabled": True, "prot": 9100})
    assert problems_of(doc) == ["metrics.prot: unknown setting; did you mean 'port'?"]
    doc = base_config(tmp_path, metrics={"port": 70000, "require_token": "yes"})
    problems = problems_of(doc)
    assert any(p.startswith("metrics.port: must be a port number") for p in problems)
    assert any(p.startswith("metrics.require_token:") for p in problems)
    doc = base_config(tmp_path, server={"port": 9100}, metrics={"port": 9100})
    assert problems_of(doc) == ["metrics.port: is the server's own port; leave it null to serve /metrics there"]
    config = parse_config(base_config(tmp_path), env={})
    assert (config.metrics.enabled, config.metrics.port, config.metrics.require_token) == (True, None, True)


async def test_websocket_turns_are_counted_by_transport(tmp_path):
    from providers.websocket import connect

    doc = base_config(tmp_path)
    doc["providers"]["simr"] = {"family": "simulator", "embedded": True, "protocol": "openai_responses"}
    doc["models"]["gpt-sim"] = {"targets": ["simr/sim-gpt"]}
    doc["pricing"]["simr/*"] = {"input": "1.25", "output": "10.00"}
    heard = Heard()

    async def turn(ws, **body) -> str:
        await ws.send_text(json.dumps({"type": "response.create", **body}))
        while True:
            event = json.loads(await ws.receive_text())
            if event["type"] in ("response.completed", "response.failed", "error"):
                return event["type"]

    with trio.fail_after(20):
        async with running_gateway(doc) as gw:
            gw.runtime.observers.add(heard)
            url = gw.url.replace("http://", "ws://") + "/v1/responses"
            async with connect(url, {"authorization": f"Bearer {DEMO_KEY}"}) as ws:
                assert await turn(ws, model="gpt-sim", input="hi", store=False) == "response.completed"
                assert await turn(ws, model="gpt-sim", input="again", previous_response_id="resp_unknown") == "error"
                await heard.wait(2)
                async with httpx.AsyncClient(base_url=gw.url) as client:
                    text = (await client.get("/metrics", headers=ADMIN)).text
            [entry] = gw.ledger_entries()
    assert total_by(text, "tollhouse_websocket_connections")[()] == 1
    by_transport = total_by(text, "tollhouse_requests_total", "transport", "model", "status")
    assert by_transport == {("websocket", "gpt-sim", "200"): 1, ("websocket", "gpt-sim", "404"): 1}
    assert total_by(text, "tollhouse_tokens_total", "bucket") == {
        (bucket,): entry[bucket] for bucket in ("input", "output") if entry[bucket]}
