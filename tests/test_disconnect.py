"""The server's disconnect hook: each callback once, late ones at once, none after unwatch."""

from __future__ import annotations

from gateway.disconnect import Disconnect


def test_callbacks_run_once_in_order_and_a_late_one_runs_at_once():
    hook, heard = Disconnect(), []
    hook.watch(lambda: heard.append("a"))
    gone = lambda: heard.append("unwatched")  # noqa: E731
    hook.watch(gone)
    hook.watch(lambda: heard.append("b"))
    hook.unwatch(gone)
    hook.fire()
    hook.fire()
    assert heard == ["a", "b"]
    hook.watch(lambda: heard.append("late"))
    assert heard == ["a", "b", "late"]
