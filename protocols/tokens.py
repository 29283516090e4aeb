"""Token counts from a real BPE vocabulary, read from this package and loaded on first use.

The byte estimate (``protocols.usage.estimate_tokens``, 4 bytes a token) is free but
undercounts what costs most to guess wrong: JSON tool schemas (0.87x the provider's
count) and Chinese text (0.68x). This module counts with OpenAI's ``o200k_base``
vocabulary instead. Anthropic's and Google's tokenizers are not published, so for
their models o200k is a stand-in that is close on English and code and far closer
than bytes/4 on JSON and CJK text.

Nothing is downloaded: the tiktoken wheel ships no tables, so the table ships here,
gzipped, in ``protocols/data`` (``SOURCES.md`` beside it says where it came from),
is checked against the SHA-256 tiktoken itself pins for it, and is handed to
tiktoken's BPE core. If tiktoken cannot be imported the counts fall back to the byte
estimate (``bpe_available()`` says which is in use).

Loading costs about half a second and some 45-75 MB resident (measured in
``bench/tokenizer.py``), far above what a credit hold is worth on every request, so
holds keep the byte estimate and this module serves partial charges and count_tokens
answers. It loads at the first count, never at import; a server calls ``load()`` from
a worker thread so the first count does not stall its event loop.

Every count is bounded in time: text is encoded in chunks of ``CHUNK_CHARS`` (which
also caps BPE's superlinear cost on a long run with no break, such as a base64
blob), and past ``EXACT_CHARS`` only an evenly spread sample of the chunks is
encoded and the total is scaled from it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import math
import threading
from pathlib import Path
from typing import Any

from protocols.unified import ImagePart, ReasoningPart, TextPart, ToolCallPart, ToolResultPart, UnifiedRequest
from protocols.usage import estimate_tokens

VOCABULARY = Path(__file__).with_name("data") / "o200k_base.tiktoken.gz"
# The hash tiktoken's ``tiktoken_ext.openai_public.o200k_base`` checks its download
# against: the table here is byte-for-byte OpenAI's.
VOCABULARY_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
# o200k_base's split pattern and special tokens, as tiktoken_ext.openai_public has them.
PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
SPECIAL_TOKENS = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}

CHUNK_CHARS = 8192
EXACT_CHARS = 256 * 1024
# Chat formatting around each message (role and turn markers) and the primed reply:
# 3 and 3 in OpenAI's published counting recipe; the others' are similar in size.
MESSAGE_OVERHEAD = 3
REPLY_OVERHEAD = 3
# One image at a provider's default resizing: Anthropic's cap (~1.15 megapixels) is
# ~1,600 tokens, above OpenAI's high-detail 1024x1024 (765) and Gemini's tile (258).
IMAGE_TOKENS = 1600


class Vocabulary:
    """The encoder, built once per process on first use and read-only after that.

    A lock makes concurrent first uses (worker threads) build it once, not once each.
    """

    def __init__(self, path: Path = VOCABULARY) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._encoding: Any = None
        self._tried = False
        self.unavailable = ""  # why BPE is not in use, once tried and failed

    def load(self) -> Any:
        """The tiktoken ``Encoding``, or None when tiktoken is not installed."""
        if self._tried:
            return self._encoding
        with self._lock:
            if not self._tried:
                self._encoding = self._build()
                self._tried = True
        return self._encoding

    def _build(self) -> Any:
        try:
            import tiktoken
        except ImportError as exc:
            self.unavailable = f"tiktoken is not installed ({exc}); counting 4 bytes a token"
            return None
        raw = gzip.decompress(self.path.read_bytes())
        digest = hashlib.sha256(raw).hexdigest()
        if digest != VOCABULARY_SHA256:
            raise ValueError(f"{self.path} is not o200k_base (sha256 {digest}); reinstall the package")
        ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in raw.splitlines() if line)}
        encoding = tiktoken.Encoding("o200k_base", pat_str=PATTERN, mergeable_ranks=ranks,
                                     special_tokens=SPECIAL_TOKENS)
        # The BPE core holds its own copy of the table; the Python dict would double it.
        encoding._mergeable_ranks = {}
        return encoding


_VOCABULARY = Vocabulary()


def load() -> None:
    """Build the encoder now (about half a second): for a worker thread at start-up or
    before the first count, so no event loop waits on it."""
    _VOCABULARY.load()


def bpe_available() -> bool:
    """Whether counts come from the BPE vocabulary (loading it if not yet loaded)."""
    return _VOCABULARY.load() is not None


def count_text_tokens(text: str) -> int:
    """Tokens in ``text`` under o200k_base (special-token text counted as plain text);
    the byte estimate when tiktoken is missing. Bounded time at any length."""
    if not text:
        return 0
    encoding = _VOCABULARY.load()
    if encoding is None:
        return estimate_tokens(len(text.encode("utf-8", "surrogatepass")))
    if len(text) <= CHUNK_CHARS:
        return len(encoding.encode_ordinary(text))
    starts = range(0, len(text), CHUNK_CHARS)
    budget = EXACT_CHARS // CHUNK_CHARS
    if len(starts) <= budget:
        return sum(len(encoding.encode_ordinary(text[s:s + CHUNK_CHARS])) for s in starts)
    picked = [text[s:s + CHUNK_CHARS] for s in (starts[i * len(starts) // budget] for i in range(budget))]
    counted = sum(len(encoding.encode_ordinary(chunk)) for chunk in picked)
    return math.ceil(counted * len(text) / sum(len(chunk) for chunk in picked))


def estimate_request_tokens(req: UnifiedRequest) -> int:
    """The input tokens ``req`` will be billed: system text, every message's text,
    reasoning, tool calls and tool results, the tool schemas as compact JSON (the
    protocol-specific tools in ``extra`` too), chat formatting per message, and a
    fixed allowance per image. Opaque reasoning blobs count at 4 bytes a token."""
    pieces: list[str] = [p.text for p in req.system if isinstance(p, TextPart)]
    extra_tokens = 0
    for message in req.messages:
        for part in message.parts:
            extra_tokens += _part_pieces(part, pieces)
    for tool in req.tools:
        pieces.append(_compact({"name": tool.name, "description": tool.description, "parameters": tool.parameters}))
    if req.extra.get("tools"):
        pieces.append(_compact(list(req.extra["tools"])))
    if req.server_tools:
        pieces.append(_compact([dict(t.raw) for t in req.server_tools]))
    turns = len(req.messages) + (1 if req.system else 0)
    return count_text_tokens("\n".join(pieces)) + extra_tokens + MESSAGE_OVERHEAD * turns + REPLY_OVERHEAD


def _part_pieces(part: Any, pieces: list[str]) -> int:
    """Adds ``part``'s countable text to ``pieces``; returns the tokens it costs beyond
    that text (images, opaque blobs)."""
    if isinstance(part, TextPart):
        pieces.append(part.text)
    elif isinstance(part, ImagePart):
        return IMAGE_TOKENS
    elif isinstance(part, ToolCallPart):
        pieces.append(part.name)
        pieces.append(part.arguments)
    elif isinstance(part, ToolResultPart):
        if isinstance(part.content, str):
            pieces.append(part.content)
        else:
            return sum(_part_pieces(inner, pieces) for inner in part.content)
    elif isinstance(part, ReasoningPart):
        pieces.append(part.text)
        return estimate_tokens(len(part.redacted)) if part.redacted else 0
    return 0


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
