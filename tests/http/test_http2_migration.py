"""Hot upgrade of live HTTP/2 connections between two HttpConnectionManagers (the old and the
"new worker", each with its own nursery): an idle connection moves at once, a busy one holds
its new streams back and moves when its last stream ends, and one the new worker refuses or
that stays busy is drained with the two-step GOAWAY, its held requests served here. Real
loopback sockets, the h2 library as the client, the h11 test upstream."""

from __future__ import annotations

import json
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import trio

from proxy.config.loader import load_text
from proxy.http import http2_migration
from proxy.network.listener import accept_loop, bind
from proxy.upgrade.migration import b64d
from tests.http.test_migration import manager
from tests.integration.http_upstream import HttpUpstream, http_config
from tests.network.test_migration import Handoff, open_nursery, wait_for


class Client:
    """An HTTP/2 client connection; a reader task files each stream's events."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.status: dict[int, int] = {}
        self.body: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.goaways: list[int] = []
        self.closed = False
        self.sending = trio.Lock()

    async def run(self) -> None:
        pending = b""
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                self.closed = True
                return
            # GOAWAYs are noted and not fed: h2's client closes on the first, and would refuse
            # the responses of a graceful drain.
            pending += data
            data = b""
            while len(pending) >= 9 and len(pending) >= 9 + int.from_bytes(pending[:3], "big"):
                end = 9 + int.from_bytes(pending[:3], "big")
                if pending[3] == 7:
                    self.goaways.append(int.from_bytes(pending[9:13], "big") & 0x7FFFFFFF)
                else:
                    data += pending[:end]
                pending = pending[end:]
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    self.status[event.stream_id] = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    self.body[event.stream_id] = self.body.get(event.stream_id, b"") + event.data
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended.add(event.stream_id)
            await self.flush()

    async def flush(self) -> None:
        async with self.sending:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def get(self, path: str) -> int:
        sid = self.conn.get_next_available_stream_id()
        fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", path.encode()), (b":authority", b"example.com")]
        self.conn.send_headers(sid, fields, end_stream=True)
        await self.flush()
        return sid

    def target(self, sid: int) -> str:
        return json.loads(self.body[sid])["target"]  # type: ignore[no-any-return]


class Workers:
    def __init__(self, old: Any, new: Any, address: tuple[str, int], new_nursery: trio.Nursery) -> None:
        self.old = old
        self.new = new
        self.address = address
        self.new_nursery = new_nursery

    def handoff(self, accept: bool = True) -> Handoff:
        async def adopt(sock: Any, state: dict[str, Any]) -> None:
            serve = self.new.adopt_http2(sock, state)
            await serve()

        return Handoff(self.new_nursery, {"http2": adopt}, accept)

    def old_connection(self) -> Any:
        (conn,) = self.old.mux.connections
        return conn


@pytest.fixture
async def workers(nursery) -> Workers:
    up = HttpUpstream("a")
    await up.start(nursery)
    raw = http_config([up.address])
    raw["listeners"][0]["protocol"] = "http2"
    config = load_text(json.dumps(raw), fmt="json")
    old_nursery = await nursery.start(open_nursery)
    new_nursery = await nursery.start(open_nursery)
    old, new = manager(config, old_nursery), manager(config, new_nursery)
    nursery.start_soon(old.run_watchdog)
    nursery.start_soon(new.run_watchdog)
    lc = config.listeners[0]
    sock = bind(lc.address, 128)
    nursery.start_soon(accept_loop, lc.name, sock, old.handle, old_nursery, old.stats)
    made = Workers(old, new, sock.getsockname(), new_nursery)
    yield made
    old.pools.close_all()
    new.pools.close_all()


async def client(nursery: trio.Nursery, workers: Workers) -> Client:
    c = Client(await trio.open_tcp_stream(*workers.address))
    c.conn.initiate_connection()
    await c.flush()
    nursery.start_soon(c.run)
    return c


async def busy_migration(nursery, workers, slow_path: str, accept: bool = True):
    """A client with a slow stream in flight when the migration starts, and a second stream
    (/echo?held) sent after it started: (client, slow id, handoff, held id)."""
    c = await client(nursery, workers)
    slow = await c.get(slow_path)
    await wait_for(lambda: len(workers.old.mux.connections) == 1 and workers.old_connection().streams)
    handoff = workers.handoff(accept=accept)
    workers.old.start_migration(handoff)
    held = await c.get("/echo?held")
    return c, slow, handoff, held


async def test_an_idle_connection_moves_at_once_without_a_goaway(nursery, workers):
    c = await client(nursery, workers)
    first = await c.get("/echo?before")
    await wait_for(lambda: first in c.ended)
    handoff = workers.handoff()
    workers.old.start_migration(handoff)
    await wait_for(lambda: workers.new.stats.downstream_cx_migrated_in == 1)
    assert [(kind, state["leftover"]) for kind, _, state in handoff.offered] == [("http2", "")]
    after = await c.get("/echo?after")
    await wait_for(lambda: after in c.ended)
    assert c.status[after] == 200 and c.target(after) == "/echo?after"
    assert workers.new.stats.downstream_rq_total == 1 and workers.old.stats.downstream_rq_total == 1
    assert workers.old.stats.downstream_cx_migrated_out == 1 and workers.old.stats.downstream_cx_active == 0
    assert c.goaways == [] and not c.closed


async def test_a_busy_connection_moves_once_its_last_stream_ends(nursery, workers):
    """Stream 1 is in flight at the migration; stream 3, sent meanwhile, is held back (not
    processed), travels as leftover and is answered by the new worker."""
    c, slow, handoff, held = await busy_migration(nursery, workers, "/slow/600")
    await trio.sleep(0.3)
    assert handoff.offered == [] and workers.old_connection().handover == http2_migration.WANTED
    await wait_for(lambda: slow in c.ended)
    assert c.body[slow] == b"slow"
    await wait_for(lambda: held in c.ended)
    assert c.status[held] == 200 and c.target(held) == "/echo?held"
    ((kind, _, state),) = handoff.offered
    assert kind == "http2" and b64d(state["leftover"])  # stream 3's HEADERS went along
    assert workers.old.stats.downstream_rq_total == 1  # the slow one
    assert workers.new.stats.downstream_rq_total == 1  # the held one
    assert workers.old.stats.downstream_cx_migrated_out == 1 and workers.new.stats.downstream_cx_migrated_in == 1
    assert c.goaways == [] and not c.closed


async def test_a_refused_connection_is_drained_and_its_held_stream_served_here(nursery, workers):
    c, slow, handoff, held = await busy_migration(nursery, workers, "/slow/300", accept=False)
    await wait_for(lambda: slow in c.ended and held in c.ended)
    assert c.status[held] == 200 and c.target(held) == "/echo?held"
    assert len(handoff.offered) == 1
    await wait_for(lambda: len(c.goaways) == 2 or c.closed)  # the two-step GOAWAY: the worker can exit
    await wait_for(lambda: workers.old.stats.downstream_cx_active == 0)
    assert workers.old.stats.downstream_rq_total == 2 and workers.new.stats.downstream_cx_migrated_in == 0


async def test_a_connection_busy_past_idle_wait_is_drained(nursery, workers, monkeypatch):
    monkeypatch.setattr(http2_migration, "IDLE_WAIT", 0.3)
    c, slow, handoff, held = await busy_migration(nursery, workers, "/slow/1500")
    await wait_for(lambda: held in c.ended)  # served here once the hold was given up, before stream 1 ends
    assert slow not in c.ended and c.target(held) == "/echo?held"
    await wait_for(lambda: slow in c.ended)
    assert c.body[slow] == b"slow" and handoff.offered == []
    assert c.goaways and c.goaways[0] == 2**31 - 1
