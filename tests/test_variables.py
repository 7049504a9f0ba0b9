"""%variable% templates: every built-in name, headers, missing values, escapes, errors."""

from __future__ import annotations

import calendar
import time
from types import SimpleNamespace
from typing import Any

import pytest

from proxy import variables
from proxy.variables import compile_template, register, register_function, variable_names


def make_info(**overrides: Any) -> SimpleNamespace:
    request = SimpleNamespace(
        method=b"POST",
        target=b"/api/users?id=7&x=1",
        http_version=b"1.1",
        headers=[
            (b"Host", b"api.example.com:8080"),
            (b"User-Agent", b"curl/8.0"),
            (b"X-Forwarded-For", b"10.0.0.1"),
            (b"x-forwarded-for", b"10.0.0.2"),
            (b"X-Foo", b"bar"),
            (b"x-latin", "café".encode("latin-1")),
        ],
    )
    response = SimpleNamespace(status=201, headers=[(b"Content-Type", b"application/json"), (b"server", b"up")])
    start = calendar.timegm((2024, 3, 5, 6, 7, 8, 0, 0, 0)) + 0.0456
    values: dict[str, Any] = dict(
        request=request,
        response=response,
        downstream_remote_address="192.0.2.9:51234",
        downstream_local_address="127.0.0.1:8080",
        listener="web",
        route_name="main",
        cluster="api",
        upstream_host="10.0.0.7:8000",
        upstream_local_address="10.0.0.1:40000",
        start_time=start,
        duration=0.1239,
        upstream_service_time=0.05,
        bytes_received=123,
        bytes_sent=4567,
        response_code=201,
        response_flags="UF,URX",
        request_id="abc-123",
        protocol="HTTP/1.1",
    )
    values.update(overrides)
    return SimpleNamespace(**values)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("method", "POST"),
        ("path", "/api/users"),
        ("query", "id=7&x=1"),
        ("request_uri", "/api/users?id=7&x=1"),
        ("protocol", "HTTP/1.1"),
        ("host", "api.example.com:8080"),
        ("downstream_remote_address", "192.0.2.9:51234"),
        ("downstream_remote_ip", "192.0.2.9"),
        ("downstream_local_address", "127.0.0.1:8080"),
        ("listener", "web"),
        ("route_name", "main"),
        ("cluster", "api"),
        ("upstream_host", "10.0.0.7:8000"),
        ("upstream_local_address", "10.0.0.1:40000"),
        ("start_time", "2024-03-05T06:07:08.045Z"),
        ("duration", "123"),
        ("upstream_service_time", "50"),
        ("bytes_received", "123"),
        ("bytes_sent", "4567"),
        ("response_code", "201"),
        ("response_flags", "UF,URX"),
        ("request_id", "abc-123"),
        ("user_agent", "curl/8.0"),
        ("x_forwarded_for", "10.0.0.1, 10.0.0.2"),  # repeated header lines joined (RFC 9110)
        ("request_header(x-foo)", "bar"),
        ("request_header(X-FOO)", "bar"),  # case-insensitive both ways
        ("request_header( host )", "api.example.com:8080"),
        ("request_header(x-latin)", "café"),
        ("response_header(content-type)", "application/json"),
        ("response_header(Server)", "up"),
    ],
)
def test_each_variable(name: str, expected: str) -> None:
    template = compile_template(f"%{name}%")
    assert not template.is_constant
    assert template.render(make_info()) == expected
    assert template.render_bytes(make_info()) == expected.encode("latin-1")


def test_every_builtin_is_tested() -> None:
    expected = {
        "method", "path", "query", "request_uri", "protocol", "host", "downstream_remote_address", "downstream_remote_ip",
        "downstream_local_address", "listener", "route_name", "cluster", "upstream_host", "upstream_local_address", "start_time",
        "duration", "upstream_service_time", "bytes_received", "bytes_sent", "response_code", "response_flags", "request_id",
        "user_agent", "x_forwarded_for", "request_header(...)", "response_header(...)",
    }  # fmt: skip
    assert expected <= set(variable_names())


@pytest.mark.parametrize(
    ("address", "ip"),
    [("192.0.2.9:1", "192.0.2.9"), ("[2001:db8::1]:443", "2001:db8::1"), ("unix:/run/x.sock", "unix:/run/x.sock"), ("10.0.0.1", "10.0.0.1")],
)
def test_downstream_remote_ip(address: str, ip: str) -> None:
    assert compile_template("%downstream_remote_ip%").render(make_info(downstream_remote_address=address)) == ip


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("query", {"request": SimpleNamespace(method=b"GET", target=b"/x", http_version=b"1.1", headers=[])}),
        ("host", {"request": SimpleNamespace(method=b"GET", target=b"/x", http_version=b"1.1", headers=[])}),
        ("method", {"request": None}),
        ("path", {"request": None}),
        ("request_header(x-foo)", {"request": None}),
        ("request_header(x-nope)", {}),
        ("response_header(server)", {"response": None}),
        ("response_header(x-nope)", {}),
        ("upstream_host", {"upstream_host": ""}),
        ("cluster", {"cluster": None}),
        ("upstream_service_time", {"upstream_service_time": None}),
        ("response_flags", {"response_flags": ""}),
        ("start_time", {"start_time": None}),
    ],
)
def test_missing_values(name: str, overrides: dict[str, Any]) -> None:
    template = compile_template(f"[%{name}%]")
    info = make_info(**overrides)
    assert template.render(info) == "[-]"  # access logs
    assert template.render(info, missing="") == "[]"
    assert template.render_bytes(info) == b"[]"  # header values
    assert template.render_bytes(info, missing="?") == b"[?]"


