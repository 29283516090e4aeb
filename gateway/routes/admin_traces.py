"""``GET /admin/traces/{request_id}``: one request's transform trace (``gateway.transform_trace``);
``GET /admin/traces``: the settings in force, the trace files there are, and what became
of the lines (written, dropped at the file cap, dropped by a full queue).

A request still being traced, and lines still queued, are waited for (at most
``FLUSH_WAIT_S``) before its trace is looked for, so a client that has its answer finds
it; an unknown id (or one that cannot be an id) is the admin API's 404.
"""

from __future__ import annotations

import trio
from quart import Blueprint

from gateway.routes.admin import admin_only
from gateway.trace_file import is_request_id
from protocols.errors import NotFound

blueprint = Blueprint("admin_traces", __name__, url_prefix="/admin")

FLUSH_WAIT_S = 5.0


@blueprint.route("/traces", methods=["GET"])
@admin_only
async def trace_state(runtime):
    traces = runtime.transform_traces
    settings = traces.settings
    return {"enabled": settings.enabled, "sample_ratio": settings.sample_ratio, "header": settings.header,
            "keys": list(settings.keys), "errors_only": settings.errors_only,
            "max_bytes_per_request": settings.max_bytes_per_request, "max_file_bytes": settings.max_file_bytes,
            "files": traces.file.files(), **traces.file.stats.view()}


@blueprint.route("/traces/<request_id>", methods=["GET"])
@admin_only
async def trace_of(runtime, request_id):
    unknown = NotFound(f"No transform trace for request {request_id[:64]!r}.")
    if not is_request_id(request_id):
        raise unknown
    traces = runtime.transform_traces
    with trio.move_on_after(FLUSH_WAIT_S):
        await traces.written(request_id)
    found = await traces.file.find(request_id)
    if found is None:
        raise unknown
    return found
