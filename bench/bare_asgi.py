"""The floor under Tollhouse: hypercorn serving a bare ASGI app that forwards each
request to the mock through the gateway's own upstream pool, and nothing else.

Same server as ``tollhouse serve`` (hypercorn's trio worker, the gateway's HTTP/1.1
protocol and its ``server_config``), same upstream client (``providers.http11.Pool``),
same event loop; no routing, no auth, no metering, no parsing, no logs. What the bench
measures for this arm is what hypercorn, trio and the pool cost by themselves, so the
rest of Tollhouse's added latency is what the gateway's own code adds on top.

Run: ``python -m bench.bare_asgi --port 8001 --upstream http://127.0.0.1:9000``.
"""

from __future__ import annotations

import argparse
import sys

import hypercorn.trio
import trio

from gateway.config import ServerConfig
from gateway.process import server_config
from providers.http11 import Pool

FORWARDED = (b"content-type", b"accept")  # the client's headers the mock reads; its key is the bench's own


class BareForwarder:
    """An ASGI app: the request's body to the upstream, its answer back as it comes."""

    def __init__(self, upstream: str, key: str) -> None:
        self.upstream = upstream
        self.key = key
        self.pool: Pool | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "http":
            await self.forward(scope, receive, send)

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.pool = Pool(self.upstream, max_connections=4096)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.pool is not None:
                    await self.pool.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def forward(self, scope, receive, send) -> None:
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k in FORWARDED]
        headers.append(("authorization", f"Bearer {self.key}"))
        assert self.pool is not None
        response = await self.pool.request("POST", self.upstream + scope["path"], headers, b"".join(parts))
        try:
            head = [(k.encode(), v.encode()) for k, v in response.headers.items()
                    if k in ("content-type", "content-length")]
            await send({"type": "http.response.start", "status": response.status, "headers": head})
            while (chunk := await response.receive()) is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bare_asgi", description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="the mock's base URL, e.g. http://127.0.0.1:9000")
    ap.add_argument("--key", default="sk-mock")
    args = ap.parse_args(argv)
    cfg = server_config(ServerConfig(host="127.0.0.1", port=args.port))
    trio.run(hypercorn.trio.serve, BareForwarder(args.upstream.rstrip("/"), args.key), cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
