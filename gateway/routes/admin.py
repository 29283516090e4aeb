"""The operator's API, behind the admin token.

``/admin/actors``: every actor's mailbox depth, handled count, restarts, state summary.
``/admin/credentials``, ``/admin/cooldowns``: pool and cooldown state (no secrets).
``/admin/field-cache``: the field cache's entries, bytes, evictions, expiries and rules.
``/admin/keys``, ``/admin/usage``, ``/admin/reservations``: the meter (``DELETE
/admin/keys/<name>`` revokes a key: final, idempotent, its history kept). A reservation is
``open`` while its request runs and ``settling`` once settled but not yet on disk (the
ledger refused the write; the meter retries it). ``/admin/usage/records``: the ledger's
entries, with the ``basis`` of an estimated charge and the ``unanswered`` attempts.

``/admin/usage/series``: cost and tokens per time bucket, key and model;
``/admin/requests``: the last settled requests, one row each.

Each view's work is a plain function of the runtime (``actor_states``,
``create_key`` ...), shared with the admin web page (``gateway/ui``), so the page and
the JSON API can never disagree. Every refusal is a JSON error (a 400 for a bad body
or query, naming what is wrong); key bodies are read by the config's rules
(``gateway/admin_schema.py``), so no body reaches the meter that it cannot store.
"""

from __future__ import annotations

import hmac
import math
import time
from functools import wraps

import attrs
from quart import Blueprint, current_app, request

from actors import cooldown, credentials, usage
from gateway.admin_schema import create_key_message, update_key_message
from protocols.errors import Forbidden, GatewayError, InvalidRequest, Unauthenticated
from protocols.money import usd
from protocols.validate import load_json_object

blueprint = Blueprint("admin", __name__, url_prefix="/admin")
route = blueprint.route  # "/admin/keys//x" is no key's path: the app merges no slashes


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


# ------------------------------------------------ operations (the JSON API and the page)

async def actor_states(runtime) -> dict:
    return runtime.supervisor.snapshot()


async def credential_states(runtime) -> dict:
    return await runtime.actors.credentials.ask(credentials.Snapshot())


async def enable(runtime, provider: str, credential_id: str) -> dict:
    return await runtime.actors.credentials.ask(credentials.Enable(provider, credential_id))


async def cooldown_states(runtime) -> dict:
    return await runtime.actors.cooldown.ask(cooldown.Snapshot())


async def key_list(runtime) -> list[dict]:
    return await runtime.actors.usage.ask(usage.Query("keys"))


async def create_key(runtime, doc) -> dict:
    """Make a key from a POST body (``InvalidRequest`` naming every problem)."""
    return await runtime.actors.usage.ask(create_key_message(doc))


async def update_key(runtime, name: str, doc) -> dict:
    return await runtime.actors.usage.ask(update_key_message(name, doc))


async def revoke_key(runtime, name: str) -> dict:
    """Revoke a key for good: 404 for an unknown name; a key already revoked answers
    its view again (idempotent, nothing written)."""
    return await runtime.actors.usage.ask(usage.RevokeKey(name))


async def reservation_list(runtime) -> list[dict]:
    """Every open reservation: on the shared backend every instance's, each naming its instance."""
    return await runtime.actors.usage.ask(usage.Query("all_reservations"))


async def usage_totals(runtime, window_s: float | None) -> dict:
    actor = runtime.supervisor.actor("usage")
    totals = await actor.read(actor.ledger.totals, None if window_s is None else time.time() - window_s)
    for dim in totals.values():
        for row in dim.values():
            row["cost_usd"] = usd(row.pop("cost_micro"))
    return {"window_s": window_s, "by": totals}


async def usage_records(runtime, request_id: str | None) -> list[dict]:
    actor = runtime.supervisor.actor("usage")
    return await actor.read(actor.ledger.entries, request_id)


#: the longest a series may reach back, and the most buckets it may have
SERIES_MAX_S = 90 * 86400
SERIES_MAX_BUCKETS = 2000


async def usage_series(runtime, window_s: float, bucket_s: int) -> dict:
    """Cost and tokens per ``bucket_s`` by key and model over the last ``window_s``."""
    if not 1 <= bucket_s <= SERIES_MAX_S:
        raise InvalidRequest(f"bucket_s must be between 1 and {SERIES_MAX_S}", param="bucket_s")
    if window_s > SERIES_MAX_S or window_s / bucket_s > SERIES_MAX_BUCKETS:
        raise InvalidRequest(f"since_s may reach back at most {SERIES_MAX_S} s and "
                             f"{SERIES_MAX_BUCKETS} buckets of bucket_s", param="since_s")
    actor = runtime.supervisor.actor("usage")
    now = time.time()
    rows = await actor.read(actor.ledger.series, now - window_s, bucket_s)
    for row in rows:
        row["cost_usd"] = usd(row.pop("cost_micro"))
    return {"window_s": window_s, "bucket_s": bucket_s, "now": now, "points": rows}


