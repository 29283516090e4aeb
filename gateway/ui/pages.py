"""The admin page's views: data in (what ``gateway.routes.admin`` returns), HTML out.

Pure functions, no I/O: each returns the ``<main>`` of one page, which the layout
wraps with the navigation and the sign-out form. Every form that changes something
is a POST carrying the session's CSRF token.
"""

from __future__ import annotations

import time
from typing import Iterable
from urllib.parse import quote

from gateway.ui.html import Child, Markup, document, render, table, tag

PREFIX = "/admin/ui"

NAV = (
    ("actors", "Actors"),
    ("credentials", "Credentials"),
    ("cooldowns", "Cooldowns"),
    ("reservations", "Reservations"),
    ("keys", "Keys"),
    ("usage", "Usage"),
    ("requests", "Requests"),
)


def url(*parts: str) -> str:
    return "/".join([PREFIX, *(quote(part, safe="") for part in parts)])


def csrf_field(csrf: str) -> Markup:
    return tag("input", type="hidden", name="csrf", value=csrf)


def post_form(action: str, csrf: str, label: str, *fields: Child, class_: str = "inline") -> Markup:
    return tag("form", csrf_field(csrf), *fields, tag("button", label, type="submit"),
               method="post", action=action, class_=class_)


def layout(title: str, active: str, csrf: str, main: Child, *, notice: Child = None) -> str:
    links = [tag("a", label, href=url(name), class_="active" if name == active else None,
                 aria_current="page" if name == active else None) for name, label in NAV]
    header = tag("header", tag("strong", "Tollhouse"), tag("nav", links),
                 tag("label", tag("input", type="checkbox", id="auto-refresh"), " auto-refresh", class_="refresh"),
                 post_form(url("logout"), csrf, "Sign out", class_="signout"))
    return document(f"{title} - Tollhouse admin", header,
                    tag("main", tag("h1", title), notice, main, id="content", data_page=active))


def notice(text: str, *, error: bool = False) -> Markup:
    return tag("p", text, class_="notice error" if error else "notice", role="alert" if error else "status")


def login_page(nonce: str, *, message: str | None = None, disabled: bool = False) -> str:
    if disabled:
        body = tag("p", "The admin page is disabled: no admin token is configured (admin.token).",
                   class_="notice error")
    else:
        body = tag("form",
                   tag("input", type="hidden", name="login_csrf", value=nonce),
                   tag("label", "Admin token", tag("input", type="password", name="token", autocomplete="off",
                                                   required=True, autofocus=True)),
                   tag("button", "Sign in", type="submit"),
                   method="post", action=url("login"), class_="login")
    return document("Sign in - Tollhouse admin",
                    tag("main", tag("h1", "Tollhouse admin"),
                        notice(message, error=True) if message else None, body, id="content", data_page="login"))


def message_page(title: str, text: str) -> str:
    return document(f"{title} - Tollhouse admin",
                    tag("main", tag("h1", title), tag("p", text), tag("p", tag("a", "Back to sign in",
                                                                              href=url("login"))), id="content"))


# ----------------------------------------------------------------- pages

def actors_page(actors: dict) -> Markup:
    rows = [(name, a["mailbox_depth"], a["mailbox_capacity"], a["handled"], a["restarts"], a["last_crash"] or "",
             _summary(a["state"])) for name, a in sorted(actors.items())]
    return table(["actor", "mailbox depth", "capacity", "handled", "restarts", "last crash", "state"], rows,
                 id="actors")


def _summary(state: dict) -> Markup:
    return tag("span", ", ".join(f"{k} {v}" for k, v in sorted(state.items()) if not isinstance(v, (dict, list))),
               class_="summary")


