"""The pieces of the metrics that need no server: label bounds and the commit histogram."""

from __future__ import annotations

from actors.durations import Durations
from gateway.config import parse_config
from gateway.metrics.labels import Labels
from tests.conftest import base_config


def test_labels_keep_what_the_config_names_and_fold_the_rest(tmp_path):
    doc = base_config(tmp_path)
    doc["aliases"] = {"short": "demo"}
    labels = Labels.of(parse_config(doc, env={}))
    assert [labels.model(m) for m in ("demo", "short", "gpt-4o-2099", "*", None)] == [
        "demo", "short", "other", "other", "none"]
    assert [labels.target(t) for t in ("sim/sim-chat", "sim/anything-a-client-typed", "elsewhere/x", None)] == [
        "sim/sim-chat", "sim/other", "other", "none"]
    assert [labels.provider(p) for p in ("sim", "nope", None)] == ["sim", "other", "none"]


def test_durations_count_into_cumulative_buckets():
    durations = Durations((0.01, 0.1))
    for seconds in (0.005, 0.01, 0.05, 3.0):
        durations.observe(seconds)
    assert durations.cumulative() == [(0.01, 2), (0.1, 3), (float("inf"), 4)]
    assert durations.count == 4 and abs(durations.total_s - 3.065) < 1e-9
