"""Shared test harness: a real gateway and its embedded simulator on loopback ports."""

from __future__ import annotations

import copy
import math
import logging
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import hypercorn.trio
import pytest
import trio

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.process import server_config

pytest_plugins = ["tests.pg_server", "tests.redis_server"]  # the shared-backend tests' private Postgres and Redis

FIXTURES = Path(__file__).parent / "fixtures"
DEMO_KEY = "th-test-key"
ADMIN_TOKEN = "th-test-admin"

for _noisy in ("httpx", "httpcore", "hypercorn.access"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


def base_config(tmp_path: Path, **overrides: Any) -> dict:
    """A config with one embedded simulator provider per protocol the simulator speaks."""
    doc = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 0.5},
        "admin": {"token": ADMIN_TOKEN},
        "state_dir": str(tmp_path / "state"),
        "providers": {
            "sim": {"family": "simulator", "embedded": True, "protocol": "openai_chat"},
        },
        "models": {
            "demo": {"targets": ["sim/sim-chat"]},
            "*": {"targets": ["sim/sim-chat"]},
        },
        "pricing": {"sim/sim-chat": {"input": "1.00", "output": "2.00"}, "sim/*": {"input": "1.00", "output": "2.00"}},
        "keys": [{"name": "test", "key": DEMO_KEY, "credit_usd": "100.00"}],
        "streaming": {"ttfb_timeout_s": 5, "stall_timeout_s": 5},
    }
    for key, value in overrides.items():
        doc[key] = value
    return doc


@attrs.define
class Running:
    url: str
    gateway: Gateway

    @property
    def runtime(self):
        return self.gateway.runtime

    @property
    def simulator(self):
        return self.gateway.runtime.simulator

    @property
    def usage_actor(self):
        return self.gateway.runtime.supervisor.actor("usage")

    def ledger_entries(self) -> list[dict]:
        return self.usage_actor.ledger.entries()


@asynccontextmanager
async def running_gateway(config_doc: dict):
    """Start the gateway (and its embedded simulator) on ephemeral loopback ports."""
    config = parse_config(copy.deepcopy(config_doc), env={})
    gateway = Gateway(config)
    cfg = server_config(config.server, "127.0.0.1:0", config.websocket)  # the settings `tollhouse serve` uses
    shutdown = trio.Event()
    # In virtual time the clock jumps whenever every task waits -- also while the ledger
    # opens in a worker thread, which on a busy host can take long enough to fire the
    # server's startup deadline. Time stands still until the gateway is up.
    clock = trio.lowlevel.current_clock()
    threshold = getattr(clock, "autojump_threshold", None)
    if threshold is not None:
        clock.autojump_threshold = math.inf
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(hypercorn.trio.serve, gateway, cfg, shutdown_trigger=shutdown.wait))
        await gateway.runtime.ready.wait()
        if threshold is not None:
            clock.autojump_threshold = threshold
        try:
            yield Running(binds[0], gateway)
        finally:
            shutdown.set()


def pytest_addoption(parser):
    parser.addoption("--browser", action="store_true",
                     help="also run tests/browser (headless Chromium and chromedriver; see the README)")


@pytest.fixture
def config_doc(tmp_path):
    return base_config(tmp_path)
