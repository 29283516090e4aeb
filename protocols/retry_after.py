"""How long an upstream asked us to wait, from whatever it used to say so.

Sources, first match wins: ``retry-after-ms``; ``retry-after`` as seconds or an HTTP
date; Gemini's ``RetryInfo.retryDelay`` in the error body (``"26s"``); OpenAI's
``x-ratelimit-reset-requests``/``-tokens`` Go-style durations (``"6m0s"``, ``"120ms"``)
when the limit is exhausted; Anthropic's ``anthropic-ratelimit-*-reset`` RFC 3339
times. All pure: the caller passes the current wall time.

A hint that is not a sane wait -- infinite, NaN, negative, or longer than
``ABSURD_S`` (``Retry-After: 1e9`` is 31 years: a bug or a unit mix-up, not advice) --
is treated as absent, so the caller's own backoff applies. A date in the past means
"now" (clocks differ) and is 0. The cooldown actor clamps what remains to its
configured maximum.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Mapping

_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
ABSURD_S = 30 * 86400.0  # no upstream means it when it asks for more than a month


def sane(seconds: float | None) -> float | None:
    """A wait in seconds, or None when it is not one anybody meant."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0 or seconds > ABSURD_S:
        return None
    return seconds


def _seconds(text: str, scale: float = 1.0) -> float | None:
    try:
        return sane(float(text.strip()) * scale)
    except (ValueError, OverflowError):
        return None


def go_duration(text: str) -> float | None:
    """``"1m30.5s"`` -> 90.5; ``"120ms"`` -> 0.12; None if it is not a duration."""
    text = text.strip()
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sane(sum(float(n) * _UNIT[u] for n, u in parts))


def _http_date(text: str, now_wall: float) -> float | None:
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return sane(max(0.0, when.timestamp() - now_wall))


def _rfc3339(text: str, now_wall: float) -> float | None:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return sane(max(0.0, when.timestamp() - now_wall))


def gemini_retry_delay(body: bytes) -> float | None:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(doc, list) and doc:
        doc = doc[0]
    details = ((doc or {}).get("error") or {}).get("details") if isinstance(doc, dict) else None
    for d in details or []:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("RetryInfo"):
            delay = d.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                return _seconds(delay[:-1])
    return None


def _looks_numeric(value: str) -> bool:
    """A number of seconds (any float spelling, ``inf`` and ``nan`` included), not a date."""
    try:
        float(value)
    except ValueError:
        return False
    return True


def retry_after(headers: Mapping[str, str], body: bytes, now_wall: float) -> float | None:
    h = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in h:
        delay = _seconds(h["retry-after-ms"], 0.001)
        if delay is not None:
            return delay
    if "retry-after" in h:
        value = h["retry-after"].strip()
        delay = _seconds(value) if _looks_numeric(value) else _http_date(value, now_wall)
        if delay is not None:
            return delay
    delay = gemini_retry_delay(body) if body else None
    if delay is not None:
        return delay
    waits = []
    for kind in ("requests", "tokens"):
        if h.get(f"x-ratelimit-remaining-{kind}", "").strip() in ("0", "-1") and f"x-ratelimit-reset-{kind}" in h:
            d = go_duration(h[f"x-ratelimit-reset-{kind}"])
            if d is not None:
                waits.append(d)
    if waits:
        return max(waits)
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        if h.get(f"anthropic-ratelimit-{kind}-remaining", "").strip() == "0":
            reset = h.get(f"anthropic-ratelimit-{kind}-reset")
            if reset:
                d = _rfc3339(reset, now_wall)
                if d is not None:
                    waits.append(d)
    return max(waits) if waits else None
