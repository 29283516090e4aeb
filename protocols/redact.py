"""Secrets out of upstream text, before it reaches a client or a log.

An upstream may quote the credential it was sent (OpenAI's 401 says ``Incorrect API
key provided: sk-...``; a hostile or buggy one may echo any header). The gateway knows
every secret it loaded -- provider keys, gateway keys, the admin token, proxy
passwords -- so each occurrence is replaced structurally, wherever upstream text is
shown: error messages, error bodies, in-stream error events, log records.

A ``Redactor`` is built once from those values. It matches each secret as written and
in the forms it takes inside other text (JSON-escaped, with or without ``ensure_ascii``
and ``\\/``; Python's ``repr`` escapes, as transport errors quote header values;
percent-encoded, as in a ``?key=`` URL), in any letter case, plus the shapes providers
give their keys (``sk-...``, ``sk-ant-...``, ``AIza...``, a ``Bearer`` token), whichever
gateway loaded them. All of it is one compiled pattern, longest alternative first, so a
secret that contains another is replaced whole. The replacement is ``[redacted]``: no
quote, backslash or line break, so JSON stays JSON and an SSE frame stays one frame.

It runs on error paths only; text with no match costs one regex scan and is returned
as the same object.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable
from urllib.parse import quote

REDACTED = "[redacted]"

#: shorter values are matched only as whole tokens, so a short key does not shred words
SHORT = 8
_TOKEN = r"a-z0-9_\-"

# The shapes providers give their keys, redacted whether the gateway loaded them or not
# (an upstream may quote a key of another account). ``*`` is in the class: OpenAI masks
# the middle of a key it quotes, and the ends it shows are still the key's. Matched on
# ASCII-lowercased text; a group, when present, is the part replaced (a bearer token
# keeps its scheme word). Each starts with a literal so the scan skips most positions.
SHAPES = (
    r"sk-(?<![a-z0-9]sk-)[a-z0-9_\-*]{8,}",  # OpenAI (sk-, sk-proj-), Anthropic (sk-ant-), most compatibles
    r"aiza(?<![a-z0-9]aiza)[0-9a-z_\-]{30,}",  # Google API keys
)
BEARER_TOKEN = r"[a-z0-9._~+/=\-]{8,}"  # after "bearer ": the group replaced, the scheme word kept

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _forms(secret: str) -> set[str]:
    """The ways one secret can appear inside other text, ASCII-lowercased."""
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
             repr(secret)[1:-1], repr(secret.encode("utf-8", "surrogatepass"))[2:-1],
             quote(secret, safe=""), quote(secret)}
    forms |= {f.replace("/", "\\/") for f in forms if "/" in f}
    return {f.translate(_ASCII_LOWER) for f in forms if f}


def _trie(words: Iterable[str]) -> str:
    """One alternation for many literals, as a trie: each position is tried once per
    character, not once per secret; an end with longer words after it tries those first."""
    root: dict = {}
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict) -> str:
        branches = [re.escape(ch) + build(node[ch]) for ch in sorted(k for k in node if k)]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:
            return ("(?:" + body + ")?") if len(branches) == 1 else body + "?"
        return body

    # the root's branches stay top-level alternatives: the scan then skips every
    # position whose character starts none of them
    return "|".join(re.escape(ch) + build(root[ch]) for ch in sorted(root))


def _pattern(secrets: Iterable[str]) -> str:
    long_forms: set[str] = set()
    short_forms: set[str] = set()
    for secret in secrets:
        (long_forms if len(secret) >= SHORT else short_forms).update(_forms(secret))
    known = [_trie(long_forms)] if long_forms else []
    known += [rf"{re.escape(f)}(?<![{_TOKEN}]{re.escape(f)})(?![{_TOKEN}])"
              for f in sorted(short_forms, key=lambda f: (-len(f), f))]
    # a known secret after ``Bearer`` is taken whole, not cut where the token class ends
    bearer = "bearer +(" + "|".join(known + [BEARER_TOKEN]) + ")"
    return "|".join(known + list(SHAPES) + [bearer])


class Redactor:
    """Replaces every known secret (and every key-shaped token) in text or bytes."""

    __slots__ = ("count", "_text", "_bytes")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {s for s in secrets if isinstance(s, str) and s}
        self.count = len(values)  # how many secrets it knows (never which)
        pattern = _pattern(values)
        self._text = re.compile(pattern)
        # bytes: the same alternatives in UTF-8 (a lone surrogate kept as it is, never an error)
        self._bytes = re.compile(pattern.encode("utf-8", "surrogatepass"))

    def __repr__(self) -> str:
        return f"Redactor({self.count} secrets)"

    def text(self, s: str) -> str:
        """``s`` with each match replaced; letter case is ignored for ASCII letters (the
        scan runs on a lowercased copy of the same length: ``str.lower`` when the text is
        ASCII, where it is the same copy made in C)."""
        lowered = s.lower() if s.isascii() else s.translate(_ASCII_LOWER)
        return _splice(s, self._text.finditer(lowered), REDACTED)

    def bytes(self, b: bytes) -> bytes:
        return _splice(b, self._bytes.finditer(b.lower()), REDACTED.encode())

    def any(self, value: Any) -> Any:
        """A str, bytes, or a JSON-like structure of them, redacted; anything else as is."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, (bytes, bytearray)):
            return self.bytes(bytes(value))
        if isinstance(value, dict):
            return {self.any(k): self.any(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.any(v) for v in value)
        return value

    def error(self, exc: Any) -> Any:
        """A ``GatewayError`` made from upstream text, redacted in place (its message, args,
        param, the upstream body and headers it keeps); returned for chaining."""
        exc.message = self.text(exc.message)
        exc.args = tuple(self.any(a) for a in exc.args)
        if getattr(exc, "param", None):
            exc.param = self.text(exc.param)
        if getattr(exc, "upstream_body", None):
            exc.upstream_body = self.bytes(exc.upstream_body)
        if getattr(exc, "upstream_headers", None):
            exc.upstream_headers = {k: self.text(v) for k, v in exc.upstream_headers.items()}
        return exc


def _splice(original: Any, matches: Iterable[re.Match], replacement: Any) -> Any:
    pieces = []
    at = 0
    for m in matches:
        start, end = m.span(1) if m.lastindex else m.span()
        pieces += [original[at:start], replacement]
        at = end
    if not pieces:
        return original
    pieces.append(original[at:])
    return original[:0].join(pieces)


#: knows no secret; still removes key-shaped tokens
NO_SECRETS = Redactor()
