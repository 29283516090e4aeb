"""Reading a provider's ``adapters`` lists: names or objects with parameters.

An entry is an adapter's name (``"max_completion_tokens"``) or an object naming it with
its parameters (``{"name": "default_max_tokens", "value": 8192}``). The parameters are
read by the config reader into the adapter's own attrs class, so an unknown parameter,
a wrong type or a missing required one is refused with its JSON path like any other
setting; an unknown adapter name gets a "did you mean". Whether an adapter fits the
provider's protocol is checked by ``ProviderConfig.problems``.
"""

from __future__ import annotations

from typing import Any

from gateway.config_schema import INVALID, Reader, did_you_mean, item
from providers.adapters import REGISTRY


class AdapterList(tuple):
    """The adapters one config list names, in the order written (a chain sorts them)."""

    @classmethod
    def read_config(cls, reader: Reader, raw: Any, path: str) -> Any:
        if not isinstance(raw, list):
            reader.fail(path, "expected an array of adapter names or {\"name\": ...} objects")
            return INVALID
        out = []
        seen: dict[str, int] = {}
        for i, entry in enumerate(raw):
            adapter = _read_entry(reader, entry, item(path, i))
            if adapter is INVALID:
                out.append(adapter)  # kept in its place: later entries' paths keep their indexes
                continue
            if adapter.NAME in seen:
                reader.fail(item(path, i), f"adapter {adapter.NAME!r} is already listed at "
                                           f"{item(path, seen[adapter.NAME])}")
                continue
            seen[adapter.NAME] = i
            out.append(adapter)
        return cls(out)


def _read_entry(reader: Reader, entry: Any, path: str) -> Any:
    if isinstance(entry, str):
        name, params = entry, {}
    elif isinstance(entry, dict):
        name = entry.get("name")
        if not isinstance(name, str):
            reader.fail(path + ".name", "is required: the adapter's name")
            return INVALID
        params = {k: v for k, v in entry.items() if k != "name"}
    else:
        reader.fail(path, "expected an adapter name or an object with \"name\"")
        return INVALID
    cls = REGISTRY.get(name)
    if cls is None:
        at = path if isinstance(entry, str) else path + ".name"
        reader.fail(at, f"unknown adapter {name!r} (one of {', '.join(REGISTRY)})" + did_you_mean(name, REGISTRY))
        return INVALID
    return reader.read_object(cls, params, path)
