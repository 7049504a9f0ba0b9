"""network/tls.py without sockets: client certificates verified (and why one is refused), the
peer certificate's fields and XFCC element, and contexts swapped under sessions in flight.
The client is pyOpenSSL over memory BIOs; the server, ServerTls and TlsSession as a
listener runs them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL

from proxy.config.model import ClientCertDetails, ListenerTls, TlsCertificate
from proxy.network.tls import ServerTls, TlsSession, load_files
from proxy.network.tls_io import CLIENT_CERTIFICATE_REFUSED, NO_CLIENT_CERTIFICATE, TlsError
from tests.integration.test_mtls import issue_client


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Any]:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    pem, key = issue_client(server_ca, "proxy", ["spiffe://example.org/proxy"], ["b.example.com"])  # (the client checks nothing)
    out: dict[str, Any] = {"server_ca": server_ca, "client_ca": client_ca}
    out["cert"] = _write(tmp_path / "s.pem", pem)
    out["key"] = _write(tmp_path / "s.key", key)
    out["client_ca_path"] = _write(tmp_path / "ca.pem", client_ca.cert_pem.bytes())
    pem, key = issue_client(client_ca, 'a "quoted", name', ["spiffe://example.org/a;b", "urn:x"], ["c.example.org"])
    out["client"] = (pem, key)
    pem, key = issue_client(trustme.CA(), "stranger", [], [])
    out["stranger"] = (pem, key)
    return out


def config(files: dict[str, Any], mode: str = "require") -> ListenerTls:
    return ListenerTls(
        certificates=[TlsCertificate(cert=files["cert"], key=files["key"])], client_certificate=mode, client_ca=files["client_ca_path"]
    )


def client(pair: tuple[bytes, bytes] | None) -> SSL.Connection:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if pair is not None:
        ctx.use_certificate(x509.load_pem_x509_certificate(pair[0]))
        ctx.use_privatekey(serialization.load_pem_private_key(pair[1], password=None))  # type: ignore[arg-type]
    conn = SSL.Connection(ctx, None)
    conn.set_tlsext_host_name(b"b.example.com")
    conn.set_connect_state()
    return conn


def handshake(server: TlsSession, peer: SSL.Connection) -> None:
    """Pump both ways until the server's handshake is done (or raises)."""
    for _ in range(10):
        try:
            peer.do_handshake()
        except SSL.WantReadError:
            pass
        try:
            out = peer.bio_read(65536)
        except SSL.WantReadError:
            out = b""
        server.receive(out)
        done = server.handshake()
        back = server.outgoing()
        if back:
            peer.bio_write(back)
        if done:
            return
    raise AssertionError("the handshake did not finish")


def test_a_verified_client_certificate_and_what_it_shows(files: dict[str, Any]) -> None:
    server = ServerTls(config(files), "http1")
    session = server.session()
    handshake(session, client(files["client"]))
    assert session.presented_certificate
    peer = session.peer
    assert peer is not None and session.peer is peer  # parsed once
    cert = x509.load_pem_x509_certificate(files["client"][0])
    assert peer.subject == 'CN=a \\"quoted\\"\\, name,O=Example\\, Inc.'
    assert peer.uri_sans == ("spiffe://example.org/a;b", "urn:x") and peer.dns_sans == ("c.example.org",)
    assert peer.fingerprint_256 == cert.fingerprint(hashes.SHA256()).hex()
    assert int(peer.serial, 16) == cert.serial_number and len(peer.serial) % 2 == 0
    element = peer.xfcc_element(ClientCertDetails(subject=True, uri=True, dns=True))
    subject = 'CN=a \\\\\\"quoted\\\\\\"\\\\, name,O=Example\\\\, Inc.'  # the RFC 4514 escapes, escaped again
    assert element == f'By=spiffe://example.org/proxy;Hash={peer.fingerprint_256};Subject="{subject}";URI="spiffe://example.org/a;b";URI=urn:x;DNS=c.example.org'
    assert peer.xfcc_element(ClientCertDetails()) == f"By=spiffe://example.org/proxy;Hash={peer.fingerprint_256}"


def test_require_refuses_no_certificate_and_a_stranger_with_reasons_request_serves_none(files: dict[str, Any]) -> None:
    server = ServerTls(config(files), "http1")
    with pytest.raises(TlsError, match=f"^{NO_CLIENT_CERTIFICATE}$"):
        handshake(server.session(), client(None))
    with pytest.raises(TlsError, match=f"^{CLIENT_CERTIFICATE_REFUSED}: unable to get local issuer certificate$"):
        handshake(server.session(), client(files["stranger"]))
    lenient = ServerTls(config(files, "request"), "http1")
    session = lenient.session()
    handshake(session, client(None))
    assert session.peer is None and not session.presented_certificate
    with pytest.raises(TlsError, match=CLIENT_CERTIFICATE_REFUSED):
        handshake(lenient.session(), client(files["stranger"]))


def test_installed_contexts_serve_new_sessions_and_spare_open_ones(files: dict[str, Any], tmp_path: Path) -> None:
    server = ServerTls(config(files, "none"), "http1")
    before = server.session()
    fresh = files["server_ca"].issue_cert("b.example.com", organization_unit_name="rotated")
    fresh.cert_chain_pems[0].write_to_path(files["cert"])
    fresh.private_key_pem.write_to_path(files["key"])
    server.install(server.build(load_files(config(files, "none"))))
    after = server.session()
    old_peer, new_peer = client(None), client(None)
    handshake(before, old_peer)
    handshake(after, new_peer)
    subject = x509.load_pem_x509_certificate(fresh.cert_chain_pems[0].bytes()).subject
    assert new_peer.get_peer_certificate(as_cryptography=True).subject == subject  # type: ignore[union-attr]
    assert old_peer.get_peer_certificate(as_cryptography=True).subject != subject  # type: ignore[union-attr]
