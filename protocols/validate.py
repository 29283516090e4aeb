"""Small type checks for request bodies that fail with the field's JSON path."""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from protocols.errors import InvalidRequest


_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")
DEFAULT_MAX_JSON_DEPTH = 64
"""How deeply a request body may nest arrays and objects (``server.max_json_depth``).
Real clients stay near a dozen (a Codex body with tool schemas is 12); every codec and
``json.dumps`` of the body then recurse far from Python's limit."""


def load_json_object(body: bytes, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> dict:
    """Parse a request body that must be a JSON object.

    JSON can spell what UTF-8 cannot: an unpaired surrogate (``"\\ud800"``) parses but
    can never be sent on. Such a body, and one nested deeper than ``max_depth``, is
    refused here, before anything is reserved. The body must be UTF-8 (``json.loads``
    of bytes would guess UTF-16 or UTF-32 from the first bytes and take those too).
    """
    if not body.strip():
        raise InvalidRequest("Request body is empty; expected a JSON object.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"Request body is not UTF-8 text (byte {exc.start}).") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest(_too_deep(max_depth)) from None
    if not isinstance(doc, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    if nested_deeper_than(doc, max_depth):
        path = next(p for p, _, depth in _walk(doc, scalars=False) if depth > max_depth)
        raise InvalidRequest(f"{_too_deep(max_depth)[:-1]}, at '{path}'.", param=path)
    if _SURROGATE_ESCAPE.search(body) is not None:
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            path = _surrogate_at(doc)
            raise InvalidRequest(f"Invalid value at '{path}': it contains an unpaired UTF-16 surrogate "
                                 "(\\ud800-\\udfff), which is not valid text.", param=path) from None
    return doc


def nested_deeper_than(doc: Any, limit: int) -> bool:
    """Whether ``doc`` nests arrays and objects more than ``limit`` deep (``{}`` is 1).

    One level at a time, keeping only the containers: each level is one list
    comprehension, so the cost is a C-speed pass over the parsed values (about 0.3 ms
    for a 1 MB Codex body, a tenth of what ``json.loads`` took), with no recursion.
    """
    level = [doc] if type(doc) is dict or type(doc) is list else []
    for _ in range(limit):
        if not level:
            return False
        level = [v for c in level for v in (c.values() if type(c) is dict else c)
                 if type(v) is dict or type(v) is list]
    return bool(level)


def _walk(doc: Any, *, scalars: bool = True):
    """Every value (or only every array and object) in ``doc`` with its JSON path
    (``messages[0].content``) and depth (the body is 1), depth first, without
    recursion; for naming what was refused."""
    stack = [("", doc, 1)]
    while stack:
        path, value, depth = stack.pop()
        yield path or "(body)", value, depth
        if isinstance(value, dict):
            children = [(f"{path}.{k}" if path else k, v) for k, v in value.items()]
        elif isinstance(value, list):
            children = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        else:
            continue
        stack.extend((p, v, depth + 1) for p, v in reversed(children)
                     if scalars or isinstance(v, (dict, list)))


def _surrogate_at(doc: Any) -> str:
    """The path of the first string, or object key, that UTF-8 cannot encode."""
    for path, value, _ in _walk(doc):
        texts = value.keys() if isinstance(value, dict) else (value,) if isinstance(value, str) else ()
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return path if isinstance(value, str) else f"{path} (a key)"
    return "(body)"


def _too_deep(limit: int) -> str:
    return f"Request body is nested too deeply (more than {limit} levels of arrays and objects)."


def require(doc: Mapping, key: str, kind: type | tuple, path: str = "") -> Any:
    if key not in doc or doc[key] is None:
        raise InvalidRequest(f"Missing required parameter: '{path}{key}'.", param=f"{path}{key}")
    return check(doc, key, kind, path)


def check(doc: Mapping, key: str, kind: type | tuple, path: str = "", default: Any = None) -> Any:
    """``doc[key]`` if it has the right type, ``default`` if absent or null."""
    value = doc.get(key)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        names = " or ".join(_NAMES.get(k, k.__name__) for k in kinds)
        raise InvalidRequest(
            f"Invalid type for '{path}{key}': expected {names}, got {_NAMES.get(type(value), type(value).__name__)}.",
            param=f"{path}{key}",
        )
    return value


def object_at(value: Any, path: str) -> dict:
    """``value`` (an array element, or a value already read) if it is an object."""
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid type for '{path}': expected an object, got {_name_of(value)}.", param=path)
    return value


def one_of(doc: Mapping, key: str, allowed: tuple, path: str = "", default: Any = None) -> Any:
    """``doc[key]`` if it is one of the ``allowed`` strings, ``default`` if absent or null."""
    value = check(doc, key, str, path)
    if value is None:
        return default
    if value not in allowed:
        raise InvalidRequest(f"Invalid value for '{path}{key}': {value!r} (expected one of "
                             f"{', '.join(repr(a) for a in allowed)}).", param=f"{path}{key}")
    return value


def strings(doc: Mapping, key: str, path: str = "", *, single: bool = False) -> tuple:
    """``doc[key]`` as a tuple of strings: an array of strings (or, if ``single``, one
    string); ``()`` if absent or null."""
    value = check(doc, key, (str, list) if single else list, path)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidRequest(f"Invalid type for '{path}{key}[{i}]': expected a string, got {_name_of(item)}.",
                                 param=f"{path}{key}[{i}]")
    return tuple(value)


def _name_of(value: Any) -> str:
    return _NAMES.get(type(value), type(value).__name__)


_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


# A token limit is a 32-bit count in every provider's schema (Gemini's proto says so
# outright); no model accepts more, and keeping limits in range keeps every hold and
# every ledger integer far from overflow.
#: the longest model name a client may send: every provider's names are far shorter,
#: and the name is written to the ledger, the log, metrics and traces
MAX_MODEL_NAME = 256


def check_model_name(model: Any) -> None:
    """A client's model name no longer than ``MAX_MODEL_NAME`` characters: checked by
    each protocol's ``parse_request`` as it reads the name, so every door that parses
    (LLM calls, WebSocket turns, token counts) refuses the same names."""
    if isinstance(model, str) and len(model) > MAX_MODEL_NAME:
        raise InvalidRequest(f"Invalid 'model': longer than {MAX_MODEL_NAME} characters.", param="model")


def model_name(doc: Mapping) -> str:
    """A body's required ``model``: a string within ``MAX_MODEL_NAME``."""
    model = require(doc, "model", str)
    check_model_name(model)
    return model


TOKEN_LIMIT_MAX = 2**31 - 1
_INTEGER_TEXT = re.compile(r"-?[0-9]{1,19}")


def token_limit(doc: Mapping, key: str, path: str = "", *, minimum: int = 1, special: tuple = (),
                proto_json: bool = False) -> int | None:
    """A client's token limit as an int, or None if absent; anything else is a 400.

    A limit prices the credit hold, so one that is not a positive integer could mint
    money (a negative hold settled as-is once gave a key credit). ``special`` values are
    accepted as they are (Gemini's thinking budget: -1 dynamic, 0 off). ``proto_json``
    takes what Google's proto JSON parser takes for an int32: an integral number
    (``5.0``, ``1e3``) or a decimal string (``"5"``); strict JSON APIs take only an int.
    """
    value = doc.get(key)
    if value is None:
        return None
    name = f"{path}{key}"
    number = _proto_int(value) if proto_json else value
    if isinstance(number, bool) or not isinstance(number, int):
        got = "a decimal number" if isinstance(value, float) else _NAMES.get(type(value), type(value).__name__)
        raise InvalidRequest(f"Invalid type for '{name}': expected an integer, but got {got} instead.", param=name)
    if number in special:
        return number
    if number < minimum:
        allowed = f" (or {' or '.join(map(str, special))})" if special else ""
        raise InvalidRequest(f"Invalid '{name}': integer below minimum value. Expected a value >= {minimum}"
                             f"{allowed}, but got {_shown(number)} instead.", param=name)
    if number > TOKEN_LIMIT_MAX:
        raise InvalidRequest(f"Invalid '{name}': integer above maximum value. Expected a value <= "
                             f"{TOKEN_LIMIT_MAX}, but got {_shown(number)} instead.", param=name)
    return number


def _proto_int(value: Any) -> Any:
    """``value`` as proto JSON reads an integer field, or ``value`` itself if it cannot."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
        return int(value)
    return value


def _shown(number: int) -> str:
    text = str(number)
    return text if len(text) <= 24 else f"an integer of {len(text.lstrip('-'))} digits"
