"""Namespace tools (Responses ``{"type": "namespace", "name": ..., "tools": [...]}``,
as Codex sends ``multi_agent_v1``) as plain functions for every other protocol.

Each nested function becomes ``<namespace>__<tool>``; other protocols' upstreams see
only those names. A call to one comes back to the Responses client as the namespace's
own call: ``function_call`` with ``name`` the inner tool and ``namespace`` beside it.
"""

from __future__ import annotations

from typing import Any

import attrs

SEPARATOR = "__"


def flat_name(namespace: str | None, name: str) -> str:
    return f"{namespace}{SEPARATOR}{name}" if namespace else name


@attrs.frozen
class NamespacedNames:
    """The flattened names of one request, each to its (namespace, inner name)."""

    names: dict = attrs.field(factory=dict)

    @staticmethod
    def of(req: Any) -> "NamespacedNames":
        tools = getattr(req, "tools", ()) or ()
        return NamespacedNames({t.name: (t.extra["namespace"], t.extra["function"])
                                for t in tools if "namespace" in t.extra and "function" in t.extra})

    def split(self, name: str) -> tuple[str | None, str]:
        """(namespace, name) for a call's name; (None, name) for a plain function."""
        return self.names.get(name, (None, name))
