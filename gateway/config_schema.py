"""Reading JSON into attrs classes, with every problem named by its JSON path.

The config classes are the schema: each field's type says what JSON it takes (``str``,
``int``, ``float``, ``bool``, ``Decimal`` money, ``Secret``, ``Literal[...]`` choices,
``X | None``, ``tuple[X, ...]`` arrays, ``Mapping[str, X]`` objects, nested attrs
classes), its default says whether it may be left out, and ``setting(check=...)``
adds the rule its value must follow; a class may add ``problems(unread)`` for rules
that span its fields (yielding paths relative to it). So a setting is declared once,
and the reader cannot drift from the classes it fills.

The reader never stops at the first problem: a bad value is recorded (path, message)
and replaced by its default, so the operator sees every problem in one pass. A key the
class does not know is a problem at any depth, with a "did you mean" when a known key
is close: a typo must never silently fall back to a default (``credit`` for
``credit_usd`` would be unlimited credit).
"""

from __future__ import annotations

import difflib
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterable

import attrs

from actors.usage_bounds import MAX_USD
from protocols.secret import Secret

_SETTING = "tollhouse.setting"
_SIMPLE_KEY = re.compile(r"^[A-Za-z0-9_*/+=:-]+$")


class _Invalid:
    """What a reader returns for a value it could not read (its problem is recorded)."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID = _Invalid()


@attrs.frozen
class Check:
    """A rule a value must follow, and the words an operator reads when it does not."""

    test: Callable[[Any], bool]
    message: str


POSITIVE = Check(lambda v: v > 0, "must be positive")
NON_NEGATIVE = Check(lambda v: v >= 0, "must be >= 0")
PORT = Check(lambda v: 0 <= v < 65536, "must be a port number (0-65535)")
FRACTION = Check(lambda v: 0 <= v <= 1, "must be between 0 and 1")


@attrs.frozen
class Setting:
    """How one field is read: its rule, its JSON name, and reading it as another shape."""

    check: Check | None = None
    key: str | None = None
    from_name: bool = False
    read_as: Any = None
    convert: Callable[[Any], Any] | None = None


def setting(default: Any = attrs.NOTHING, *, factory: Callable[[], Any] | None = None, check: Check | None = None,
            key: str | None = None, from_name: bool = False, read_as: Any = None,
            convert: Callable[[Any], Any] | None = None, repr: bool = True) -> Any:
    """An attrs field the config reader knows how to fill.

    ``from_name`` fields take the entry's name in its parent object (a provider's name)
    instead of a JSON key; ``read_as`` reads the JSON as another type and ``convert``
    turns that into the field's value (the pricing table is read as entries with a
    ``free`` flag and kept as ``Price``); ``repr=False`` keeps a value that may hold a
    password (a proxy URL) out of the config's repr.
    """
    meta = {_SETTING: Setting(check, key, from_name, read_as, convert)}
    if factory is not None:
        return attrs.field(factory=factory, metadata=meta, repr=repr)
    return attrs.field(default=default, metadata=meta, repr=repr)


def child(path: str, key: str) -> str:
    """``providers.x`` for simple names, ``pricing["openai/gpt-4.1"]`` when a name has a dot."""
    if _SIMPLE_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def join(path: str, sub: str) -> str:
    """A path below ``path``: ``sub`` is relative (``""``, ``"base_url"``, ``"[0].id"``)."""
    if not sub or not path or sub.startswith("["):
        return path + sub
    return f"{path}.{sub}"


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def closest(word: str, choices: Iterable[str], cutoff: float = 0.7) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the closest choice, or nothing when none is close."""
    close = closest(word, choices)
    return f"; did you mean {close!r}?" if close is not None else ""


def _type_name(kind: Any) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "true/false", dict: "object", list: "array",
             type(None): "null"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _json_kind(value: Any) -> str:
    return _type_name(type(value))