def credentials_page(pools: dict, csrf: str) -> Markup:
    rows = []
    for provider, creds in sorted(pools.items()):
        for c in creds:
            window = f"{c['requests_last_minute']} req"
            if c.get("requests_per_minute"):
                window += f" / {c['requests_per_minute']}"
            window += f", {c['tokens_last_minute']} tok"
            if c.get("tokens_per_minute"):
                window += f" / {c['tokens_per_minute']}"
            cooling = _seconds(c.get("cooling_for_s"))
            models = ", ".join(f"{m} {_seconds(s)}" for m, s in sorted(c.get("model_cooldowns", {}).items()))
            action = (post_form(url("credentials", provider, c["id"], "enable"), csrf, "Enable")
                      if c["state"] == "dead" else "")
            rows.append((provider, c["id"], tag("span", c["state"], class_=f"state {c['state']}"),
                         c.get("dead_reason") or "", c["tier"], f"{c['in_flight']} / {c['max_concurrency']}",
                         window, cooling or models, action))
    return table(["provider", "credential", "state", "why dead", "tier", "in flight", "last minute",
                  "cooldown left", ""], rows, id="credentials")


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


def cooldowns_page(view: dict) -> Markup:
    active = [(f"{c['provider']}/{c['model'] or '*'}", c.get("credential") or "", c["scope"], c["reason"],
               _seconds(c["remaining_s"]), _seconds(c.get("asked_s")), _seconds(c.get("applied_s")))
              for c in view["active"]]
    history = [(target, h.get("credential") or "", h["kind"], h.get("status") or "", f"{h['at']:.1f}")
               for target, items in sorted(view["history"].items()) for h in reversed(items)]
    return Markup(tag("h2", "Active") + table(
        ["target", "credential", "scope", "reason", "left", "asked", "applied"], active, empty="no cooldown",
        id="cooldowns") + tag("h2", "Recent failures") + table(
        ["target", "credential", "kind", "status", "at (monotonic s)"], history, empty="no failure",
        id="failures"))


def reservations_page(holds: list[dict]) -> Markup:
    shared = any("instance" in h for h in holds)  # the shared backend: every instance's, by instance
    rows = [(h["request_id"], h["key"], h["model"] or "", h["hold_usd"], h["status"], _seconds(h["age_s"]),
             *((h.get("instance", ""),) if shared else ())) for h in holds]
    return table(["request", "key", "model", "held (USD)", "status", "age", *(("instance",) if shared else ())],
                 rows, empty="no request in flight", id="reservations")


def keys_page(keys: list[dict], csrf: str, created: dict | None = None) -> Markup:
    rows = []
    for k in keys:
        credit = "unlimited" if k.get("credit_usd") is None else k["credit_usd"]
        name = k["name"]
        toggle = post_form(url("keys", name, "enable" if k["disabled"] else "disable"), csrf,
                           "Enable" if k["disabled"] else "Disable")
        add = post_form(url("keys", name, "credit"), csrf, "Add",
                        tag("input", type="text", name="add_credit_usd", inputmode="decimal", placeholder="USD",
                            size="8", required=True, aria_label=f"credit to add to {name}"))
        status = ("revoked" if k.get("revoked") else "expired" if k.get("expired")
                  else "disabled" if k["disabled"] else "active")
        final = status == "revoked"  # a revoked key takes no change
        revoke = post_form(url("keys", name, "revoke"), csrf, "Revoke", class_="inline danger")
        rows.append((name, status, credit, k["spent_usd"], k["held_usd"],
                     k.get("available_usd") or "", k["in_flight"], ", ".join(k["models"] or ()) or "any",
                     add if k.get("credit_usd") is not None and not final else "", "" if final else toggle,
                     "" if final else revoke))
    shown = None
    if created is not None:
        shown = tag("div", tag("p", "Key ", tag("strong", created["name"]), " created. Its secret is shown once:"),
                    tag("code", created["key"], id="created-secret"), class_="notice")
    form = tag("form", csrf_field(csrf),
               tag("label", "Name", tag("input", type="text", name="name", required=True, pattern=r"[A-Za-z0-9_.\-]+")),
               tag("label", "Credit (USD)", tag("input", type="text", name="credit_usd", inputmode="decimal")),
               tag("label", tag("input", type="checkbox", name="unlimited", value="true"), " unlimited"),
               tag("label", "Models (comma separated, empty: any)", tag("input", type="text", name="models")),
               tag("button", "Create key", type="submit"),
               method="post", action=url("keys"), class_="create", id="create-key")
    return render((shown, table(["key", "status", "credit (USD)", "spent", "held", "available",
                                    "in flight", "models", "add credit", "", ""], rows, id="keys"),
                   tag("h2", "New key"), form))


