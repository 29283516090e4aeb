"""Secrets never cross the gateway: an upstream that quotes the key it was sent, in
every error shape of its family, reaches no client byte and no log record.

One gateway per upstream family, each client protocol (same protocol: bytes
forwarded; the others translated) whole and streamed, against each place the key is
echoed: an error status, the stream's first event, an error mid-stream. The last call
to each gateway is answered with the family's own refusal of a bad key (401 for OpenAI
and Anthropic, which retires the credential, so it comes last; Gemini's 400).
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import trio

from gateway.config import parse_config
from gateway.config_view import config_view
from gateway.redaction import RedactingFilter, redactor_for, secret_values
from protocols.redact import NO_SECRETS, REDACTED, Redactor
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway
from tests.hostile_upstream import HostileUpstream
from tests.test_settlement_matrix import request

CLIENTS = ("chat", "responses", "anthropic", "gemini")
# Keys none of the providers' shapes match (so only the gateway's own knowledge can
# catch them), with the characters JSON, repr and URLs escape; one OpenAI-shaped.
KEYS = {
    "openai_compat": 'sk-proj-H0stile/Key+"quoted"-0001',
    "openai": 'rk-live_4f9a/Q+"z"-hostile-0002',
    "anthropic": 'ant-hostile/"9x"+key-0003',
    "gemini": 'g00gle-hostile/"k"+0004',
}
SAME = {"openai_compat": "chat", "openai": "responses", "anthropic": "anthropic", "gemini": "gemini"}


def forms(secret: str) -> set[bytes]:
    """Every way a secret could show in a response or a log."""
    texts = {secret, secret.lower(), secret.upper(), json.dumps(secret)[1:-1], quote(secret, safe=""),
             quote(secret), repr(secret)[1:-1]}
    texts |= {t[-8:] for t in texts}  # a key cut short where a pattern stopped still leaks its end
    texts |= {t.replace("/", "\\/") for t in texts}
    return {t.encode() for t in texts}


def config(tmp_path, family: str, url: str) -> dict:
    doc = base_config(tmp_path)
    base = url + "/v1" if family in ("openai_compat", "openai") else url
    doc["providers"] = {"up": {"family": family, "base_url": base, "credentials": [{"key": KEYS[family]}]}}
    doc["models"] = {"m": {"targets": ["up/hostile"]}}
    doc["pricing"] = {"up/*": {"input": "1", "output": "2"}}
    # in-stream errors rest the credential: briefly, and the request gives up soon
    doc["cooldown"] = {"base_s": 0.02, "max_s": 0.02, "jitter": 0}
    doc["routing"] = {"budget_s": 0.2}
    return doc


def error_docs(body: bytes) -> list[dict]:
    """The error objects in a whole body or in a stream's events (SSE or a JSON array)."""
    docs = []
    candidates = [body] + [line[5:].strip() for line in body.splitlines() if line.startswith(b"data:")]
    for raw in candidates:
        try:
            doc = json.loads(raw)
        except ValueError:
            continue
        for d in doc if isinstance(doc, list) else [doc]:
            if isinstance(d, dict) and isinstance(d.get("error"), dict) and "message" in d["error"]:
                docs.append(d)
    return docs


def assert_client_error(client: str, status: int, body: bytes, started: bool | None) -> None:
    """A clear error in the client's own shape, naming that the upstream's text was redacted
    (``started``: the response began before the error; None: either may be right)."""
    docs = error_docs(body)
    assert docs, body[:500]
    doc = docs[0]
    if started is None:
        started = status == 200
    if started:
        assert status == 200
    else:
        assert status >= 400
        if client == "anthropic":
            assert doc["type"] == "error"
        if client == "gemini":
            assert {"code", "status"} <= doc["error"].keys()
    assert REDACTED in doc["error"]["message"], doc


async def one_call(http: httpx.AsyncClient, client: str, stream: bool) -> tuple[int, bytes, bytes, str]:
    """(status, head, body, request id): every byte the client got, head and body."""
    path, body, headers = request(client, stream)
    async with http.stream("POST", path, json=body, headers=headers) as r:
        raw = await r.aread()
        head = b"\r\n".join(k + b": " + v for k, v in r.headers.raw)
        return r.status_code, head, raw, r.headers["x-request-id"]


