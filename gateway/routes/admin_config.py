"""The running config and its reload, behind the admin token.

``GET /admin/config``: the running generation's config with every secret redacted
(``gateway/config_view.py``), its number, when it was loaded and from which file.
``POST /admin/reload``: read the config file again and apply it as the next
generation (``gateway/generation.py``); a config the loader refuses, or one that
changes a setting only a restart applies, is answered 400 with each problem's JSON
path and message, and the running config stays.

With ``tollhouse serve --workers N`` each worker answers for itself (``worker``: its
index). A reload on one worker that succeeds is then passed to every other worker
through the parent (``gateway.worker_link``), and the answer's ``workers`` lists each
one's outcome: its new generation, or ``reloaded: false`` with why. A worker's own
refusal answers 400 as above and reaches no other worker.
"""

from __future__ import annotations

from datetime import datetime, timezone

from quart import Blueprint

from gateway.config_view import config_view
from gateway.generation import Generation, ReloadRefused, changed_sections
from gateway.routes.admin import admin_only

blueprint = Blueprint("admin_config", __name__, url_prefix="/admin")


def _about(runtime, generation: Generation) -> dict:
    about = {"generation": generation.number,
             "loaded_at": datetime.fromtimestamp(generation.loaded_at, timezone.utc).isoformat(),
             "source": str(runtime.source.path) if runtime.source is not None else None}
    if runtime.worker is not None:
        about["worker"] = runtime.worker
    return about


@blueprint.route("/config", methods=["GET"])
@admin_only
async def running_config(runtime):
    generation = runtime.generation
    return {**_about(runtime, generation), "config": config_view(generation.config, runtime.redactor)}


@blueprint.route("/reload", methods=["POST"])
@admin_only
async def reload(runtime):
    before = runtime.generation
    try:
        generation = await runtime.reload_from_source()
    except ReloadRefused as refused:
        return {"error": {"type": "invalid_request_error",
                          "message": f"The new config was refused ({len(refused.problems)} problems); "
                                     f"generation {before.number} keeps running.",
                          "problems": [{"path": path, "message": runtime.redactor.text(message)}
                                       for path, message in refused.problems]}}, 400
    answer = {**_about(runtime, generation), "changed": changed_sections(before.config, generation.config),
              "keys_created": list(generation.keys_created)}
    if runtime.fleet is not None:
        others = await runtime.fleet.reload_others()
        answer["workers"] = sorted([{"worker": runtime.worker, "generation": generation.number},
                                    *(others if others is not None else [])], key=lambda view: view["worker"])
        if others is None:
            answer["workers_unknown"] = "the other workers did not all answer in time; see the parent's log"
    return answer
