import pytest

from proxy.http.filters import ip_access
from proxy.http.filters.ip_access import IpAccessFilter
from proxy.http.stream_info import UNAUTHORIZED

from tests.http.filters import make_stream


def test_config_good():
    f = IpAccessFilter({"allow": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"], "deny": ["10.1.0.0/16"], "deny_unix": True})
    assert f.has_allow and f.deny_unix
    assert IpAccessFilter({"allow": []}).has_allow  # valid: only unix peers pass
    assert not IpAccessFilter({"deny": ["0.0.0.0/0"]}).has_allow
    assert IpAccessFilter({"deny_unix": True}).deny_unix


@pytest.mark.parametrize(
    "config, message",
    [
        ({}, "give 'allow' and/or 'deny'"),
        ({"allow": ["10.0.0.0/8"], "block": []}, "unknown key 'block'"),
        ({"allow": "10.0.0.0/8"}, "allow: expected a list of strings"),
        ({"deny": [10]}, "deny: expected a list of strings"),
        ({"allow": ["10.0.0.0/33"]}, r"allow\[0\]: invalid CIDR '10.0.0.0/33'"),
        ({"allow": ["10.0.0.0/8", "example.com"]}, r"allow\[1\]: invalid CIDR 'example.com'"),
        ({"deny": ["10.0.0.1/8"]}, r"deny\[0\]: .*host bits set \(did you mean 10.0.0.0/8\?\)"),
        ({"deny": ["2001:db8::1/32"]}, r"did you mean 2001:db8::/32"),
        ({"deny": [], "deny_unix": "no"}, "deny_unix: expected true or false"),
    ],
)
def test_config_bad(config, message):
    with pytest.raises(ValueError, match=message):
        IpAccessFilter(config)


@pytest.mark.parametrize(
    "address, allowed",
    [
        ("10.2.3.4", True),
        ("10.1.2.3", False),  # deny wins over allow
        ("192.0.2.7", True),
        ("192.0.2.8", False),  # not in allow
        ("8.8.8.8", False),
        ("2001:db8::1", True),
        ("2001:db8:ffff::1", True),
        ("2001:db9::1", False),
        ("2001:db8:dead::5", False),  # denied v6 /48
        ("::ffff:10.2.3.4", True),  # IPv4-mapped: matched as IPv4
        ("::ffff:10.1.0.1", False),
        ("fe80::1%eth0", False),
        ("not-an-ip", False),  # fail closed
        ("", False),
        ("unix", True),
    ],
)
async def test_allow_and_deny(address, allowed):
    f = IpAccessFilter({"allow": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"], "deny": ["10.1.0.0/16", "2001:db8:dead::/48"]})
    reply = await f.on_request(make_stream(address))
    if allowed:
        assert reply is None
    else:
        assert (reply.status, reply.body, reply.flag) == (403, b"forbidden", UNAUTHORIZED)


async def test_deny_only_lets_the_rest_through():
    f = IpAccessFilter({"deny": ["203.0.113.0/24", "::1"]})
    assert await f.on_request(make_stream("203.0.113.9")) is not None
    assert await f.on_request(make_stream("::1")) is not None
    assert await f.on_request(make_stream("203.0.114.1")) is None
    assert await f.on_request(make_stream("::2")) is None


async def test_allow_v4_only_refuses_v6():
    f = IpAccessFilter({"allow": ["0.0.0.0/0"]})
    assert await f.on_request(make_stream("1.2.3.4")) is None
    assert await f.on_request(make_stream("::2")) is not None


async def test_unix_peers():
    assert await IpAccessFilter({"allow": []}).on_request(make_stream("unix")) is None
    assert await IpAccessFilter({"deny": ["0.0.0.0/0", "::/0"]}).on_request(make_stream("unix")) is None
    reply = await IpAccessFilter({"deny_unix": True}).on_request(make_stream("unix"))
    assert reply.status == 403
    assert await IpAccessFilter({"deny_unix": True}).on_request(make_stream("1.2.3.4")) is None


def test_many_networks_grouped_by_prefix_length():
    nets = [f"10.{i}.{j}.0/24" for i in range(20) for j in range(256)]
    f = IpAccessFilter({"allow": nets})
    assert len(f.allow4) == 1  # one prefix length: one set probe per lookup
    assert f.allowed("10.19.255.1")
    assert not f.allowed("10.20.0.1")


def test_decision_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(ip_access, "CACHE_SIZE", 8)
    f = IpAccessFilter({"allow": ["10.0.0.0/8"]})
    for i in range(50):
        assert f.allowed(f"10.0.0.{i}")
        assert not f.allowed(f"11.0.0.{i}")
    assert len(f._cache) == 8
    assert f.allowed("10.0.0.1") and not f.allowed("11.0.0.1")