class Reader:
    """Walks a JSON document into attrs classes, collecting problems instead of stopping."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def fail(self, path: str, msg: str) -> None:
        self.problems.append(f"{path or '$'}: {msg}")

    # ---------------------------------------------------------------- objects

    def read_object(self, cls: type, raw: Any, path: str, name: str | None = None) -> Any:
        """An instance of ``cls`` from a JSON object, or INVALID if a required field is missing."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.fail(path, f"expected an object, got {_json_kind(raw)}")
            return INVALID
        attrs.resolve_types(cls)
        fields = attrs.fields(cls)
        by_key: dict[str, attrs.Attribute] = {}
        values: dict[str, Any] = {}
        for f in fields:
            meta: Setting = f.metadata.get(_SETTING, Setting())
            if meta.from_name:
                values[f.name] = name
            else:
                by_key[meta.key or f.name] = f
        for key in raw:
            if key not in by_key:
                self.fail(child(path, key), "unknown setting" + did_you_mean(key, by_key))
        complete = True
        unread: set[str] = set()
        for key, f in by_key.items():
            meta = f.metadata.get(_SETTING, Setting())
            if key not in raw:
                if f.default is attrs.NOTHING:
                    self.fail(child(path, key), "is required")
                    values[f.name] = INVALID
                    unread.add(f.name)
                    complete = False
                continue
            value = self.read_value(meta.read_as or f.type, raw[key], child(path, key))
            if value is not INVALID and value is not None and meta.check is not None and not meta.check.test(value):
                self.fail(child(path, key), meta.check.message)
                value = INVALID
            if value is INVALID:
                unread.add(f.name)
                if f.default is attrs.NOTHING:
                    values[f.name] = INVALID
                    complete = False
                continue
            values[f.name] = meta.convert(value) if meta.convert is not None else value
        # An incomplete object is still checked as a whole (its unread fields are INVALID
        # placeholders its checks skip), so one pass reports every problem; its parent
        # gets INVALID.
        instance = cls(**values)
        checks = getattr(instance, "problems", None)
        for sub, msg in checks(frozenset(unread)) if checks is not None else ():
            self.fail(join(path, sub), msg)
        return instance if complete else INVALID

    # ---------------------------------------------------------------- values

    def read_value(self, kind: Any, raw: Any, path: str) -> Any:
        origin = typing.get_origin(kind)
        args = typing.get_args(kind)
        if origin in (typing.Union, types.UnionType):
            if raw is None and type(None) in args:
                return None
            rest = [a for a in args if a is not type(None)]
            if len(rest) != 1:
                raise TypeError(f"config reader: a setting is one type or null, not {kind!r} at {path}")
            return self.read_value(rest[0], raw, path)
        if origin is typing.Literal:
            if not isinstance(raw, str) or raw not in args:
                shown = raw if isinstance(raw, str) else _json_kind(raw)
                self.fail(path, f"unknown value {shown!r} (one of {', '.join(args)})"
                          + (did_you_mean(raw, args) if isinstance(raw, str) else ""))
                return INVALID
            return raw
        if origin is tuple:
            return self._read_array(args[0], raw, path)
        if origin is Mapping:
            return self._read_mapping(args[1], raw, path)
        reader = _SCALARS.get(kind) or getattr(kind, "read_config", None)  # a type may read itself
        if reader is not None:
            return reader(self, raw, path)
        if attrs.has(kind):
            return self.read_object(kind, raw, path)
        raise TypeError(f"config reader: no reader for {kind!r} at {path}")

    def _read_array(self, kind: Any, raw: Any, path: str) -> Any:
        if not isinstance(raw, list):
            self.fail(path, f"expected an array, got {_json_kind(raw)}")
            return INVALID
        out = [self.read_value(kind, v, item(path, i)) for i, v in enumerate(raw)]
        # a bad element keeps its place so later elements keep their indexes in messages
        return tuple(out)

    def _read_mapping(self, kind: Any, raw: Any, path: str) -> Any:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.fail(path, f"expected an object, got {_json_kind(raw)}")
            return INVALID
        if attrs.has(kind) and kind not in _SCALARS:
            return {k: self.read_object(kind, v, child(path, k), name=k) for k, v in raw.items()}
        return {k: self.read_value(kind, v, child(path, k)) for k, v in raw.items()}

    def _expect(self, raw: Any, kinds: tuple, path: str) -> bool:
        if isinstance(raw, bool) and bool not in kinds or not isinstance(raw, kinds):
            self.fail(path, f"expected {' or '.join(_type_name(k) for k in kinds if k is not int or float not in kinds)}"
                            f", got {_json_kind(raw)}")
            return False
        return True

    def _str(self, raw: Any, path: str) -> Any:
        return raw if self._expect(raw, (str,), path) else INVALID

    def _int(self, raw: Any, path: str) -> Any:
        return raw if self._expect(raw, (int,), path) else INVALID

    def _bool(self, raw: Any, path: str) -> Any:
        return raw if self._expect(raw, (bool,), path) else INVALID

    def _float(self, raw: Any, path: str) -> Any:
        if not self._expect(raw, (int, float), path):
            return INVALID
        if not math.isfinite(raw):
            self.fail(path, "must be a finite number")
            return INVALID
        return float(raw)

    def _money(self, raw: Any, path: str) -> Any:
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            self.fail(path, f"expected a decimal string, got {_json_kind(raw)}")
            return INVALID
        try:
            value = Decimal(str(raw))
        except InvalidOperation:
            self.fail(path, f"not a decimal number: {raw!r}")
            return INVALID
        if not value.is_finite() or value < 0:
            self.fail(path, "must be a finite number >= 0")
            return INVALID
        if value > MAX_USD:
            self.fail(path, f"must be at most {MAX_USD:,} (the meter's bound on any amount)")
            return INVALID
        return value

    def _secret(self, raw: Any, path: str) -> Any:
        if not self._expect(raw, (str,), path):
            return INVALID
        if raw.startswith("env:"):
            name = raw[4:]
            if name not in self.env:
                self.fail(path, f"environment variable {name} is not set")
                return INVALID
            raw = self.env[name]
            if not raw:
                self.fail(path, f"environment variable {name} is empty")
                return INVALID
        if not raw:
            self.fail(path, "must not be empty")
            return INVALID
        return Secret(raw)


_SCALARS: dict[Any, Callable[[Reader, Any, str], Any]] = {
    str: Reader._str, int: Reader._int, bool: Reader._bool, float: Reader._float,
    Decimal: Reader._money, Secret: Reader._secret,
}

