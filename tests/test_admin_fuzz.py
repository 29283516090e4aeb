"""A fuzzer for the admin key API, through real sockets to one running gateway.

``POST /admin/keys`` and ``PATCH /admin/keys/<name>`` get arbitrary JSON: the known
fields with values of every type and size, unknown fields, non-object bodies, names
the URL must escape. Whatever arrives, the gateway answers a JSON 2xx, 400 or 404 (a
500 is a bug), the meter never restarts, a refused request changes no key, and an
accepted one stores exactly what it answered, with the types a key's settings have.
Derandomized with a fixed number of examples: the same run on every machine.
"""

from __future__ import annotations

import json
from decimal import Decimal
from urllib.parse import quote

import httpx
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.money import to_micro, usd
from tests.conftest import ADMIN_TOKEN, running_gateway

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
EXAMPLES = 150  # per endpoint; two requests each
FIELDS = ["name", "key", "credit_usd", "add_credit_usd", "unlimited", "disabled", "models",
          "requests_per_minute", "max_concurrency"]
NAMES = ["test", "fz", "fz-2.b", "missing", "a/b", "a b", "..", "é", "", "x" * 65]
TRICKY = ["1e30", "1e-30", "NaN", "Infinity", "-1", "-0", "0", "0.000001", "999999999.999999", "1000000000.01",
          "1_000", " 1 ", "\ud800", "true", "null", "demo", "*", "env:HOME"]

BIG = [2**63, 2**63 - 1, 2**70, 10**9, 10**9 + 1, 0, -1]
scalars = (st.none() | st.booleans() | st.integers(min_value=-2**80, max_value=2**80) | st.sampled_from(BIG)
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(TRICKY)
           | st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
# values a field takes when it is well formed, so that some requests are accepted
PLAUSIBLE = {
    "name": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,8}", fullmatch=True),
    "key": st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=16),
    "credit_usd": st.decimals(min_value=0, max_value=10**9, allow_nan=False, places=6).map(str),
    "add_credit_usd": st.decimals(min_value=0, max_value=10**3, allow_nan=False, places=2).map(str),
    "unlimited": st.booleans(),
    "disabled": st.booleans(),
    "models": st.none() | st.lists(st.sampled_from(["demo", "fast", "*", "sim/sim-chat"]), max_size=3),
    "requests_per_minute": st.none() | st.integers(min_value=1, max_value=10**9),
    "max_concurrency": st.none() | st.integers(min_value=1, max_value=10**9),
}
SETTINGS = ("name", "credit_usd", "disabled", "models", "requests_per_minute", "max_concurrency")
CHANGES = ["credit_usd", "add_credit_usd", "disabled", "models", "requests_per_minute", "max_concurrency"]


def _bodies(required: list[str], optional: list[str], one_of: list[dict] = ()):
    """Well-formed bodies (the ``required`` fields, some ``optional`` ones, and one of
    ``one_of`` when given), some with one field given any value (a known field or not),
    then any object, then any JSON at all."""
    plausible = st.fixed_dictionaries({f: PLAUSIBLE[f] for f in required},
                                      optional={f: PLAUSIBLE[f] for f in optional})
    if one_of:
        plausible = st.tuples(plausible, st.one_of([st.fixed_dictionaries(c) for c in one_of])).map(
            lambda t: {**t[0], **t[1]})
    one_off = st.tuples(plausible, st.sampled_from(FIELDS) | st.text(max_size=10), values).map(
        lambda t: {**t[0], t[1]: t[2]})
    return (plausible | one_off | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), values, max_size=6)
            | values)


new_keys = _bodies(["name"], ["key", "credit_usd", "unlimited", "models", "requests_per_minute", "max_concurrency"],
                   one_of=[{"credit_usd": PLAUSIBLE["credit_usd"]}, {"unlimited": st.just(True)}])
changes = _bodies([], CHANGES)

FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _keys(client: httpx.Client) -> dict[str, dict]:
    r = client.get("/admin/keys", headers=ADMIN)
    assert r.status_code == 200
    return {k["name"]: k for k in r.json()["keys"]}


