"""A small HTML builder that escapes everything it is not told is markup.

Pages are built from ``tag(...)`` calls: text and attribute values are escaped on the
way in, so a key name or a model name from a client can never become markup; only
what this builder made (``Markup``) passes through unchanged. No templates, no inline
script or style: the page's Content-Security-Policy forbids both.
"""

from __future__ import annotations

import html
from typing import Iterable, Union


class Markup(str):
    """Text that is already HTML (made by this module)."""


Child = Union["Markup", str, int, float, None, Iterable["Child"]]

VOID = frozenset({"input", "meta", "link", "br", "hr", "img"})


def esc(value: object) -> Markup:
    return value if isinstance(value, Markup) else Markup(html.escape(str(value), quote=True))


def render(children: Child) -> Markup:
    if children is None or children is False:
        return Markup("")
    if isinstance(children, (str, int, float)):
        return esc(children)
    return Markup("".join(render(child) for child in children))


def tag(element: str, /, *children: Child, **attrs: object) -> Markup:
    """``<name attrs>children</name>``; an attribute named ``class_`` is ``class``,
    ``data_x`` is ``data-x``; ``True`` is a bare attribute, ``None``/``False`` none."""
    parts = [element]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        key = key.rstrip("_").replace("_", "-")
        parts.append(key if value is True else f'{key}="{esc(value)}"')
    opening = f"<{' '.join(parts)}>"
    if element in VOID:
        return Markup(opening)
    return Markup(f"{opening}{render(children)}</{element}>")


def table(headers: list[str], rows: Iterable[Iterable[Child]], *, empty: str = "none", **attrs: object) -> Markup:
    """A table with a header row; ``empty`` is said when there is no row."""
    body = [tag("tr", *(tag("td", cell) for cell in row)) for row in rows]
    if not body:
        return tag("p", empty, class_="empty")
    return tag("table", tag("thead", tag("tr", *(tag("th", h) for h in headers))), tag("tbody", body), **attrs)


def document(title: str, *body: Child) -> str:
    return "<!doctype html>" + tag(
        "html",
        tag("head", tag("meta", charset="utf-8"), tag("meta", name="viewport", content="width=device-width"),
            tag("title", title), tag("link", rel="stylesheet", href="/admin/ui/static/ui.css"),
            tag("link", rel="icon", href="/admin/ui/static/favicon.svg", type="image/svg+xml"),
            tag("script", src="/admin/ui/static/ui.js", defer=True)),
        tag("body", *body), lang="en")