async def recent_requests(runtime, limit: int) -> list[dict]:
    """The last ``limit`` settled requests, newest first (a row per request)."""
    actor = runtime.supervisor.actor("usage")
    rows = await actor.read(actor.ledger.recent_requests, limit)
    for row in rows:
        row["cost_usd"] = usd(row.pop("amount_micro"))
    return rows


# ------------------------------------------------------------------ the JSON API

@route("/actors", methods=["GET"])
@admin_only
async def actors(runtime):
    return await actor_states(runtime)


@route("/credentials", methods=["GET"])
@admin_only
async def credential_pools(runtime):
    return await credential_states(runtime)


@route("/credentials/<provider>/<credential_id>/enable", methods=["POST"])
@admin_only
async def enable_credential(runtime, provider, credential_id):
    return await enable(runtime, provider, credential_id)


@route("/cooldowns", methods=["GET"])
@admin_only
async def cooldowns(runtime):
    return await cooldown_states(runtime)


@route("/field-cache", methods=["GET"])
@admin_only
async def field_cache(runtime):
    """The field cache's size and rules (counts only: no kept field leaves the gateway)."""
    config = runtime.config.field_cache
    out = {**attrs.asdict(runtime.field_store.statistics()), "enabled": config.enabled,
           "ttl_s": runtime.field_store.ttl_s, "rules": [attrs.asdict(r) for r in config.rules]}
    if runtime.redis is not None:  # this process's entries above; these crossed Redis
        out["shared"] = {"written": runtime.redis.fields.written, "loaded": runtime.redis.fields.loaded}
    return out


@route("/keys", methods=["GET"])
@admin_only
async def keys(runtime):
    return {"keys": await key_list(runtime)}


@route("/keys", methods=["POST"])
@admin_only
async def post_key(runtime):
    return await create_key(runtime, await _json(runtime)), 201


@route("/keys/<name>", methods=["PATCH", "POST"])
@admin_only
async def patch_key(runtime, name):
    return await update_key(runtime, name, await _json(runtime))


@route("/keys/<name>", methods=["DELETE"])
@admin_only
async def delete_key(runtime, name):
    return await revoke_key(runtime, name)


@route("/sockets", methods=["GET"])
@admin_only
async def sockets(runtime):
    """The open Responses WebSockets: key name, turns, and what each turn cost (its
    ledger entries, by request id)."""
    registry = runtime.sockets
    views = [info.view() for info in registry.open.values()]
    ids = [turn["request_id"] for view in views for turn in view["turns"] if turn["request_id"]]
    actor = runtime.supervisor.actor("usage")
    ledger = actor.ledger
    costs = await actor.read(lambda: {rid: sum(e["amount_micro"] for e in ledger.entries(rid)) for rid in ids})
    for view in views:
        for turn in view["turns"]:
            micro = costs.get(turn["request_id"])
            turn["cost_usd"] = usd(micro) if micro is not None and turn["end"] != "running" else None
    return {"open": views, "opened_total": registry.opened_total}


@route("/reservations", methods=["GET"])
@admin_only
async def reservations(runtime):
    return {"reservations": await reservation_list(runtime)}


@route("/usage", methods=["GET"])
@admin_only
async def usage_view(runtime):
    return await usage_totals(runtime, _seconds(request.args.get("since_s"), "since_s"))


@route("/usage/records", methods=["GET"])
@admin_only
async def records(runtime):
    return {"records": await usage_records(runtime, request.args.get("request_id"))}


@route("/usage/series", methods=["GET"])
@admin_only
async def series(runtime):
    """``?since_s=86400&bucket_s=3600`` (the defaults): a point per bucket, key and model."""
    window = _seconds(request.args.get("since_s"), "since_s")
    bucket = _seconds(request.args.get("bucket_s"), "bucket_s")
    return await usage_series(runtime, 86400 if window is None else window, 3600 if bucket is None else int(bucket))


@route("/requests", methods=["GET"])
@admin_only
async def requests(runtime):
    """``?limit=50`` (1-500): the last settled requests, newest first, one row each."""
    raw = request.args.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= 500:
        raise InvalidRequest(f"limit must be a whole number from 1 to 500, not {raw[:40]!r}", param="limit")
    return {"requests": await recent_requests(runtime, int(raw))}


async def _json(runtime) -> dict:
    """The body as a JSON object, read like an LLM route's (strict UTF-8, the config's
    depth limit), or a 400 (never Quart's HTML 500)."""
    return load_json_object(await request.get_data(as_text=False), runtime.config.server.max_json_depth)


def _seconds(raw: str | None, what: str) -> float | None:
    """A query parameter that counts seconds back from now: finite and >= 0 (NaN would
    match nothing and answer JSON no client can read)."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{what} must be a number of seconds, not {raw[:40]!r}", param=what) from None
    if not math.isfinite(value) or value < 0:
        raise InvalidRequest(f"{what} must be a finite number of seconds >= 0, not {raw[:40]!r}", param=what)
    return value
