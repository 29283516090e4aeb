"""Upstream requests through an HTTP CONNECT proxy: explicit, from the environment,
bypassed by NO_PROXY; and the rules that pick the proxy, on their own."""

from __future__ import annotations

import base64
import contextlib

import pytest
import trio

from protocols.errors import UpstreamServerError
from providers import base
from providers.http11 import Pool, RequestNotSent
from providers.proxy import bypassed, choose_proxy, parse_proxy
from tests.raw_upstream import ConnectProxy, RawUpstream


@contextlib.asynccontextmanager
async def _upstream_and_proxy():
    upstream, proxy = RawUpstream(), ConnectProxy()
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve)
        await nursery.start(proxy.serve)
        try:
            yield upstream, proxy
        finally:
            nursery.cancel_scope.cancel()


async def _get(pool: Pool) -> bytes:
    response = await pool.request("POST", "/v1/x", [], b"{}")
    try:
        return await response.read()
    finally:
        await response.aclose()


async def test_an_explicit_proxy_carries_the_request_with_its_credentials():
    with trio.fail_after(10):
        async with _upstream_and_proxy() as (upstream, proxy):
            pool = Pool(upstream.url, proxy=f"http://ann:s%40cret@127.0.0.1:{proxy.port}",
                        env={"HTTP_PROXY": "http://127.0.0.1:1", "NO_PROXY": "*"})
            assert await _get(pool) == b"ok"
            assert await _get(pool) == b"ok"
            expected = "Basic " + base64.b64encode(b"ann:s@cret").decode()
            assert proxy.tunnels == [(f"127.0.0.1:{upstream.port}", expected)], "one tunnel, kept alive"
            assert upstream.requests == [2]
            await pool.aclose()


@pytest.mark.parametrize("name", ["HTTP_PROXY", "http_proxy"])
async def test_the_environment_proxy_carries_the_request(name):
    with trio.fail_after(10):
        async with _upstream_and_proxy() as (upstream, proxy):
            pool = Pool(upstream.url, env={name: f"http://127.0.0.1:{proxy.port}"})
            assert await _get(pool) == b"ok"
            assert proxy.tunnels == [(f"127.0.0.1:{upstream.port}", None)]
            assert upstream.requests == [1]
            await pool.aclose()


async def test_no_proxy_bypasses_the_environment_proxy():
    with trio.fail_after(10):
        async with _upstream_and_proxy() as (upstream, proxy):
            pool = Pool(upstream.url, env={"HTTP_PROXY": f"http://127.0.0.1:{proxy.port}",
                                           "NO_PROXY": "example.com, 127.0.0.1"})
            assert await _get(pool) == b"ok"
            assert proxy.tunnels == []
            assert upstream.requests == [1]
            await pool.aclose()


async def test_a_refused_tunnel_is_not_sent_and_names_no_secret():
    with trio.fail_after(10):
        async with _upstream_and_proxy() as (upstream, proxy):
            proxy.refuse = 407
            pool = Pool(upstream.url, proxy=f"http://ann:hunter2@127.0.0.1:{proxy.port}")
            with pytest.raises(UpstreamServerError) as caught:
                await base.send(pool, "/v1/x", {}, b"{}", stream=False)
            assert caught.value.request_sent is False
            assert "407" in caught.value.message and "hunter2" not in caught.value.message
            assert upstream.requests == []
            await pool.aclose()


async def test_an_unreachable_proxy_is_not_sent():
    with trio.fail_after(10):
        async with _upstream_and_proxy() as (upstream, proxy):
            pool = Pool(upstream.url, proxy="http://127.0.0.1:1", connect_timeout=2)
            with pytest.raises(RequestNotSent, match="through proxy 127.0.0.1:1"):
                await pool.request("POST", "/v1/x", [], b"{}")
            assert upstream.requests == []


def test_the_proxy_for_each_scheme_comes_from_its_own_variable():
    env = {"HTTPS_PROXY": "http://secure:3128", "http_proxy": "plain:8080", "HTTP_PROXY": "http://upper:1"}
    assert choose_proxy("https", "api.openai.com", 443, None, env).address == "secure:3128"
    assert choose_proxy("http", "10.1.2.3", 80, None, env).address == "plain:8080", "lowercase first"
    assert choose_proxy("https", "api.openai.com", 443, None, {"HTTP_PROXY": "http://p:1"}) is None
    assert choose_proxy("https", "h", 443, "http://mine:9", env).address == "mine:9", "explicit wins"
    assert choose_proxy("https", "h", 443, "http://mine:9", {"NO_PROXY": "*"}) is not None


@pytest.mark.parametrize(("no_proxy", "host", "port", "expected"), [
    ("*", "api.openai.com", 443, True),
    ("openai.com", "api.openai.com", 443, True),
    (".openai.com", "api.openai.com", 443, True),
    ("*.openai.com", "api.openai.com", 443, True),
    ("openai.com", "openai.com", 443, True),
    ("openai.com", "notopenai.com", 443, False),
    ("api.openai.com:443", "api.openai.com", 443, True),
    ("api.openai.com:8443", "api.openai.com", 443, False),
    ("localhost, 127.0.0.1", "127.0.0.1", 8000, True),
    ("10.0.0.0/8", "10.2.3.4", 80, True),
    ("10.0.0.0/8", "11.2.3.4", 80, False),
    ("[::1]:8080", "::1", 8080, True),
    ("::1", "[::1]", 80, True),
    ("", "api.openai.com", 443, False),
])
def test_no_proxy_entries(no_proxy, host, port, expected):
    assert bypassed(host, port, no_proxy) is expected


def test_a_bad_proxy_url_is_a_clear_error_without_its_password():
    with pytest.raises(ValueError, match="HTTPS_PROXY: only http:// proxies") as caught:
        parse_proxy("https://ann:hunter2@proxy:443", "HTTPS_PROXY")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ValueError, match="port"):
        parse_proxy("http://ann:hunter2@proxy:99999", "proxy")
    assert "hunter2" not in repr(parse_proxy("http://ann:hunter2@proxy:3128", "proxy"))


def test_provider_transport_settings_are_read_and_checked(tmp_path):
    from gateway.config import ConfigError, parse_config
    from tests.conftest import base_config

    doc = base_config(tmp_path)
    doc["providers"]["up"] = {"family": "openai_compat", "base_url": "https://api.example.com/v1",
                              "credentials": [{"key": "k"}], "keepalive_s": 5, "max_connections": 8,
                              "proxy": "http://ann:hunter2@proxy:3128"}
    up = parse_config(doc, env={}).providers["up"]
    assert (up.keepalive_s, up.max_connections, up.proxy) == (5, 8, "http://ann:hunter2@proxy:3128")
    assert "hunter2" not in repr(up)
    doc["providers"]["up"].update(keepalive_s=0, max_connections=2.5, proxy="socks5://proxy:1080")
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, env={})
    problems = "\n".join(caught.value.problems)
    for path in ("providers.up.keepalive_s", "providers.up.max_connections", "providers.up.proxy"):
        assert path in problems
