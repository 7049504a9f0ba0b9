"""The ClientHello parser on real ClientHellos (OpenSSL's, through the stdlib and pyOpenSSL),
re-fragmented and cut short, and on bytes that are not TLS; the inspector on real sockets."""

from __future__ import annotations

import socket
import ssl

import pytest
import trio

from proxy.network import client_hello, tls_inspector
from proxy.network.client_hello import BadClientHello, NotTls


def real_client_hello(server_name: str | None = "api.example.com", alpn: list[str] | None = None, tls13: bool = True) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if not tls13:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def refragment(hello: bytes, size: int) -> bytes:
    """The same handshake message in records of `size` payload bytes each."""
    payload = hello[5:]
    out = b""
    for i in range(0, len(payload), size):
        part = payload[i : i + size]
        out += b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part
    return out


def test_sni_and_alpn_of_a_tls13_client_hello() -> None:
    hello = client_hello.parse(real_client_hello("API.Example.com", ["h2", "http/1.1"]))
    assert hello is not None
    assert hello.server_name == "api.example.com"
    assert hello.alpn == ("h2", "http/1.1")
    assert 0x0304 in hello.versions


def test_a_tls12_only_client_hello_and_no_sni() -> None:
    hello = client_hello.parse(real_client_hello(None, tls13=False))
    assert hello is not None
    assert hello.server_name is None
    assert hello.alpn == ()
    assert 0x0304 not in hello.versions


def test_bytes_after_the_client_hello_are_not_counted_in_its_size() -> None:
    raw = real_client_hello()
    hello = client_hello.parse(raw + b"\x17\x03\x03\x00\x05hello")
    assert hello is not None and hello.size == len(raw)


@pytest.mark.parametrize("size", [1, 7, 100])
def test_a_client_hello_split_over_many_records(size: int) -> None:
    raw = refragment(real_client_hello("split.example.com", ["h2"]), size)
    hello = client_hello.parse(raw)
    assert hello is not None
    assert (hello.server_name, hello.alpn, hello.size) == ("split.example.com", ("h2",), len(raw))


def test_every_prefix_asks_for_more() -> None:
    raw = refragment(real_client_hello(), 300)
    for cut in range(len(raw)):
        assert client_hello.parse(raw[:cut]) is None, cut
    assert client_hello.parse(raw) is not None


@pytest.mark.parametrize("first", [b"GET / HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n", b"\x00\x01", b"\x16\x01\x00"])
def test_plaintext_and_garbage_are_not_tls(first: bytes) -> None:
    with pytest.raises(NotTls):
        client_hello.parse(first)


def test_a_handshake_record_that_is_not_a_client_hello() -> None:
    server_hello = b"\x16\x03\x03\x00\x06\x02\x00\x00\x02\x03\x03"
    with pytest.raises(BadClientHello):
        client_hello.parse(server_hello)


def test_lengths_that_run_past_the_message() -> None:
    raw = bytearray(real_client_hello())
    raw[5 + 4 + 34] = 0xFF  # the session id's length: past the end of the message
    with pytest.raises(BadClientHello):
        client_hello.parse(bytes(raw))


def test_a_zero_length_record_is_refused() -> None:
    with pytest.raises(BadClientHello):
        client_hello.parse(b"\x16\x03\x01\x00\x00")


def test_a_huge_declared_client_hello_is_refused_before_it_is_read() -> None:
    with pytest.raises(BadClientHello):
        client_hello.parse(b"\x16\x03\x01\x00\x04\x01\xff\xff\xff")


def test_pyopenssl_client_hello_with_sni() -> None:
    from OpenSSL import SSL

    conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    conn.set_connect_state()
    conn.set_tlsext_host_name(b"pyopenssl.example.com")
    conn.set_alpn_protos([b"http/1.1"])
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()
    hello = client_hello.parse(conn.bio_read(65536))
    assert hello is not None and hello.server_name == "pyopenssl.example.com" and hello.alpn == ("http/1.1",)


# ---------------------------------------------------------------- the inspector on sockets


async def inspect_sent(parts: list[bytes], timeout: float = 2.0, close: bool = False) -> tls_inspector.Inspection:
    a, b = socket.socketpair()
    a.setblocking(False)
    try:

        async def send() -> None:
            for part in parts:
                b.send(part)
                await trio.sleep(0.01)
            if close:
                b.shutdown(socket.SHUT_WR)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            return await tls_inspector.inspect(a, timeout)
    finally:
        a.close()
        b.close()


def test_inspector_reads_a_client_hello_sent_in_pieces() -> None:
    raw = real_client_hello("pieces.example.com")
    result = trio.run(inspect_sent, [raw[:3], raw[3:50], raw[50:]])
    assert result.outcome == tls_inspector.TLS
    assert result.hello is not None and result.hello.server_name == "pieces.example.com"
    assert result.data == raw


def test_inspector_tells_plaintext_from_the_first_byte() -> None:
    result = trio.run(inspect_sent, [b"G"])
    assert (result.outcome, result.data) == (tls_inspector.PLAINTEXT, b"G")


def test_inspector_times_out_on_a_silent_or_stalled_client() -> None:
    raw = real_client_hello()
    result = trio.run(inspect_sent, [raw[:20]], 0.3)
    assert (result.outcome, result.data) == (tls_inspector.TIMEOUT, raw[:20])


def test_inspector_reports_a_close_midway() -> None:
    raw = real_client_hello()
    result = trio.run(inspect_sent, [raw[:20]], 2.0, True)
    assert (result.outcome, result.data) == (tls_inspector.CLOSED, raw[:20])


def test_inspector_reports_garbage_in_a_handshake_record() -> None:
    result = trio.run(inspect_sent, [b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00"])
    assert result.outcome == tls_inspector.BAD


def _big_client_hello(body_length: int) -> bytes:
    """A ClientHello of `body_length` bytes (a padding extension fills it), in 16 KiB records."""
    padding = body_length - 47
    body = (
        b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
        + (padding + 4).to_bytes(2, "big") + b"\x00\x15" + padding.to_bytes(2, "big") + b"\x00" * padding
    )
    assert len(body) == body_length
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"".join(
        b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part for part in (message[i : i + 16384] for i in range(0, len(message), 16384))
    )


def test_inspector_reads_a_client_hello_of_the_largest_size_over_several_records() -> None:
    raw = _big_client_hello(client_hello.MAX_CLIENT_HELLO - 6)  # its records take more than the message
    assert len(raw) > client_hello.MAX_CLIENT_HELLO + 5
    result = trio.run(inspect_sent, [raw])
    assert result.outcome == tls_inspector.TLS, (result.outcome, result.error)
    assert result.data == raw


def test_inspector_refuses_a_client_hello_in_tiny_records_past_its_read_limit() -> None:
    records = _big_client_hello(60000)
    message = b"".join(records[i + 5 : i + 16389] for i in range(0, len(records), 16389))
    tiny = b"".join(b"\x16\x03\x01\x00\x0a" + message[i : i + 10] for i in range(0, len(message), 10))  # 1.5x on the wire
    result = trio.run(inspect_sent, [tiny[i : i + 30000] for i in range(0, len(tiny), 30000)])
    assert (result.outcome, result.error) == (tls_inspector.BAD, "ClientHello too long")
