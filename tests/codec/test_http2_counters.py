"""The HTTP/2 codec's counters (`count_into`): RST_STREAMs by error code each way, GOAWAYs
each way and flow-control stalls, counted into stats objects as the proxy's connections do."""

from __future__ import annotations

from proxy.codec.http2 import CANCEL, ENHANCE_YOUR_CALM, NO_ERROR, PROTOCOL_ERROR, REFUSED_STREAM, Http2Settings, ServerConnection
from proxy.stats import HTTP2_COUNTERS, ClusterStats, ListenerStats
from tests.codec.test_http2_client import Pair, get, ok


def counted(client: Http2Settings | None = None, server: Http2Settings | None = None) -> tuple[Pair, ClusterStats, ListenerStats]:
    pair = Pair(client, server)
    up, down = ClusterStats(), ListenerStats()
    pair.client.count_into(up)
    pair.server.count_into(down)
    return pair, up, down


def nonzero(stats: object) -> dict[str, int]:
    return {name: getattr(stats, name) for name in HTTP2_COUNTERS if getattr(stats, name)}


def test_resets_are_counted_by_code_both_ways() -> None:
    pair, up, down = counted()
    a = pair.client.send_request(get(), b"http", True)
    b = pair.client.send_request(get(), b"http", True)
    pair.take()
    pair.server.reset(a, REFUSED_STREAM)
    pair.client.reset(b, CANCEL)
    pair.take()
    assert nonzero(up) == {"http2_rx_reset_refused_stream": 1, "http2_tx_reset_cancel": 1}
    assert nonzero(down) == {"http2_tx_reset_refused_stream": 1, "http2_rx_reset_cancel": 1}


def test_resets_the_codec_sends_itself_are_counted() -> None:
    # A stream over the server's max_concurrent_streams is refused by the codec (not by reset()).
    pair, up, down = counted(server=Http2Settings(max_concurrent_streams=1))
    pair.client.send_request(get(), b"http", False)
    pair.take()
    remote = pair.client._h2.remote_settings  # the client ignores the limit
    remote.max_concurrent_streams = 5
    remote.acknowledge()
    pair.client.send_request(get(), b"http", True)
    pair.take()
    assert down.http2_tx_reset_refused_stream == 1 and up.http2_rx_reset_refused_stream == 1


def test_an_unknown_code_counts_as_unknown() -> None:
    pair, up, down = counted()
    sid = pair.client.send_request(get(), b"http", True)
    pair.take()
    pair.server.reset(sid, 0x1234)
    pair.take()
    assert up.http2_rx_reset_unknown == 1 and down.http2_tx_reset_unknown == 1


def test_goaways_are_counted_both_ways() -> None:
    pair, up, down = counted()
    pair.server.goaway(NO_ERROR)
    pair.take()
    assert (down.http2_tx_goaway, up.http2_rx_goaway) == (1, 1)
    assert (down.http2_rx_goaway, up.http2_tx_goaway) == (0, 0)


def test_a_goaway_h2_sends_for_a_protocol_error_is_counted() -> None:
    server = ServerConnection()
    stats = ListenerStats()
    server.count_into(stats)
    server.initiate()
    try:
        server.receive(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x00\x00\x05\x02\x00\x00\x00\x00\x00abcde", 0.0)
    except Exception:
        pass
    assert stats.http2_tx_goaway == 1


def test_stalls_are_counted_once_per_stall_by_window() -> None:
    # The client's stream window is 65,535 (the server's default advertised here), the
    # connection's too: a bigger upload stalls once, on the connection window (the smaller).
    pair, up, down = counted(server=Http2Settings(initial_stream_window_size=65535, initial_connection_window_size=65535))
    sid = pair.client.send_request(get(method=b"POST"), b"http", False)
    assert pair.client.send_data(sid, b"x" * 70000, True) == 65535
    assert pair.client.send_data(sid, b"x" * 4465, True) == 0  # still stalled: not counted again
    assert up.http2_tx_stall_connection_window == 1 and up.http2_tx_stall_stream_window == 0
    # A second stream with the connection window open but its own window smaller.
    pair2, up2, _ = counted(server=Http2Settings(initial_stream_window_size=65535, initial_connection_window_size=1 << 20))
    sid = pair2.client.send_request(get(method=b"POST"), b"http", False)
    pair2.take()
    assert pair2.client.send_data(sid, b"x" * 70000, True) == 65535
    assert up2.http2_tx_stall_stream_window == 1 and up2.http2_tx_stall_connection_window == 0


def test_without_a_sink_nothing_is_counted_and_nothing_breaks() -> None:
    pair = Pair()
    sid = pair.client.send_request(get(), b"http", True)
    pair.take()
    pair.server.send_response(sid, ok(), True)
    pair.server.reset(sid, PROTOCOL_ERROR)
    pair.server.goaway(ENHANCE_YOUR_CALM)
    pair.take()
