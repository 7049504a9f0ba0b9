"""A cluster's `tls:` is checked whole when the config loads: files readable and what they
claim to be, a client key that is its certificate's, ciphers OpenSSL takes, versions in order,
a name to verify every host against; every error with its path, never a key's bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trustme

from proxy.admin.server import config_json
from proxy.config import load_text
from tests.config.helpers import issues_of


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("cluster-tls")
    ca = trustme.CA()
    client = ca.issue_cert("client.example.test")
    other = ca.issue_cert("other.example.test")
    out = {"ca": d / "ca.pem", "cert": d / "client.pem", "key": d / "client.key", "other_key": d / "other.key", "junk": d / "junk.pem"}
    ca.cert_pem.write_to_path(str(out["ca"]))
    client.cert_chain_pems[0].write_to_path(str(out["cert"]))
    client.private_key_pem.write_to_path(str(out["key"]))
    other.private_key_pem.write_to_path(str(out["other_key"]))
    out["junk"].write_text("not a certificate\n")
    return {k: str(v) for k, v in out.items()}


def cluster(tls: dict, address: str = "10.0.0.1:443") -> str:
    return json.dumps({"clusters": [{"name": "back", "hosts": [{"address": address}], "tls": tls}]})


def load(tls: dict, address: str = "10.0.0.1:443"):
    return load_text(cluster(tls, address), filename="t.json", fmt="json")


def test_defaults() -> None:
    tls = load({}).clusters[0].tls
    assert tls.verify is True and tls.ca is None and tls.server_name is None and tls.alpn is None
    assert tls.session_reuse is True and (tls.min_version, tls.max_version) == ("1.2", "1.3")


def test_a_full_tls_section_loads(files) -> None:
    tls = load({"ca": files["ca"], "cert": files["cert"], "key": files["key"], "server_name": "api.internal", "alpn": ["h2"], "ciphers": "ECDHE+AESGCM"}).clusters[0].tls
    assert tls.cert == files["cert"] and tls.alpn == ["h2"]


def test_every_error_with_its_path(files) -> None:
    issues = issues_of(
        cluster(
            {
                "ca": files["junk"],
                "cert": files["cert"],
                "key": files["other_key"],
                "ciphers": "NOPE-NOT-A-CIPHER",
                "min_version": "1.3",
                "max_version": "1.2",
            }
        ),
        fmt="json",
    )
    found = {(i.path, i.message) for i in issues}
    messages = " | ".join(f"{p}: {m}" for p, m in found)
    assert ("clusters[0].tls.ca", f"{files['junk']} holds no PEM certificate") in found, messages
    assert ("clusters[0].tls", f"the key {files['other_key']} does not belong to the certificate {files['cert']}") in found, messages
    assert any(p == "clusters[0].tls.ciphers" for p, _ in found), messages
    assert ("clusters[0].tls", "min_version 1.3 is above max_version 1.2") in found, messages
    key_text = Path(files["other_key"]).read_text()
    assert all(key_text.splitlines()[1] not in m for _, m in found)  # never the key's bytes


def test_missing_files_and_half_a_key_pair(files, tmp_path) -> None:
    issues = issues_of(cluster({"ca": str(tmp_path / "nope.pem"), "cert": files["cert"]}), fmt="json")
    found = {(i.path, i.message) for i in issues}
    assert ("clusters[0].tls.ca", f"cannot read the CA bundle {tmp_path / 'nope.pem'}: No such file or directory") in found, found
    assert ("clusters[0].tls", "a client certificate needs both 'cert' and 'key'") in found, found


def test_a_key_that_is_not_a_key_is_not_quoted(files) -> None:
    issues = issues_of(cluster({"cert": files["cert"], "key": files["ca"]}), fmt="json")
    assert [(i.path, i.message) for i in issues] == [("clusters[0].tls", f"{files['ca']} holds no unencrypted PEM private key")]


def test_a_unix_host_needs_a_server_name_to_verify() -> None:
    issues = issues_of(cluster({}, "unix:/run/back.sock"), fmt="json")
    assert [i.path for i in issues] == ["clusters[0].hosts[0].address"] and "set tls.server_name" in issues[0].message
    assert load({"server_name": "back.internal"}, "unix:/run/back.sock").clusters[0].tls.server_name == "back.internal"
    assert load({"verify": False}, "unix:/run/back.sock").clusters[0].tls.verify is False


def test_unknown_keys_and_bad_alpn() -> None:
    issues = issues_of(cluster({"verify_name": "x", "alpn": [""]}), fmt="json")
    paths = sorted(i.path for i in issues)
    assert paths == ["clusters[0].tls.alpn", "clusters[0].tls.verify_name"], paths


def test_config_shows_no_key(files) -> None:
    config = load({"ca": files["ca"], "cert": files["cert"], "key": files["key"]})
    tls = config_json(config)["clusters"][0]["tls"]
    assert tls["cert"] == files["cert"] and tls["key"] == "[redacted]"


def test_auto_protocol_needs_tls() -> None:
    text = json.dumps({"clusters": [{"name": "back", "protocol": "auto", "hosts": [{"address": "10.0.0.1:443"}]}]})
    issues = issues_of(text, fmt="json")
    assert [(i.path, i.message) for i in issues] == [("clusters[0].protocol", "protocol auto picks HTTP/2 or HTTP/1.1 by ALPN, which needs the cluster's tls")]
    assert load({}).clusters[0].protocol == "http1"
