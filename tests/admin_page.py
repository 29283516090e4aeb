"""A small client of the admin web page over real HTTP: signs in through the form and
reads what a page shows (its forms' hidden fields, a table's cells)."""

from __future__ import annotations

from html.parser import HTMLParser

import httpx

from tests.conftest import ADMIN_TOKEN


class PageParser(HTMLParser):
    """The hidden inputs of a page and the text of each table's cells, by table id."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.scripts: list[dict] = []
        self.inline_script = False
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "input" and a.get("type") == "hidden":
            self.hidden[a["name"]] = a.get("value", "")
        elif tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "script":
            self.scripts.append(a)
            self.inline_script = self.inline_script or "src" not in a
        if any(name.startswith("on") for name in a) or "style" in a:
            self.inline_script = True  # an inline handler or style: the CSP would block it

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    return parser


def rows(text: str, table_id: str) -> list[list[str]]:
    """A table's body rows (the header row left out)."""
    return parse(text).tables[table_id][1:]


async def sign_in(client: httpx.AsyncClient, token: str = ADMIN_TOKEN) -> httpx.Response:
    form = await client.get("/admin/ui/login")
    assert form.status_code == 200, form.text
    return await client.post("/admin/ui/login", data={"token": token,
                                                      "login_csrf": parse(form.text).hidden["login_csrf"]})


async def csrf(client: httpx.AsyncClient, path: str = "/admin/ui/keys") -> str:
    page = await client.get(path)
    assert page.status_code == 200, page.text
    return parse(page.text).hidden["csrf"]
