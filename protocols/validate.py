"""Small type checks for request bodies that fail with the field's JSON path."""

from __future__ import annotations

import json
import re
from typing import Any

from protocols.errors import InvalidRequest


_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")


def load_json_object(body: bytes) -> dict:
    """Parse a request body that must be a JSON object.

    JSON can spell what UTF-8 cannot: an unpaired surrogate (``"\\ud800"``) parses but
    can never be sent on. Such a body, and one nested too deep to handle, is refused
    here, before anything is reserved.
    """
    if not body.strip():
        raise InvalidRequest("Request body is empty; expected a JSON object.")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("Request body is nested too deeply.") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    if _SURROGATE_ESCAPE.search(body) is not None:
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest("Request body contains an unpaired UTF-16 surrogate (\\ud800-\\udfff), "
                                 "which is not valid text.") from None
        except RecursionError:
            raise InvalidRequest("Request body is nested too deeply.") from None
    return doc


def require(doc: dict, key: str, kind: type | tuple, path: str = "") -> Any:
    if key not in doc or doc[key] is None:
        raise InvalidRequest(f"Missing required parameter: '{path}{key}'.", param=f"{path}{key}")
    return check(doc, key, kind, path)


def check(doc: dict, key: str, kind: type | tuple, path: str = "", default: Any = None) -> Any:
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
TOKEN_LIMIT_MAX = 2**31 - 1
_INTEGER_TEXT = re.compile(r"-?[0-9]{1,19}")


def token_limit(doc: dict, key: str, path: str = "", *, minimum: int = 1, special: tuple = (),
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
