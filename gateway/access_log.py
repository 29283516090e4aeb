"""The access log: one ``request`` line per LLM call, WebSocket turn or refusal.

An ``Observer`` of ``runtime.observers`` (``gateway.observe``): it hears each ``Served``
record once, after the settlement (or at the refusal), and writes it as one line with
every field, null when the request never got that far -- so every line has the same
keys and a query over them needs no guesswork. Health probes and admin calls are not
LLM calls: they make no record and no line.

Fields: ``request_id``, ``key`` (the gateway key's *name*), ``protocol`` (the client's),
``transport`` (``http``/``websocket``), ``model`` (as the client named it), ``stream``,
``status`` (what the client got; 499 when it left first), ``target``
(``provider/model`` of the attempt the charge belongs to), ``provider``,
``credential`` (its id), ``reason`` (the ledger's end reason), ``provenance`` (where
the token counts came from), ``tokens`` (by bucket), ``cost_micro_usd`` (what the
ledger charged), ``ttfb_ms``, ``duration_ms``, ``attempts``, ``failovers``, ``error``
(the error's class) and ``error_kind``; ``prompt`` only with ``logging.log_prompts``.
"""

from __future__ import annotations

from typing import Any

from gateway.logs import logger as named_logger
from gateway.observe import Served

EVENT = "request"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def fields(record: Served) -> dict[str, Any]:
    """The access line's fields for one record."""
    usage = record.usage
    out = {
        "request_id": record.request_id, "key": record.key_name, "protocol": record.protocol,
        "transport": record.transport.value, "model": record.model, "stream": record.stream,
        "status": record.status, "target": record.target, "provider": record.provider,
        "credential": record.credential, "reason": record.reason, "provenance": record.provenance,
        "tokens": None if usage is None else {
            "input": usage.input, "cached_input": usage.cached_input, "cache_write": usage.cache_write,
            "output": usage.output, "reasoning": usage.reasoning},
        "cost_micro_usd": record.cost_micro, "ttfb_ms": _ms(record.ttfb_s), "duration_ms": _ms(record.duration_s),
        "attempts": record.attempts, "failovers": max(record.attempts - 1, 0),
        "error": record.error, "error_kind": record.error_kind,
    }
    if record.prompt is not None:
        out["prompt"] = record.prompt
    return out


class AccessLog:
    """Writes the access line; quick and non-blocking, as an observer must be (one
    formatted write to stdout, at the request's end, never per event)."""

    def __init__(self, logger: Any = None) -> None:
        self.log = logger if logger is not None else named_logger("tollhouse.access")

    def served(self, record: Served) -> None:
        self.log.info(EVENT, **fields(record))