def _micro(amount) -> int:
    return to_micro(Decimal(str(amount)))


def _as_asked(body: dict, before: dict | None) -> dict:
    """The settings an accepted body must leave its key with: what it typed, exactly
    (``"models": "demo"`` accepted as "any model" would fail here), the rest as before."""
    fields = set(CHANGES) if before is not None else {"name", "key", *CHANGES} - {"add_credit_usd"} | {"unlimited"}
    assert set(body) <= fields, f"accepted unknown fields {set(body) - fields}"
    want = {f: before[f] for f in SETTINGS} if before is not None else {
        "name": body["name"], "disabled": False, "models": None, "requests_per_minute": None,
        "max_concurrency": None}
    for field in ("disabled", "models", "requests_per_minute", "max_concurrency"):
        if field in body:
            want[field] = body[field]
    credit = None if before is None or before["credit_usd"] is None else _micro(before["credit_usd"])
    if before is None:
        assert ("credit_usd" in body) != (body.get("unlimited") is True)
    if "credit_usd" in body:
        credit = _micro(body["credit_usd"])
    if "add_credit_usd" in body:
        credit = (credit or 0) + _micro(body["add_credit_usd"])
    want["credit_usd"] = None if credit is None else usd(credit)
    return want


class Probe:
    """Sends one fuzzed request and checks what it did to the keys (the listing after
    the previous request is this one's "before": nothing else changes keys)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.keys = _keys(client)

    def check(self, method: str, path: str, body, *, last: bool = False) -> None:
        headers = {**ADMIN, "content-type": "application/json"}
        if last:
            headers["connection"] = "close"
        # json.dumps writes NaN and Infinity (which the gateway's parser reads) and escapes
        # a lone surrogate (which it must refuse)
        r = self.client.request(method, path, headers=headers, content=json.dumps(body).encode())
        assert r.status_code in (200, 201, 400, 404), (method, path, body, r.status_code, r.text[:300])
        answer = r.json()  # every answer is JSON
        before, after = self.keys, _keys(self.client)
        self.keys = after
        if r.status_code >= 400:
            assert isinstance(answer["error"]["message"], str)
            assert after == before, (method, path, body)
            return
        name = answer["name"]
        if body.get("key") is not None:  # null, like no key, asks the gateway to make one
            assert answer.pop("key") == body["key"]
        answer.pop("key", None)
        assert after[name] == answer
        want = _as_asked(body, before.get(name) if method == "PATCH" else None)
        assert {f: answer[f] for f in SETTINGS} == {f: want[f] for f in SETTINGS}, body
        assert {n: k for n, k in after.items() if n != name} == {n: k for n, k in before.items() if n != name}

    def meter_never_restarted(self) -> None:
        usage = self.client.get("/admin/actors", headers=ADMIN).json()["usage"]
        assert usage["restarts"] == 0, usage["last_crash"]


def _fuzz(url: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        probe = Probe(client)

        @FUZZ
        @given(body=new_keys)
        def creates(body):
            probe.check("POST", "/admin/keys", body)

        @FUZZ
        @given(name=st.sampled_from(["test", "fz"]) | st.sampled_from(NAMES) | st.text(max_size=8), body=changes)
        def patches(name, body):
            # A path no route matches ("a/b", "") is answered 404 before its body is read,
            # and the server then drops the connection without saying so: a keep-alive
            # client could race that close, so such a request is its connection's last.
            unrouted = "/" in name or name in ("", ".", "..")
            probe.check("PATCH", f"/admin/keys/{quote(name, safe='')}", body, last=unrouted)

        creates()
        probe.meter_never_restarted()
        probe.check("POST", "/admin/keys", {"name": "fz", "credit_usd": "1"})
        patches()
        probe.meter_never_restarted()


async def test_no_admin_body_gets_a_500_restarts_the_meter_or_changes_a_key_it_refuses(config_doc):
    with trio.fail_after(120):
        async with running_gateway(config_doc) as gw:
            await trio.to_thread.run_sync(_fuzz, gw.url, abandon_on_cancel=True)
