"""Hypercorn's per-request timers as the gateway runs them (``gateway.http1.QuickSingleTask``):
a restart replaces the timer, a stop cancels it even before its task first ran. That an
idle keep-alive connection is still closed at its timeout, through this timer, is
``test_connection_hygiene``'s."""

from __future__ import annotations

import hypercorn.trio.tcp_server
import trio
from hypercorn.trio.worker_context import WorkerContext

from gateway.config import ServerConfig
from gateway.http1 import QuickSingleTask
from gateway.process import server_config


class _Group:
    """What hypercorn's task group offers the timer: its nursery."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery


async def test_a_restart_replaces_the_timer_and_a_stop_cancels_it_before_it_ran(autojump_clock):
    fired: list[str] = []

    def after(delay: float, name: str):
        async def action() -> None:
            await trio.sleep(delay)
            fired.append(name)
        return action

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            group = _Group(nursery)
            timer = QuickSingleTask()
            await timer.restart(group, after(1, "first"))
            await timer.restart(group, after(2, "second"))  # the first never fires
            await trio.sleep(3)
            assert fired == ["second"]
            await timer.restart(group, after(1, "third"))
            await timer.stop()  # before its task has run at all
            await trio.sleep(2)
    assert fired == ["second"]


def test_the_server_config_puts_the_quick_timer_where_hypercorn_looks_it_up():
    server_config(ServerConfig())
    assert hypercorn.trio.tcp_server.TrioSingleTask is QuickSingleTask  # TCPServer's keep-alive timer
    assert WorkerContext.single_task_class is QuickSingleTask  # the protocols' timers


def test_answers_carry_hypercorn_s_own_date_and_server_headers():
    import time

    import hypercorn.config

    from gateway.process import HypercornConfig

    config = HypercornConfig()
    for _ in range(3):  # the same second for both, or once more
        second = int(time.time())
        ours, theirs = config.response_headers("h11"), hypercorn.config.Config.response_headers(config, "h11")
        if int(time.time()) == second:
            break
    assert ours == theirs
    assert [name for name, _ in ours] == [b"date", b"server"]
