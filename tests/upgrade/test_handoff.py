"""Sender (old worker) and adopt_all (new worker) over a real socketpair, with real sockets."""

from __future__ import annotations

import socket

import trio

from proxy.upgrade.fdpass import Channel, socketpair
from proxy.upgrade.handoff import Sender, adopt_all
from proxy.upgrade.protocol import Msg


def _conn_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    return a, b


async def test_connections_are_adopted_and_started_after_adopted_is_sent():
    o_end, n_end = socketpair()
    sender = Sender(Channel(o_end))
    order: list[str] = []

    class Recording(Channel):
        async def send(self, mtype, body=None, fds=()):
            await super().send(mtype, body, fds)
            order.append(mtype.name)

    n_chan = Recording(n_end)
    started: list[tuple[str, socket.socket, dict]] = []
    absorbed: list[dict] = []
    clients = []

    def adopt(kind, listener, socks, state):
        if listener == "gone":
            return None
        return lambda: (order.append("start"), started.append((kind, socks[0], state)))

    async def on_state():
        pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.run)
        result: dict = {}

        async def new_side():
            result.update(await adopt_all(n_chan, adopt, absorbed.append, on_state))

        nursery.start_soon(new_side)
        await sender.channel.send(Msg.STATE, {"kind": "stats", "schema": 1, "blob": {"listeners": {}}})
        answers = []
        for i in range(5):
            mine, peer = _conn_pair()
            clients.append(peer)

            async def hand(i=i, mine=mine):
                ok = await sender.hand_over("http1", "gone" if i == 4 else "web", [mine], {"served": i, "leftover": ""})
                answers.append((i, ok))

            nursery.start_soon(hand)
        with trio.fail_after(5):
            while len(answers) < 5:
                await trio.sleep(0.01)
        await sender.channel.send(Msg.DRAINED, {"migrated": sender.migrated})
        with trio.fail_after(5):
            while not result:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert sorted(answers) == [(0, True), (1, True), (2, True), (3, True), (4, False)]
    # invariant 2: a handler may read an adopted socket only after ADOPTED went out
    assert "start" in order and order.index("ADOPTED") < order.index("start"), order
    assert sender.migrated == {"http1": 4} and sender.rejected == 1
    assert absorbed == [{"listeners": {}}]
    assert result["migrated"] == {"http1": 4} and result["rejected"] == 1
    # the adopted sockets are live copies of the same connections
    by_served = {state["served"]: sock for _, sock, state in started}
    for i in range(4):
        clients[i].sendall(b"ping%d" % i)
        assert by_served[i].recv(10) == b"ping%d" % i


async def test_new_worker_gone_answers_false_and_stops_migrating():
    o_end, n_end = socketpair()
    sender = Sender(Channel(o_end))
    mine, peer = _conn_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.run)
        n_end.close()  # the new worker died
        with trio.fail_after(5):
            ok = await sender.hand_over("http1", "web", [mine], {"served": 0, "leftover": ""})
    assert ok is False and sender.active is False
    assert await sender.hand_over("http1", "web", [mine], {}) is False  # no more attempts
    # the old worker's socket is untouched and still usable
    peer.sendall(b"x")
    assert mine.recv(1) == b"x"
