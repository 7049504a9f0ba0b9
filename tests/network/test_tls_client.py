"""The client side of network/tls.py without sockets: a ClientTls session and a listener's
ServerTls session handshake over their memory BIOs, bytes pumped between them here."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from proxy.config.model import ClusterTls, ListenerTls, TlsCertificate
from proxy.config.values import Address
from proxy.network.tls import ClientTls, ServerTls
from proxy.network.tls_io import TlsError
from proxy.stats import ClusterStats
from proxy.upstream.host import Host


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    d: Path = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert = ca.issue_cert("api.internal.test", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    cert.private_key_pem.write_to_path(str(d / "server.key"))
    return {"ca": str(d / "ca.pem"), "cert": str(d / "server.pem"), "key": str(d / "server.key")}


def server(pki: dict[str, str], alpn: list[str] | None = None) -> ServerTls:
    return ServerTls(ListenerTls(certificates=[TlsCertificate(cert=pki["cert"], key=pki["key"])], alpn=alpn), "http")


def handshake(client_session, server_session) -> None:
    """Pump until both sides are done; raises TlsError for the side that fails."""
    client_done = server_done = False
    for _ in range(10):
        client_done = client_session.handshake() or client_done
        server_session.receive(client_session.outgoing())
        server_done = server_session.handshake() or server_done
        client_session.receive(server_session.outgoing())
        if client_done and server_done:
            client_session.handshake()
            return
    raise AssertionError("the handshake did not finish")


def host(address: str) -> Host:
    return Host(Address.parse(address))


def test_name_ip_and_sni_defaults(pki) -> None:
    stats = ClusterStats()
    tls = ClientTls(ClusterTls(ca=pki["ca"]), "c", stats)
    assert tls.name_for(host("api.internal.test:443")) == "api.internal.test"
    assert tls.name_for(host("127.0.0.1:443")) is None  # an IP: verified as an IP, no SNI
    named = ClientTls(ClusterTls(ca=pki["ca"], server_name="x.test"), "c", stats)
    assert named.name_for(host("127.0.0.1:443")) == "x.test"
    assert tls.offered("http1") == ("http/1.1",) and tls.offered("http2") == ("h2",) and tls.offered(None) == ()
    assert ClientTls(ClusterTls(ca=pki["ca"], alpn=["h2", "http/1.1"]), "c", stats).offered("http1") == ("h2", "http/1.1")


@pytest.mark.parametrize("address", ["api.internal.test:443", "127.0.0.1:443"])
def test_a_verified_handshake_then_the_session_is_resumed(pki, address) -> None:
    stats = ClusterStats()
    tls = ClientTls(ClusterTls(ca=pki["ca"]), "c", stats)
    srv = server(pki)
    for round in range(3):
        client = tls.session(host(address), "http1")
        s = srv.session()
        handshake(client, s)
        assert tls.established(client) is None
        assert client.alpn == "http/1.1"
        # TLS 1.3: the tickets come after the handshake; the client takes them with the data
        s.write(b"hello")
        client.receive(s.outgoing())
        assert client.read() == b"hello"
        assert client.reused == (round > 0)
    assert stats.ssl_handshake == 3 and stats.ssl_session_reused == 2


def test_a_wrong_name_fails_with_its_reason_and_counter(pki) -> None:
    stats = ClusterStats()
    tls = ClientTls(ClusterTls(ca=pki["ca"], server_name="other.internal.test"), "c", stats)
    client = tls.session(host("127.0.0.1:443"), "http1")
    with pytest.raises(TlsError) as failed:
        handshake(client, server(pki).session())
    reason = tls.failed(client, str(failed.value))
    assert reason == "TLS: certificate verify failed: hostname mismatch (expected other.internal.test)"
    assert (stats.ssl_fail_verify_san, stats.ssl_fail_verify_error, stats.ssl_connection_error) == (1, 0, 1)


def test_an_unknown_ca_fails_as_a_chain_error(pki, tmp_path) -> None:
    other = trustme.CA()
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    stats = ClusterStats()
    tls = ClientTls(ClusterTls(ca=str(tmp_path / "other.pem")), "c", stats)
    client = tls.session(host("api.internal.test:443"), None)
    with pytest.raises(TlsError) as failed:
        handshake(client, server(pki).session())
    assert tls.failed(client, str(failed.value)).startswith("TLS: certificate verify failed: unable to get local issuer certificate")
    assert stats.ssl_fail_verify_error == 1 and stats.ssl_fail_verify_san == 0


def test_an_http2_connection_refuses_a_server_that_picked_http1(pki) -> None:
    stats = ClusterStats()
    tls = ClientTls(ClusterTls(ca=pki["ca"], alpn=["h2", "http/1.1"]), "c", stats)
    client = tls.session(host("api.internal.test:443"), "http2")
    handshake(client, server(pki, alpn=["http/1.1"]).session())
    assert tls.established(client) == "the server chose ALPN 'http/1.1'; this connection speaks h2"
    assert stats.ssl_connection_error == 1 and stats.ssl_handshake == 0


def test_verify_false_accepts_an_unknown_ca(pki, tmp_path) -> None:
    stats = ClusterStats()
    tls = ClientTls(ClusterTls(verify=False, server_name="nobody.test"), "c", stats)
    client = tls.session(host("127.0.0.1:443"), "http1")
    handshake(client, server(pki).session())
    assert tls.established(client) is None
