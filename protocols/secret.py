"""A secret value that never shows itself in a repr, a log line or an admin view."""

from __future__ import annotations

import attrs


@attrs.frozen(repr=False)
class Secret:
    value: str

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__
