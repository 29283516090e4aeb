"""Prometheus metrics of one gateway: ``GET /metrics`` in the text exposition format.

``Metrics`` owns a ``CollectorRegistry`` of its own (never prometheus-client's global
one, so two gateways in one process -- the tests -- never share a series) holding
the served-request counters (``served.ServedMetrics``, an observer of every request)
and the scrape-time gauges (``state.StateCollector``). ``scrape()`` asks the actors
for their state, then renders the registry.

Who may scrape (``metrics.require_token``, default true): the admin token as a Bearer
token, on the main port and on a separate ``metrics.port`` alike; with
``require_token: false`` anyone who reaches the port may read it. Without an admin
token configured, a scrape that needs one is refused (403), as the admin API is.
"""

from __future__ import annotations

import hmac

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.metrics.labels import Labels
from gateway.metrics.served import ServedMetrics
from gateway.metrics.state import StateCollector, gather
from protocols.errors import Forbidden, GatewayError, Unauthenticated

__all__ = ["CONTENT_TYPE", "Metrics", "refusal"]

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, config) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.served = ServedMetrics(self.registry, Labels.of(config))
        self.state = StateCollector()
        self.registry.register(self.state)
        self._scraping = trio.Lock()  # one scrape's state at a time in the collector

    def configure(self, config) -> None:
        """Follow a new config (a reload): its models and targets become the label values
        kept; series already counted stay as they are."""
        self.config = config
        self.served.labels = Labels.of(config)

    async def scrape(self, runtime) -> bytes:
        async with self._scraping:
            self.state.state = await gather(runtime)
            try:
                return generate_latest(self.registry)
            finally:
                self.state.state = None


def refusal(config, authorization: str | None) -> GatewayError | None:
    """Why a scrape with this ``Authorization`` header is refused, or None."""
    if not config.metrics.require_token:
        return None
    token = config.admin_token
    if token is None or not token.value:
        return Forbidden("Metrics need the admin token and none is configured: set admin.token, "
                         "or metrics.require_token false.")
    auth = authorization or ""
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(given.encode(), token.value.encode()):
        return Unauthenticated("A valid admin token is required (Authorization: Bearer).")
    return None
