"""What the gateway is serving right now, so a stop can say what it waited for.

A graceful stop reports how many requests were in flight when it began, how many of
them finished within the grace period, and how many the end of the grace period cut
(each of those still settles through the dispatcher's own terminal path). Counting
happens where every request enters the application, so nothing needs to cooperate.
"""

from __future__ import annotations


import attrs
import trio


@attrs.frozen
class StopReport:
    in_flight_at_stop: int
    finished: int  # of those, how many ended on their own during the grace period
    cut: int  # how many the end of the grace period cancelled


@attrs.define
class Traffic:
    in_flight: int = 0
    stopping: bool = False
    in_flight_at_stop: int = 0
    finished_while_stopping: int = 0
    cut_while_stopping: int = 0
    stop_begun: trio.Event = attrs.field(factory=trio.Event)  # long-lived connections watch it

    def request(self) -> "_Counted":
        """Count one request for as long as its handler runs (a ``with`` block)."""
        return _Counted(self)

    def begin_stop(self) -> int:
        """Mark the start of a stop; returns how many requests are in flight now."""
        if not self.stopping:
            self.stopping = True
            self.in_flight_at_stop = self.in_flight
            self.stop_begun.set()
        return self.in_flight_at_stop

    def report(self) -> StopReport:
        return StopReport(self.in_flight_at_stop, self.finished_while_stopping, self.cut_while_stopping)


def is_cancellation(exc: BaseException) -> bool:
    """A trio cancel, bare or as the group a cancelled nursery raises."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


class _Counted:
    """One request counted in ``Traffic`` while its block runs; a stop sees whether it
    finished or was cut (cancelled)."""

    __slots__ = ("traffic",)

    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic

    def __enter__(self) -> None:
        self.traffic.in_flight += 1

    def __exit__(self, kind: type | None, exc: BaseException | None, _tb: object) -> None:
        traffic = self.traffic
        traffic.in_flight -= 1
        if traffic.stopping:
            if exc is not None and is_cancellation(exc):
                traffic.cut_while_stopping += 1
            else:
                traffic.finished_while_stopping += 1
