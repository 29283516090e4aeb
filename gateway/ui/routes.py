"""``/admin/ui``: the admin web page's routes, on the same operations as the JSON API.

Signing in: ``GET /admin/ui/login`` gives a form and a login-CSRF cookie
(``th_login``); ``POST /admin/ui/login`` with the admin token (in the body, never in a
URL) and the same nonce begins a session: the ``th_session`` cookie (HttpOnly,
SameSite=Strict, Path=/admin, Secure over https) is the session itself, signed with a
key derived from the admin token, so any worker accepts it (``gateway.ui.sessions``);
each page re-signs it, which is what makes an idle session expire. Every page needs a live session (else a 303
to the sign-in form); every POST also needs the session's CSRF token in its form and,
when the browser sends ``Origin``, this host as its origin. An address that keeps
sending wrong tokens is made to wait (``SignInGuard``, counted by each process on its
own: with N workers a guesser gets at most N times the tries). Every answer carries a
strict Content-Security-Policy: no inline script or style, nothing from elsewhere.
"""

from __future__ import annotations

import hmac
import json
from functools import wraps
from typing import Callable
from urllib.parse import urlsplit

import attrs
from quart import Blueprint, Response, current_app, redirect, request

from gateway.routes import admin
from gateway.ui import pages
from gateway.ui.sessions import LoginNonces, Session, Sessions, SignInGuard, fingerprint
from protocols.errors import GatewayError

SESSION_COOKIE = "th_session"
LOGIN_COOKIE = "th_login"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",  # "no-referrer" would make a browser send "Origin: null" on a POST
    "cache-control": "no-store",
}

#: the windows the usage page offers, and the bucket each is drawn with
WINDOWS = {3600: 60, 86400: 1800, 604800: 10800}

blueprint = Blueprint("ui", __name__, url_prefix=pages.PREFIX, static_folder="static", static_url_path="/static")


@attrs.define
class UI:
    """The page's server-side state: who is signed in, which sign-in forms are live."""

    clock: Callable[[], float]
    sessions: Sessions = attrs.field(factory=Sessions)
    nonces: LoginNonces = attrs.field(factory=LoginNonces)
    guard: SignInGuard = attrs.field(factory=SignInGuard)


def _ui() -> UI:
    return current_app.extensions["tollhouse_ui"]


def _runtime():
    return current_app.extensions["tollhouse"]


def _admin_token() -> str | None:
    token = _runtime().config.admin_token
    return None if token is None or not token.value else token.value


def _set_session(response: Response, cookie: str) -> None:
    response.set_cookie(SESSION_COOKIE, cookie, path="/admin", secure=_secure(), httponly=True, samesite="Strict")


def _sets_session(response: Response) -> bool:
    return any(h.startswith(f"{SESSION_COOKIE}=") for h in response.headers.getlist("set-cookie"))