@contextmanager
def _context(*facts):
    """An assertion inside names the call it was about."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{facts!r}: {exc}") from None


# A stream whose first event is an error is refused like an error status where the
# upstream's decoder sees nothing before it; Chat's announces the stream first.
STARTED = {"status": False, "first_event": None, "mid_stream": True}
CALLS = [(client, stream, echo) for client in CLIENTS
         for stream, echo in ((False, "status"), (True, "status"), (True, "first_event"), (True, "mid_stream"))]


@pytest.mark.parametrize("family", list(KEYS))
async def test_an_upstream_that_echoes_its_key_leaks_it_nowhere(tmp_path, caplog, family):
    caplog.set_level(logging.DEBUG)
    secret = KEYS[family]
    upstream = HostileUpstream("echo_key", family, echo_status=400)
    request_ids = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(upstream.serve)
            async with running_gateway(config(tmp_path, family, url)) as gw:
                async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
                    for client, stream, echo in CALLS:
                        upstream.echo = echo
                        status, head, raw, request_id = await one_call(http, client, stream)
                        leaked = [f for f in forms(secret) if f in head + raw]
                        assert not leaked, (client, stream, echo, leaked, raw[:800])
                        with _context(client, stream, echo, raw):
                            assert_client_error(client, status, raw, started=STARTED[echo])
                        request_ids.append(request_id)
                    # last: the family's own answer to a bad key (OpenAI's and Anthropic's 401
                    # retires the credential), to the client of the same protocol
                    upstream.echo, upstream.echo_status = "status", None
                    status, head, raw, request_id = await one_call(http, SAME[family], False)
                    assert not [f for f in forms(secret) if f in head + raw], raw[:800]
                    assert_client_error(SAME[family], status, raw, started=False)
                    request_ids.append(request_id)
                    # the gateway's own loggers are redacted while it runs
                    logging.getLogger("tollhouse.dispatch").error("upstream said %s", secret)
                    try:
                        raise RuntimeError(f"body: {json.dumps({'key': secret})}")
                    except RuntimeError:
                        logging.getLogger("tollhouse.routes").exception("failed with %r", secret)
                await gw.usage_actor.wait_settles(len(request_ids))
                entries = gw.ledger_entries()
                holds = gw.usage_actor.core.holds
            nursery.cancel_scope.cancel()
    assert set(upstream.keys) == {secret}  # the upstream did get the key, every time
    charges = [e for e in entries if e["kind"] == "charge"]
    assert sorted(e["request_id"] for e in charges) == sorted(request_ids) and not holds  # one each
    logged = caplog.text.encode() + b"\n".join(r.getMessage().encode() for r in caplog.records)
    assert b"upstream said " + REDACTED.encode() in logged and b"RuntimeError" in logged
    assert not [f for f in forms(secret) if f in logged]


def test_the_redactor_replaces_each_known_secret_and_key_shapes():
    r = Redactor(["hk/long-secret+1", "k1", "hk/long-secret+1-and-more"])
    assert r.text("a hk/long-secret+1-and-more b") == f"a {REDACTED} b"  # longest first: whole
    assert r.text('{"m": "HK\\/LONG-SECRET+1"}') == f'{{"m": "{REDACTED}"}}'  # JSON-escaped, any case
    assert r.text("hk%2Flong-secret%2B1") == REDACTED  # percent-encoded
    assert r.text("k1 k12 xk1 K1.") == f"{REDACTED} k12 xk1 {REDACTED}."  # a short secret: whole tokens only
    assert r.bytes(b"x hk/long-secret+1 y") == b"x " + REDACTED.encode() + b" y"
    shapes = ("Incorrect API key provided: sk-proj-********************abcd. Use sk-ant-api03-AAAAbbbb1234; "
              "AIzaSyA1234567890abcdefghijklmnopqrstu; Authorization: Bearer eyJhbGciOi.xyz")
    assert NO_SECRETS.text(shapes) == (f"Incorrect API key provided: {REDACTED}. Use {REDACTED}; {REDACTED}; "
                                       f"Authorization: Bearer {REDACTED}")
    prose = "the task-0123456789 ask-me-anything disk was fine"
    assert NO_SECRETS.text(prose) is prose  # nothing matched: the same object back
    assert "hk" not in repr(r) and "3 secrets" in repr(r)


def test_the_log_filter_rewrites_message_args_and_traceback():
    flt = RedactingFilter(Redactor([ADMIN_TOKEN, DEMO_KEY]))
    try:
        raise ValueError(f"token {ADMIN_TOKEN}")
    except ValueError:
        import sys
        record = logging.LogRecord("tollhouse.x", logging.ERROR, __file__, 1, "key %s", (DEMO_KEY,), sys.exc_info())
    assert flt.filter(record)
    text = logging.Formatter().format(record)
    assert DEMO_KEY not in text and ADMIN_TOKEN not in text and "ValueError: token " + REDACTED in text


def test_a_proxy_token_given_as_the_user_name_alone_is_a_secret_in_the_view_and_the_log():
    doc = base_config(Path("/nonexistent/state"))
    doc["providers"]["up"] = {"family": "openai_compat", "base_url": "http://127.0.0.1:9",
                              "credentials": [{"id": "u", "key": "sk-up-0123456789"}],
                              "proxy": "http://proxytoken0123456789@127.0.0.1:3128"}
    doc["pricing"]["up/*"] = {"input": "1.00", "output": "1.00"}
    config = parse_config(doc, env={})
    assert "proxytoken0123456789" in secret_values(config)
    view = json.dumps(config_view(config, redactor_for(config)))
    assert "proxytoken0123456789" not in view and "http://[redacted]@127.0.0.1:3128" in view
