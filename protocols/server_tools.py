"""Server tools (the upstream runs them: web search, code execution) across protocols.

A client's server tools are read into ``unified.ServerTool``s by its protocol module
and written by the upstream's from the table below, kind by kind. A kind the upstream
family has no equivalent for is refused with a 400 in the client's protocol naming the
tool (``UnsupportedServerTool``), never silently dropped -- unless the operator chose
``drop`` for that tool type on the provider (``server_tools: {"web_search": "drop"}``),
which ``drop_tools`` applies before the request is built. ``refusal`` tells the
dispatcher before it leases a credential, so a target that cannot take the request is
skipped without an attempt.

| kind           | Responses          | Anthropic               | Gemini         | Chat |
|----------------|--------------------|-------------------------|----------------|------|
| web_search     | `web_search`       | `web_search_20250305`   | `googleSearch` | --   |
| code_execution | `code_interpreter` | --                      | `codeExecution`| --   |
| web_fetch      | --                 | --                      | `urlContext`   | --   |

What a server tool returns (search results, citations, grounding) reaches a client of
another protocol as the answer's text only.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import attrs

from protocols.errors import InvalidRequest
from protocols.unified import ServerTool, ServerToolKind, UnifiedRequest

K = ServerToolKind
WIRE: Mapping[str, Mapping[ServerToolKind, dict]] = {
    "openai_responses": {K.WEB_SEARCH: {"type": "web_search"},
                         K.CODE_EXECUTION: {"type": "code_interpreter", "container": {"type": "auto"}}},
    "anthropic": {K.WEB_SEARCH: {"type": "web_search_20250305", "name": "web_search"}},
    "gemini": {K.WEB_SEARCH: {"googleSearch": {}}, K.CODE_EXECUTION: {"codeExecution": {}},
               K.WEB_FETCH: {"urlContext": {}}},
    "openai_chat": {},
}
DROP = "drop"
REFUSE = "refuse"
POLICIES = (DROP, REFUSE)


class UnsupportedServerTool(InvalidRequest):
    """A server tool the chosen upstream family cannot run."""


def kind_names() -> tuple[str, ...]:
    """Tool types an operator may name in a ``server_tools`` policy."""
    return tuple(k.value for k in ServerToolKind)


def drop_tools(req: UnifiedRequest, protocol: str, policy: Mapping[str, str]) -> UnifiedRequest:
    """The request without the server tools ``protocol`` cannot run and the operator
    chose to drop (``policy``: kind name -> ``drop`` or ``refuse``)."""
    if not req.server_tools or req.protocol == protocol:
        return req
    table = WIRE.get(protocol, {})
    kept = tuple(t for t in req.server_tools if t.kind in table or policy.get(t.kind.value) != DROP)
    return req if len(kept) == len(req.server_tools) else attrs.evolve(req, server_tools=kept)


def refusal(req: UnifiedRequest, protocol: str, policy: Mapping[str, str]) -> UnsupportedServerTool | None:
    """What building ``req`` for a ``protocol`` upstream would raise (after the
    operator's drops), known before any credential is leased; None when it can take it.
    A same-protocol request keeps its tools as written."""
    if not req.server_tools or req.protocol == protocol:
        return None
    table = WIRE.get(protocol, {})
    for tool in req.server_tools:
        if tool.kind not in table and policy.get(tool.kind.value) != DROP:
            return _unsupported(tool, protocol)
    return None


def _unsupported(tool: ServerTool, protocol: str) -> UnsupportedServerTool:
    return UnsupportedServerTool(
        f"The tool {tool.wire_type!r} ({tool.kind.value}) is not available on this model's upstream "
        f"({protocol}); the operator may set server_tools.{tool.kind.value} to 'drop' for it.",
        param="tools")


def wire_tools(tools: Iterable[ServerTool], protocol: str) -> list[dict]:
    """``tools`` in ``protocol``'s own form; a tool it has no equivalent for is refused."""
    table = WIRE.get(protocol, {})
    out = []
    for tool in tools:
        wire = table.get(tool.kind)
        if wire is None:
            raise _unsupported(tool, protocol)
        out.append(dict(wire))
    return out
