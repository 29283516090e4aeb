"""Small type checks for request bodies that fail with the field's JSON path."""

from __future__ import annotations

import json
from typing import Any

from protocols.errors import InvalidRequest


def load_json_object(body: bytes) -> dict:
    """Parse a request body that must be a JSON object."""
    if not body.strip():
        raise InvalidRequest("Request body is empty; expected a JSON object.")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("Request body must be a JSON object.")
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
