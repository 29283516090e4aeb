"""A lease always goes back to its pool, even when the cooldown gives no verdict on the
attempt's error: a credential whose lease leaked would count a request in flight for
ever (locally, and renewed in the shared backend's Redis)."""

from __future__ import annotations

import pytest
import trio

from actors.credentials import Credential, Leased, Release
from actors.mailbox import Mailbox
from actors.routing import Target
from gateway.config import StreamingConfig
from gateway.dispatch import Actors, Dispatcher
from protocols.errors import UpstreamRateLimited
from protocols.secret import Secret


async def test_a_lease_goes_back_when_the_cooldown_never_answers(autojump_clock):
    credentials = Mailbox("credentials", 8)
    cooldown = Mailbox("cooldown", 8, ask_timeout=0.5)  # no actor serves it: its ask runs out
    actors = Actors(Mailbox("routing", 8), credentials, cooldown, Mailbox("usage", 8))
    dispatcher = Dispatcher(actors, {}, StreamingConfig(), 4096)
    lease = Leased(7, Credential("p", "c1", Secret("sk-upstream")))
    with trio.fail_after(5), pytest.raises(trio.TooSlowError):
        await dispatcher._release(Target("p", "m"), lease, UpstreamRateLimited("slow down"), None, False)
    told = credentials.receive_channel.receive_nowait().msg
    assert told == Release(7)
