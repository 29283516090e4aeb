"""A key's ``requests_window_s``: the window its ``requests_per_minute`` counts in (60 s
unless set), kept with the key in the ledger, set from config or the admin API."""

from __future__ import annotations

import attrs
import pytest

from actors.ledger import Ledger
from actors.usage import UpdateKey
from actors.usage_core import UsageCore
from gateway.config import ConfigError, parse_config
from protocols import errors as E
from tests.conftest import base_config
from tests.test_usage_core import PRICE, KeySpec, reserve
from protocols.secret import Secret


def _core(**spec) -> UsageCore:
    c = UsageCore({"p/m": PRICE}, wall=lambda: 1000.0)
    c.seed_keys([WindowSpec("k", Secret("secret"), **spec)])
    return c


@attrs.frozen
class WindowSpec(KeySpec):
    requests_window_s: float = 60.0


def test_a_short_window_refuses_the_request_past_the_limit_until_it_has_room():
    c = _core(requests_per_minute=2, requests_window_s=2.0)
    reserve(c, "a", now=0.0)
    reserve(c, "b", now=0.5)
    with pytest.raises(E.KeyRateLimited) as caught:
        reserve(c, "c", now=1.0)
    assert caught.value.retry_after == 1.0
    assert "2 requests per 2 s" in caught.value.message
    reserve(c, "c", now=2.0)  # the first one left the window


def test_the_window_is_kept_in_the_ledger_and_changed_by_an_update(tmp_path):
    ledger = Ledger(tmp_path)
    c = _core(requests_per_minute=5, requests_window_s=2.5)
    ledger.apply([("put_key", c.keys["k"].row())])
    keys, holds = ledger.load()
    restarted = UsageCore({"p/m": PRICE})
    restarted.load(keys, holds)
    assert restarted.keys["k"].requests_window_s == 2.5
    view, ops = restarted.update_key(UpdateKey("k", requests_window_s=10))
    assert view["requests_window_s"] == 10
    ledger.apply(ops)
    assert ledger.load()[0][0]["requests_window_s"] == 10
    ledger.close()


def test_the_default_window_is_a_minute():
    assert _core(requests_per_minute=1).keys["k"].requests_window_s == 60.0


@pytest.mark.parametrize("value", [0, -1, 86_401, "2"])
def test_a_window_that_is_not_a_positive_number_of_seconds_is_refused_with_its_path(tmp_path, value):
    doc = base_config(tmp_path)
    doc["keys"][0]["requests_window_s"] = value
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, env={})
    assert any("keys[0].requests_window_s" in p for p in caught.value.problems), caught.value.problems


def test_an_admin_update_refuses_a_bad_window():
    c = _core()
    with pytest.raises(E.InvalidRequest):
        c.update_key(UpdateKey("k", requests_window_s=0))
