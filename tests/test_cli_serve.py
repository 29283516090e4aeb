"""``tollhouse serve``, ``version`` and their help, as an operator runs them."""

from __future__ import annotations

import socket

import httpx
import trio

from tests.conftest import base_config
from tests.gateway_process import serve_process, write_config
from tests.test_config_cli import tollhouse, write


def test_a_port_in_use_is_one_clear_line_and_exit_status_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = tollhouse("serve", "--config", write(tmp_path, base_config(tmp_path)), "--port", str(port))
    assert done.returncode == 2, done
    assert done.stderr == f"tollhouse: cannot listen on 127.0.0.1:{port}: address already in use\n"
    assert "listening" not in done.stdout
    assert not (tmp_path / "state").exists()  # refused before anything started


def test_serve_describes_each_flag():
    done = tollhouse("serve", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for flag, words in (("--config FILE", "the config file"), ("--host ADDRESS", "overriding server.host"),
                        ("--port PORT", "0 picks a free one")):
        assert flag in text and words in text, (flag, text)


def test_version_names_the_installed_distribution():
    from importlib.metadata import version

    for args in (("version",), ("--version",)):
        done = tollhouse(*args)
        assert (done.returncode, done.stdout) == (0, f"tollhouse {version('tollhouse')}\n"), done


async def test_the_printed_address_answers_at_once(tmp_path):
    """The address line comes after the bind and the start: the first probe succeeds,
    no retry needed."""
    with trio.fail_after(60):
        async with serve_process(write_config(tmp_path, base_config(tmp_path))) as gw:
            url = await gw.url()
            async with httpx.AsyncClient(base_url=url) as client:
                r = await client.get("/readyz")
            assert (r.status_code, r.json()) == (200, {"status": "ready"})
