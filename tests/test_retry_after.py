"""Waiting times come from the upstream first, in every form the providers use."""

from __future__ import annotations

import json
from email.utils import parsedate_to_datetime

from protocols import errors as E
from protocols.retry_after import go_duration, retry_after
from tests.conftest import FIXTURES


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_retry_after_seconds_ms_and_http_date():
    assert retry_after({"retry-after": "30"}, b"", 0) == 30
    assert retry_after({"Retry-After-Ms": "1500", "retry-after": "30"}, b"", 0) == 1.5
    now = parsedate_to_datetime("Tue, 26 Mar 2024 19:59:00 GMT").timestamp()
    assert retry_after({"retry-after": "Tue, 26 Mar 2024 20:00:00 GMT"}, b"", now) == 60


def test_openai_reset_headers_when_exhausted():
    documented = json.loads(_fixture("openai-chat/error-429-rate-limit-tokens.headers.json"))
    headers = {**documented["rate_limit_headers_documented"], "x-ratelimit-remaining-tokens": "0"}
    assert retry_after(headers, b"", 0) == 0.008
    assert go_duration("6m0s") == 360 and go_duration("1m30.5s") == 90.5 and go_duration("soon") is None


def test_anthropic_reset_headers():
    sidecar = json.loads(_fixture("anthropic/error-429-rate-limit.headers.json"))["headers_verbatim"]
    now = parsedate_to_datetime(sidecar["date"]).timestamp()
    assert retry_after(sidecar, _fixture("anthropic/error-429-rate-limit.json"), now) == 1


def test_gemini_retry_info_in_the_body():
    body = _fixture("gemini/error-429-resource-exhausted-retryinfo.json")
    wait = retry_after({}, body, 0)
    assert wait == 26
    err = E.classify_upstream(429, body, {}, wait)
    assert isinstance(err, E.UpstreamRateLimited) and err.retry_after == 26


def test_classification_of_real_error_bodies():
    assert isinstance(E.classify_upstream(529, _fixture("anthropic/error-529-overloaded.json"), {}, None),
                      E.UpstreamOverloaded)
    assert isinstance(E.classify_upstream(429, _fixture("openai-chat/error-429-rate-limit-tokens.json"), {}, None),
                      E.UpstreamRateLimited)
    quota = b'{"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}'
    assert isinstance(E.classify_upstream(429, quota, {}, None), E.UpstreamQuotaExhausted)
    assert isinstance(E.classify_upstream(401, b"{}", {}, None), E.UpstreamAuthError)
    long = b'{"error": {"message": "This model\'s maximum context length is 8192 tokens"}}'
    assert isinstance(E.classify_upstream(400, long, {}, None), E.UpstreamContextTooLong)


def test_hints_that_are_not_sane_waits_are_treated_as_absent():
    for value in ("inf", "-inf", "nan", "-5", "1e9", "1e400", "Infinity"):
        assert retry_after({"retry-after": value}, b"", 0) is None, value
        assert retry_after({"retry-after-ms": value if value != "1e9" else "1e12"}, b"", 0) is None, value
    assert retry_after({"retry-after-ms": "nan", "retry-after": "12"}, b"", 0) == 12
    gemini = json.dumps({"error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                                "retryDelay": "infs"}]}}).encode()
    assert retry_after({}, gemini, 0) is None
    assert retry_after({"retry-after": "Fri, 01 Jan 2100 00:00:00 GMT"}, b"", 0) is None
    assert retry_after({"retry-after": "Tue, 26 Mar 2024 20:00:00 GMT"}, b"", 2e9) == 0.0  # in the past: now


def test_cooldown_clamps_an_upstream_hint_and_shows_both_waits():
    from actors.cooldown import CooldownCore, Outcome

    core = CooldownCore(1.0, 300.0, 0.0, max_retry_after_s=3600.0)
    limited = E.UpstreamRateLimited("slow down", retry_after=86400.0 * 20, upstream_status=429)
    decision, _ = core.outcome(Outcome("p", "m", "a", limited), now=100.0)
    assert decision.until == 100.0 + 3600.0
    [active] = core.snapshot(now=100.0)["active"]
    assert (active["asked_s"], active["applied_s"], active["clamped"]) == (86400.0 * 20, 3600.0, True)
    for bad in (float("inf"), float("nan"), -3.0):
        decision, _ = core.outcome(Outcome("p", "m", f"b{bad}", E.UpstreamRateLimited("x", retry_after=bad)), now=0.0)
        assert decision.until == 1.0  # the backoff, not the nonsense
    decision, _ = core.outcome(Outcome("p", "m", "c", E.UpstreamRateLimited("x", retry_after=7.0)), now=0.0)
    assert decision.until == 7.0
