"""The operator's API, behind the admin token.

``/admin/actors``: every actor's mailbox depth, handled count, restarts, state summary.
``/admin/credentials``, ``/admin/cooldowns``: pool and cooldown state (no secrets).
``/admin/keys``, ``/admin/usage``, ``/admin/reservations``: the meter. A reservation is
``open`` while its request runs and ``settling`` once settled but not yet on disk (the
ledger refused the write; the meter retries it). ``/admin/usage/records``: the ledger's
entries, with the ``basis`` of an estimated charge and the ``unanswered`` attempts.
"""

from __future__ import annotations

import hmac
import time
from functools import wraps

from quart import Blueprint, current_app, request

from actors import cooldown, credentials, usage
from protocols.errors import Forbidden, GatewayError, InvalidRequest, Unauthenticated
from protocols.money import usd

blueprint = Blueprint("admin", __name__, url_prefix="/admin")


def _error(err: GatewayError):
    return {"error": {"type": err.kind, "message": err.message}}, err.status


def admin_only(view):
    @wraps(view)
    async def guarded(*args, **kwargs):
        runtime = current_app.extensions["tollhouse"]
        token = runtime.config.admin_token
        if token is None or not token.value:
            return _error(Forbidden("The admin API is disabled: no admin token is configured."))
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-admin-token", "")
        if not hmac.compare_digest(given.encode(), token.value.encode()):
            return _error(Unauthenticated("A valid admin token is required."))
        try:
            return await view(runtime, *args, **kwargs)
        except GatewayError as err:
            return _error(err)

    return guarded


@blueprint.route("/actors", methods=["GET"])
@admin_only
async def actors(runtime):
    return runtime.supervisor.snapshot()


@blueprint.route("/credentials", methods=["GET"])
@admin_only
async def credential_pools(runtime):
    return await runtime.actors.credentials.ask(credentials.Snapshot())


@blueprint.route("/credentials/<provider>/<credential_id>/enable", methods=["POST"])
@admin_only
async def enable_credential(runtime, provider, credential_id):
    return await runtime.actors.credentials.ask(credentials.Enable(provider, credential_id))


@blueprint.route("/cooldowns", methods=["GET"])
@admin_only
async def cooldowns(runtime):
    return await runtime.actors.cooldown.ask(cooldown.Snapshot())


@blueprint.route("/keys", methods=["GET"])
@admin_only
async def keys(runtime):
    return {"keys": await runtime.actors.usage.ask(usage.Query("keys"))}


@blueprint.route("/keys", methods=["POST"])
@admin_only
async def create_key(runtime):
    doc = await _json()
    models = doc.get("models")
    created = await runtime.actors.usage.ask(usage.CreateKey(
        name=str(doc.get("name") or ""), credit_usd=doc.get("credit_usd"),
        models=tuple(models) if isinstance(models, list) else None,
        requests_per_minute=doc.get("requests_per_minute"), max_concurrency=doc.get("max_concurrency"),
        unlimited=doc.get("unlimited", False)))
    return created, 201


@blueprint.route("/keys/<name>", methods=["PATCH", "POST"])
@admin_only
async def update_key(runtime, name):
    doc = await _json()
    return await runtime.actors.usage.ask(usage.UpdateKey(
        name=name, credit_usd=doc.get("credit_usd"), add_credit_usd=doc.get("add_credit_usd"),
        disabled=doc.get("disabled") if isinstance(doc.get("disabled"), bool) else None,
        models=doc["models"] if "models" in doc else "unchanged",
        requests_per_minute=doc.get("requests_per_minute", "unchanged"),
        max_concurrency=doc.get("max_concurrency", "unchanged")))


@blueprint.route("/reservations", methods=["GET"])
@admin_only
async def reservations(runtime):
    return {"reservations": await runtime.actors.usage.ask(usage.Query("reservations"))}


@blueprint.route("/usage", methods=["GET"])
@admin_only
async def usage_totals(runtime):
    since = request.args.get("since_s")
    try:
        window = float(since) if since is not None else None
    except ValueError:
        raise InvalidRequest("since_s must be a number of seconds") from None
    actor = runtime.supervisor.actor("usage")
    totals = await actor.read(actor.ledger.totals, None if window is None else time.time() - window)
    for dim in totals.values():
        for row in dim.values():
            row["cost_usd"] = usd(row.pop("cost_micro"))
    return {"window_s": window, "by": totals}


@blueprint.route("/usage/records", methods=["GET"])
@admin_only
async def usage_records(runtime):
    actor = runtime.supervisor.actor("usage")
    request_id = request.args.get("request_id")
    return {"records": await actor.read(actor.ledger.entries, request_id)}


async def _json() -> dict:
    doc = await request.get_json(force=True, silent=True)
    if not isinstance(doc, dict):
        raise InvalidRequest("Expected a JSON object body.")
    return doc
