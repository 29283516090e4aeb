"""A response head cut short by a cancel (a slow socket, a client gone) is followed by
no body: the server still expects a head, and a body then would be its protocol error
(hypercorn: "http.response.body given the state REQUEST") instead of a lost exchange."""

from __future__ import annotations

import trio

from gateway.asgi_link import AsgiLink


async def test_no_body_follows_a_head_the_server_did_not_take(autojump_clock):
    sent: list[dict] = []
    socket_free = trio.Event()  # never set: the head's write waits like a full socket

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            await socket_free.wait()
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    link = AsgiLink(receive, send)
    with trio.fail_after(5):
        with trio.move_on_after(1):
            await link.start(200, [])
        assert link.started and not link.head_sent  # the client may have part of it
        await link.write(b"data: more\n\n")
        await link.end(b"event: error\n\n")
    assert sent == [] and link.ended


async def test_a_head_taken_whole_is_followed_by_its_body():
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    link = AsgiLink(receive, send)
    with trio.fail_after(5):
        await link.start(200, [])
        await link.write(b"a")
        await link.end(b"b")
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body", "http.response.body"]
    assert [m.get("body") for m in sent[1:]] == [b"a", b"b"]
