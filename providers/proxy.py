"""Which HTTP proxy reaches an origin, and the CONNECT tunnel through it.

A provider's own ``proxy`` setting wins; otherwise the environment decides, read once
per pool: ``https_proxy``/``HTTPS_PROXY`` for https origins, ``http_proxy``/``HTTP_PROXY``
for http ones (the lowercase name first, as curl and requests read them), unless
``no_proxy``/``NO_PROXY`` names the origin. A ``NO_PROXY`` entry is ``*`` (no proxy at
all), a host or domain suffix (``example.com`` and ``.example.com`` both cover
``api.example.com``), either with ``:port`` to cover one port only, or an IP network
(``10.0.0.0/8``). ``NO_PROXY`` does not override an explicit per-provider proxy.

The proxy is always asked for a tunnel (``CONNECT host:port``), for http origins too,
so that every request travels the same way and the proxy sees no request but the
tunnel's; TLS to an https origin runs inside it. Only ``http://`` proxies are
supported (no TLS to the proxy itself). Credentials in the proxy URL's userinfo go out
as ``Proxy-Authorization: Basic``; they never appear in an error message or a repr.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Mapping
from urllib.parse import unquote, urlsplit

import attrs
import h11
import trio

MAX_ANSWER = 16 * 1024


class ProxyError(Exception):
    """The proxy could not be reached or refused the tunnel (nothing reached the origin)."""


@attrs.frozen
class Proxy:
    host: str
    port: int
    authorization: bytes | None = attrs.field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_proxy(url: str, source: str) -> Proxy:
    """A proxy URL (``http://[user:pass@]host[:port]``; a bare ``host:port`` is taken as
    http). ``source`` names the setting, for the error; the URL is never echoed, since
    it may hold a password."""
    raw = url.strip()
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    if parts.scheme.lower() != "http":
        raise ValueError(f"{source}: only http:// proxies are supported, not {parts.scheme}://")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"{source}: the proxy's port is not a number in 1-65535") from None
    if not parts.hostname:
        raise ValueError(f"{source}: the proxy URL has no host")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = b"Basic " + base64.b64encode(pair)
    return Proxy(parts.hostname, port, authorization)


def choose_proxy(scheme: str, host: str, port: int, explicit: str | None,
                 env: Mapping[str, str]) -> Proxy | None:
    """The proxy for ``scheme://host:port``, or None to connect directly."""
    if explicit is not None:
        return parse_proxy(explicit, "proxy")
    names = ("https_proxy", "HTTPS_PROXY") if scheme == "https" else ("http_proxy", "HTTP_PROXY")
    name = next((n for n in names if env.get(n)), None)
    if name is None:
        return None
    if bypassed(host, port, env.get("no_proxy") or env.get("NO_PROXY") or ""):
        return None
    return parse_proxy(env[name], name)


def bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether a ``NO_PROXY`` value covers ``host:port``."""
    host = host.lower().strip("[]").rstrip(".")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if "/" in name:
            if _in_network(host, name):
                return True
            continue
        name = name.lstrip("*").lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return name, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        if port.isdigit():
            return name, int(port)
    return entry, None


def _in_network(host: str, network: str) -> bool:
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


async def open_tunnel(stream: trio.abc.Stream, proxy: Proxy, host: str, port: int) -> None:
    """Ask the proxy on ``stream`` for a tunnel to ``host:port``; on return the stream
    carries bytes to and from the origin. Raises ``ProxyError`` if the proxy refuses."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_ANSWER)
    headers = [("host", target)]
    if proxy.authorization is not None:
        headers.append(("proxy-authorization", proxy.authorization))  # type: ignore[arg-type]  # h11 takes str and bytes alike
    await stream.send_all(conn.send(h11.Request(method="CONNECT", target=target, headers=headers))
                          + conn.send(h11.EndOfMessage()))
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise ProxyError(f"proxy {proxy.address} broke HTTP/1.1 answering CONNECT: {exc}") from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(MAX_ANSWER)
            if not data:
                raise ProxyError(f"proxy {proxy.address} closed the connection instead of answering CONNECT")
            conn.receive_data(data)  # type: ignore[arg-type]  # h11 takes a bytearray too
        elif type(event) is h11.Response:
            if not 200 <= event.status_code < 300:
                raise ProxyError(f"proxy {proxy.address} refused CONNECT {target}: {event.status_code}")
            leftover, _closed = conn.trailing_data
            if leftover:
                raise ProxyError(f"proxy {proxy.address} sent bytes before the origin spoke")
            return
