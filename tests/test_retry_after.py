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