@blueprint.after_request
async def secure_headers(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _html(body: str, status: int = 200) -> Response:
    return Response(body, status, content_type="text/html; charset=utf-8")


def _see_other(path: str) -> Response:
    return redirect(path, 303)


def _secure() -> bool:
    return request.scheme in ("https", "wss")


def _same_origin() -> bool:
    """A browser's POST says where its page came from; it must be this host."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.host  # "null" (an opaque origin) is refused


def page(view):
    """A page behind a live session; a POST also behind the session's CSRF token."""

    @wraps(view)
    async def guarded(*args, **kwargs):
        ui = _ui()
        token = _admin_token()
        session = ui.sessions.find(request.cookies.get(SESSION_COOKIE), token, ui.clock())
        if session is None:
            if request.method == "GET":
                return _see_other(pages.url("login"))
            return _html(pages.message_page("Signed out", "Your session has ended; sign in again."), 401)
        if request.method == "POST":
            form = await request.form
            if not _same_origin() or not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
                return _html(pages.message_page("Refused", "This form is not from this session's page."), 403)
        response = await current_app.make_response(await view(session, *args, **kwargs))
        if not _sets_session(response):  # used now: the cookie says so, and its idle time starts again
            _set_session(response, ui.sessions.cookie(token, session))
        return response

    return guarded


# ------------------------------------------------------------------ signing in

def _login_form(message: str | None = None, status: int = 200) -> Response:
    ui = _ui()
    token = _admin_token()
    if token is None:
        return _html(pages.login_page("", disabled=True), 403)
    cookie, nonce = ui.nonces.issue(token, ui.clock())
    response = _html(pages.login_page(nonce, message=message), status)
    response.set_cookie(LOGIN_COOKIE, cookie, max_age=int(ui.nonces.rules.login_nonce_s), path=pages.url("login"),
                        secure=_secure(), httponly=True, samesite="Strict")
    return response


@blueprint.route("/login", methods=["GET"])
async def login_form():
    ui = _ui()
    if ui.sessions.find(request.cookies.get(SESSION_COOKIE), _admin_token(), ui.clock()) is not None:
        return _see_other(pages.url("actors"))
    return _login_form()


@blueprint.route("/login", methods=["POST"])
async def login():
    ui = _ui()
    token = _admin_token()
    if token is None:
        return _login_form()
    form = await request.form
    if not _same_origin() or not ui.nonces.redeem(token, request.cookies.get(LOGIN_COOKIE), form.get("login_csrf"),
                                                  ui.clock()):
        return _login_form("The sign-in form expired or is not this page's; sign in again.", 403)
    address = request.remote_addr or ""
    wait = ui.guard.wait_s(address, ui.clock())
    if wait > 0:
        response = _login_form(f"Too many wrong tokens from this address; try again in {wait:.0f} s.", 429)
        response.headers["retry-after"] = str(max(1, round(wait)))
        return response
    if not hmac.compare_digest(fingerprint(form.get("token", "")), fingerprint(token)):
        ui.guard.failed(address, ui.clock())
        return _login_form("Wrong admin token.", 401)
    ui.guard.succeeded(address)
    cookie, _ = ui.sessions.begin(token, ui.clock())  # a new id at each sign-in
    response = _see_other(pages.url("actors"))
    _set_session(response, cookie)
    response.delete_cookie(LOGIN_COOKIE, path=pages.url("login"))
    return response


@blueprint.route("/logout", methods=["POST"])
@page
async def logout(session: Session):
    ui = _ui()
    ui.sessions.end(session, ui.clock())
    response = _see_other(pages.url("login"))
    response.delete_cookie(SESSION_COOKIE, path="/admin", secure=_secure(), httponly=True, samesite="Strict")
    return response


@blueprint.route("/", methods=["GET"])
@blueprint.route("", methods=["GET"])
async def home():
    return _see_other(pages.url("actors"))


# ------------------------------------------------------------------ pages

def _page(title: str, active: str, session: Session, main, status: int = 200, note=None) -> Response:
    return _html(pages.layout(title, active, session.csrf, main, notice=note), status)


@blueprint.route("/actors", methods=["GET"])
@page
async def actors(session):
    return _page("Actors", "actors", session, pages.actors_page(await admin.actor_states(_runtime())))


@blueprint.route("/credentials", methods=["GET"])
@page
async def credentials(session):
    runtime = _runtime()
    return _page("Credentials", "credentials", session,
                 pages.credentials_page(await admin.credential_states(runtime), session.csrf))


@blueprint.route("/credentials/<provider>/<credential_id>/enable", methods=["POST"])
@page
async def enable_credential(session, provider, credential_id):
    runtime = _runtime()
    try:
        await admin.enable(runtime, provider, credential_id)
    except GatewayError as err:
        return _page("Credentials", "credentials", session,
                     pages.credentials_page(await admin.credential_states(runtime), session.csrf), err.status,
                     pages.notice(err.message, error=True))
    return _see_other(pages.url("credentials"))


@blueprint.route("/cooldowns", methods=["GET"])
@page
async def cooldowns(session):
    return _page("Cooldowns and recent failures", "cooldowns", session,
                 pages.cooldowns_page(await admin.cooldown_states(_runtime())))


@blueprint.route("/reservations", methods=["GET"])
@page
async def reservations(session):
    return _page("Reservations in flight", "reservations", session,
                 pages.reservations_page(await admin.reservation_list(_runtime())))


@blueprint.route("/keys", methods=["GET"])
@page
async def keys(session):
    return await _keys(session)


async def _keys(session, status: int = 200, note=None, created: dict | None = None) -> Response:
    main = pages.keys_page(await admin.key_list(_runtime()), session.csrf, created)
    return _page("Keys", "keys", session, main, status, note)


def _new_key_doc(form) -> dict:
    """The JSON API's body for the create form (the same rules read it)."""
    doc: dict = {"name": form.get("name", "").strip()}
    if form.get("credit_usd", "").strip():
        doc["credit_usd"] = form["credit_usd"].strip()
    if form.get("unlimited") == "true":
        doc["unlimited"] = True
    models = [m.strip() for m in form.get("models", "").split(",") if m.strip()]
    if models:
        doc["models"] = models
    return doc


@blueprint.route("/keys", methods=["POST"])
@page
async def create_key(session):
    try:
        created = await admin.create_key(_runtime(), _new_key_doc(await request.form))
    except GatewayError as err:
        return await _keys(session, err.status, pages.notice(err.message, error=True))
    return await _keys(session, 201, created=created)


async def _change_key(session, name: str, doc: dict) -> Response:
    try:
        await admin.update_key(_runtime(), name, doc)
    except GatewayError as err:
        return await _keys(session, err.status, pages.notice(err.message, error=True))
    return _see_other(pages.url("keys"))


@blueprint.route("/keys/<name>/credit", methods=["POST"])
@page
async def add_credit(session, name):
    return await _change_key(session, name, {"add_credit_usd": (await request.form).get("add_credit_usd", "").strip()})


@blueprint.route("/keys/<name>/disable", methods=["POST"])
@page
async def disable_key(session, name):
    return await _change_key(session, name, {"disabled": True})


@blueprint.route("/keys/<name>/enable", methods=["POST"])
@page
async def enable_key(session, name):
    return await _change_key(session, name, {"disabled": False})


@blueprint.route("/keys/<name>/revoke", methods=["POST"])
@page
async def revoke_key(session, name):
    """First the confirmation page; with ``confirm=yes`` (its own form), the revocation."""
    runtime = _runtime()
    if (await request.form).get("confirm") != "yes":
        known = {k["name"]: k for k in await admin.key_list(runtime)}
        if name not in known or known[name].get("revoked"):
            return await _keys(session, 404 if name not in known else 409,
                               pages.notice(f"No key {name!r} to revoke." if name not in known
                                            else f"The key {name!r} is already revoked.", error=True))
        return _page(f"Revoke key {name}", "keys", session, pages.revoke_page(known[name], session.csrf))
    try:
        await admin.revoke_key(runtime, name)
    except GatewayError as err:
        return await _keys(session, err.status, pages.notice(err.message, error=True))
    return _see_other(pages.url("keys"))


def _window() -> int:
    raw = request.args.get("since_s", "86400")
    return int(raw) if raw.isdigit() and int(raw) in WINDOWS else 86400


@blueprint.route("/usage", methods=["GET"])
@page
async def usage(session):
    runtime = _runtime()
    window = _window()
    metric = "tokens" if request.args.get("metric") == "tokens" else "cost"
    by = "key" if request.args.get("by") == "key" else "model"
    totals = await admin.usage_totals(runtime, window)
    series = await admin.usage_series(runtime, window, WINDOWS[window])
    return _page("Usage over time", "usage", session, pages.usage_page(totals, series, metric, by))


@blueprint.route("/usage/series.json", methods=["GET"])
@page
async def usage_series(session):
    window = _window()
    series = await admin.usage_series(_runtime(), window, WINDOWS[window])
    return Response(json.dumps(series), 200, content_type="application/json")


@blueprint.route("/requests", methods=["GET"])
@page
async def requests(session):
    return _page("Recent requests", "requests", session,
                 pages.requests_page(await admin.recent_requests(_runtime(), 100)))


@blueprint.route("/requests/<request_id>", methods=["GET"])
@page
async def request_entries(session, request_id):
    entries = await admin.usage_records(_runtime(), request_id)
    return _page(f"Request {request_id}", "requests", session, pages.request_page(request_id, entries))
