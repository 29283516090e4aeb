"""A shared credential lease goes back even when the release's local half cannot be
delivered in time (a full inbox, the settle deadline): otherwise this process would
renew it in Redis for as long as it runs, a slot lost on every instance."""

from __future__ import annotations

import trio

from actors.credentials import Credential, Leased, Release
from actors.redis_leases import SharedLeases
from gateway.leasing import Leases
from protocols.secret import Secret
from tests.test_redis_leases import Spec
from tests.test_redis_windows import links

DEADLINE_S = 60


class FullInbox:
    """The credentials actor's mailbox while its inbox is full: a tell waits."""

    async def tell(self, msg) -> None:
        await trio.sleep_forever()


async def test_a_release_cut_short_still_gives_the_shared_lease_back(redis_url):
    with trio.fail_after(DEADLINE_S):
        async with links(redis_url, 1) as [link]:
            shared = SharedLeases(link, 30)
            lease_id = await shared.confirm("p", Spec(), 10)
            assert isinstance(lease_id, str) and lease_id in shared.open
            leases = Leases(FullInbox(), shared)  # type: ignore[arg-type]
            leased = Leased(1, Credential("p", "c1", Secret("k1")), Spec(), shared=lease_id)
            with trio.move_on_after(0):  # the release's deadline has passed before the inbox has room
                await leases.release(leased, Release(1))
            assert lease_id not in shared.open  # not renewed: queued for release