def revoke_page(key: dict, csrf: str) -> Markup:
    """The confirmation a revocation asks for (a page, so it needs no script)."""
    name = key["name"]
    return render((tag("p", "Revoke the key ", tag("strong", name), "? Every request with it is refused (401) "
                        "from now on, on every front door. This cannot be undone: its name and secret are never "
                        "used again. Its ledger history stays."),
                   post_form(url("keys", name, "revoke"), csrf, f"Revoke {name}",
                             tag("input", type="hidden", name="confirm", value="yes"), class_="confirm danger"),
                   tag("p", tag("a", "Cancel: keep the key", href=url("keys")))))


def usage_page(totals: dict, series: dict, metric: str, by: str) -> Markup:
    window, bucket = series["window_s"], series["bucket_s"]
    choose = tag("form",
                 _select("metric", metric, (("cost", "cost (USD)"), ("tokens", "tokens"))),
                 _select("by", by, (("model", "by model"), ("key", "by key"))),
                 _select("since_s", str(int(window)), (("3600", "last hour"), ("86400", "last day"),
                                                       ("604800", "last week"))),
                 tag("button", "Show", type="submit"), method="get", action=url("usage"), class_="inline")
    chart = tag("canvas", "A chart of the table below.", id="usage-chart", width="900", height="320",
                data_src=url("usage", "series.json") + f"?since_s={int(window)}&bucket_s={bucket}",
                data_metric=metric, data_by=by)
    dim = "key_name" if by == "key" else "model"
    rows = [(name, row["requests"], row["cost_usd"], row["input"] + row["cached_input"] + row["cache_write"],
             row["output"] + row["reasoning"]) for name, row in sorted(totals["by"][dim].items())]
    return Markup(choose + chart + tag("h2", f"Totals {by_label(by)}, {_window(window)}") + table(
        [by, "requests", "cost (USD)", "input tokens", "output tokens"], rows, empty="nothing charged yet",
        id="usage-totals"))


def by_label(by: str) -> str:
    return "by key" if by == "key" else "by model"


def _window(seconds: float) -> str:
    return {3600: "last hour", 86400: "last day", 604800: "last week"}.get(int(seconds), f"last {seconds:g} s")


def _select(name: str, chosen: str, options: Iterable[tuple[str, str]]) -> Markup:
    return tag("select", [tag("option", label, value=value, selected=value == chosen) for value, label in options],
               name=name, aria_label=name)


def requests_page(rows: list[dict]) -> Markup:
    body = [(tag("a", r["request_id"], href=url("requests", r["request_id"])), _clock(r["created_at"]),
             r["key_name"], r["client_model"] or "", f"{r['provider'] or ''}/{r['model'] or ''}", r["credential"] or "",
             r["reason"] or "", r["provenance"] or "", r["input"] + r["cached_input"] + r["cache_write"],
             r["output"] + r["reasoning"], r["cost_usd"]) for r in rows]
    return table(["request", "at (UTC)", "key", "model asked", "target", "credential", "end", "provenance",
                  "input", "output", "cost (USD)"], body, empty="no request settled yet", id="requests")


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


ENTRY_FIELDS = ("kind", "key_name", "provider", "model", "client_model", "credential", "amount_micro", "hold_micro",
                "input", "cached_input", "cache_write", "output", "reasoning", "provenance", "reason", "cost_source",
                "basis")


def request_page(request_id: str, entries: list[dict]) -> Markup:
    if not entries:
        return tag("p", f"No ledger entry for {request_id}.", class_="empty")
    rows = [(field, *(_cell(e.get(field)) for e in entries)) for field in ENTRY_FIELDS]
    rows.append(("at (UTC)", *(_clock(e["created_at"]) for e in entries)))
    rows.append(("unanswered attempts", *(", ".join(map(str, e["unanswered"])) for e in entries)))
    return Markup(tag("p", tag("a", "All requests", href=url("requests"))) + table(
        ["ledger entry", *(f"#{n + 1}" for n in range(len(entries)))], rows, id="entries"))


def _cell(value: object) -> str:
    return "" if value is None else str(value)
