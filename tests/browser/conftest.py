"""The browser group runs only when asked: ``pytest --browser`` or ``TOLLHOUSE_BROWSER=1``."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if config.getoption("--browser") or os.environ.get("TOLLHOUSE_BROWSER") == "1":
        return
    skip = pytest.mark.skip(reason="browser tests are opt-in: pytest --browser (or TOLLHOUSE_BROWSER=1)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)