def test_missing_attributes_render_missing() -> None:
    # a partial info object (e.g. a local reply before routing) must not raise
    assert compile_template("%cluster% %duration% %request_id% %method%").render(SimpleNamespace()) == "- - - -"


def test_empty_query_after_question_mark() -> None:
    info = make_info(request=SimpleNamespace(method=b"GET", target=b"/x?", http_version=b"1.1", headers=[]))
    assert compile_template("%query%|%path%").render(info) == "-|/x"


def test_str_request_fields_work_too() -> None:
    info = make_info(request=SimpleNamespace(method="GET", target="/a?b=1", http_version="1.1", headers=[]))
    assert compile_template("%method% %path% %query%").render(info) == "GET /a b=1"


def test_mixed_template_and_escapes() -> None:
    t = compile_template('%downstream_remote_ip% "%method% %request_uri% %protocol%" %response_code% 100%% %%done%%')
    assert t.variables == ("downstream_remote_ip", "method", "request_uri", "protocol", "response_code")
    assert t.render(make_info()) == '192.0.2.9 "POST /api/users?id=7&x=1 HTTP/1.1" 201 100% %done%'


def test_constant_templates_cost_nothing() -> None:
    for text, value in [("plain", "plain"), ("", ""), ("50%%", "50%"), ("%%%%", "%%"), ("a%%b", "a%b")]:
        t = compile_template(text)
        assert t.is_constant and t.constant == value and t.constant_bytes == value.encode()
        assert t.render(None) == value and t.render_bytes(None) == value.encode()
    assert compile_template("ünïcode €").constant_bytes == "ünïcode €".encode("utf-8")  # beyond Latin-1
    assert compile_template("café").constant_bytes == b"caf\xe9"


def test_literal_percent_s_is_not_a_format_directive() -> None:
    assert compile_template("%%s %method% %%d").render(make_info()) == "%s POST %d"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("%nope%", "unknown variable %nope%; known variables: "),
        ("a %Method% b", "invalid variable %Method%"),
        ("%request_header%", "unknown variable %request_header%; it takes an argument: %request_header(...)%"),
        ("%method(x)%", "unknown variable %method(...)%; %method% takes no argument"),
        ("%nope(x)%", "unknown variable %nope(...)%"),
        ("%request_header()%", "invalid variable %request_header()%: '' is not a header name"),
        ("%request_header(a b)%", "invalid variable %request_header(a b)%: 'a b' is not a header name"),
        ("100%", "unterminated variable at column 4 in '100%'; write '%%' for a literal '%'"),
        ("%method", "unterminated variable at column 1"),
        ("%%%", "unterminated variable at column 3"),
        ("%%method%", "unterminated variable at column 9"),
        ("%a b%", "invalid variable %a b%"),
    ],
)
def test_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        compile_template(text)
    assert str(info.value).startswith(message), str(info.value)


def test_register_new_variables() -> None:
    register("test_trace_id", lambda info: getattr(info, "trace", None))
    register_function("test_meta", lambda arg: lambda info: info.meta.get(arg))
    try:
        t = compile_template("%test_trace_id%/%test_meta(zone)%")
        assert t.render(SimpleNamespace(trace="t1", meta={"zone": "a"})) == "t1/a"
        assert t.render(SimpleNamespace(meta={})) == "-/-"
        with pytest.raises(ValueError):
            register("Bad Name", lambda info: None)
    finally:
        variables._VARIABLES.pop("test_trace_id", None)
        variables._FUNCTIONS.pop("test_meta", None)


def test_start_time_cache_follows_the_second() -> None:
    t = compile_template("%start_time%")
    base = calendar.timegm((2030, 1, 2, 3, 4, 5, 0, 0, 0))
    assert t.render(make_info(start_time=base + 0.999)) == "2030-01-02T03:04:05.999Z"
    assert t.render(make_info(start_time=base + 1)) == "2030-01-02T03:04:06.000Z"
    assert t.render(make_info(start_time=base + 0.5)) == "2030-01-02T03:04:05.500Z"
    now = time.time()
    assert t.render(make_info(start_time=now))[:19] == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))


def test_templates_compare_by_text() -> None:
    assert compile_template("%method%") == compile_template("%method%")
    assert len({compile_template("a"), compile_template("a")}) == 1
