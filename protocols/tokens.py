"""Token counts for charges and count_tokens answers (placeholder: bytes/4)."""

from __future__ import annotations

from protocols.usage import estimate_tokens


def count_text_tokens(text: str) -> int:
    return estimate_tokens(len(text.encode("utf-8", "surrogatepass")))


def estimate_request_tokens(req) -> int:
    import json
    raw = getattr(req, "raw", None)
    return estimate_tokens(len(json.dumps(raw, ensure_ascii=False).encode("utf-8", "surrogatepass"))) if raw else 0
