import pytest

from proxy.http.filters.headers import HeadersFilter

from tests.http.filters import make_response, make_stream


def test_config_good():
    f = HeadersFilter(
        {
            "request_headers_to_add": [{"name": "X-A", "value": "1"}, {"name": "x-b", "value": "%method%", "append": True}],
            "request_headers_to_remove": ["X-Debug"],
            "response_headers_to_add": [{"name": "x-port", "value": "8080"}],
            "response_headers_to_remove": ["server"],
        }
    )
    assert [(a.name, a.value, a.append) for a in f.request_add] == [(b"X-A", b"1", False), (b"x-b", None, True)]
    assert f.request_remove == {b"x-debug"}
    assert f.response_add[0].value == b"8080"


@pytest.mark.parametrize(
    "config, message",
    [
        ({}, "nothing to do"),
        ({"request_headers_to_add": [], "extra": 1}, "unknown key 'extra'"),
        ({"request_headers_to_add": {"name": "x", "value": "y"}}, "request_headers_to_add: expected a list"),
        ({"request_headers_to_add": [{"name": "x"}]}, r"request_headers_to_add\[0\]: missing required key 'value'"),
        ({"request_headers_to_add": [{"value": "x"}]}, r"request_headers_to_add\[0\]: missing required key 'name'"),
        ({"request_headers_to_add": ["x: y"]}, r"request_headers_to_add\[0\]: expected a mapping"),
        ({"request_headers_to_add": [{"name": "x", "value": "y", "mode": "set"}]}, r"\[0\]: unknown key 'mode'"),
        ({"response_headers_to_add": [{"name": "a b", "value": "y"}]}, r"response_headers_to_add\[0\]\.name: 'a b' is not a valid header name"),
        ({"response_headers_to_add": [{"name": "", "value": "y"}]}, r"\.name: '' is not a valid header name"),
        ({"response_headers_to_add": [{"name": "x", "value": "a\r\nb: c"}]}, r"\.value: must not contain CR, LF or NUL"),
        ({"response_headers_to_add": [{"name": "x", "value": None}]}, r"\.value: expected a string"),
        ({"response_headers_to_add": [{"name": "x", "value": True}]}, r"\.value: expected a string"),
        ({"response_headers_to_add": [{"name": "x", "value": 8080}]}, r"\.value: expected a string, got 8080"),
        ({"response_headers_to_add": [{"name": "x", "value": "y", "append": "yes"}]}, r"\[0\]\.append: expected true or false"),
        ({"request_headers_to_add": [{"name": "Content-Length", "value": "5"}]}, "set by the proxy from the message framing"),
        ({"request_headers_to_remove": ["transfer-encoding"]}, "cannot be removed"),
        ({"request_headers_to_remove": ["Host"]}, "cannot be removed"),
        ({"request_headers_to_remove": "x-a"}, "request_headers_to_remove: expected a list of header names"),
        ({"response_headers_to_remove": [5]}, r"response_headers_to_remove\[0\]: 5 is not a valid header name"),
        ({"request_headers_to_add": [{"name": "x", "value": "%no_such_variable%"}]}, r"\[0\]\.value: unknown variable %no_such_variable%"),
        ({"request_headers_to_add": [{"name": "x", "value": "100%"}]}, r"\[0\]\.value: unterminated variable"),
    ],
)
def test_config_bad(config, message):
    with pytest.raises(ValueError, match=message):
        HeadersFilter(config)


async def test_add_replaces_case_insensitively_by_default():
    f = HeadersFilter({"request_headers_to_add": [{"name": "x-tenant", "value": "acme"}]})
    stream = make_stream(headers=[(b"Host", b"h"), (b"X-Tenant", b"evil"), (b"x-TENANT", b"evil2"), (b"Accept", b"*/*")])
    assert await f.on_request(stream) is None
    assert stream.request.headers == [(b"Host", b"h"), (b"Accept", b"*/*"), (b"x-tenant", b"acme")]


async def test_append_keeps_existing_values():
    f = HeadersFilter({"request_headers_to_add": [{"name": "X-Tag", "value": "edge", "append": True}]})
    stream = make_stream(headers=[(b"x-tag", b"origin")])
    await f.on_request(stream)
    assert stream.request.headers == [(b"x-tag", b"origin"), (b"X-Tag", b"edge")]


async def test_entries_apply_in_order():
    f = HeadersFilter({"request_headers_to_add": [{"name": "x", "value": "1"}, {"name": "x", "value": "2", "append": True}, {"name": "y", "value": "3"}]})
    stream = make_stream(headers=[(b"X", b"0")])
    await f.on_request(stream)
    assert stream.request.headers == [(b"x", b"1"), (b"x", b"2"), (b"y", b"3")]


async def test_remove_case_insensitively_then_add():
    f = HeadersFilter({"request_headers_to_remove": ["X-Debug", "x-secret"], "request_headers_to_add": [{"name": "x-debug", "value": "off", "append": True}]})
    headers = [(b"x-DEBUG", b"1"), (b"Host", b"h"), (b"X-Secret", b"s"), (b"x-debug", b"2")]
    stream = make_stream(headers=headers)
    before = stream.request.headers
    await f.on_request(stream)
    assert stream.request.headers == [(b"Host", b"h"), (b"x-debug", b"off")]
    assert stream.request.headers is before  # mutated in place


async def test_response_headers():
    f = HeadersFilter({"response_headers_to_remove": ["server"], "response_headers_to_add": [{"name": "X-Served-By", "value": "proxy"}]})
    stream = make_stream()
    stream.response = make_response(headers=[(b"Server", b"nginx"), (b"Content-Type", b"text/plain"), (b"x-served-by", b"up")])
    await f.on_response(stream)
    assert stream.response.headers == [(b"Content-Type", b"text/plain"), (b"X-Served-By", b"proxy")]
    assert stream.request.headers == []  # requests untouched


async def test_response_hook_without_response_is_a_no_op():
    f = HeadersFilter({"response_headers_to_add": [{"name": "x", "value": "1"}]})
    await f.on_response(make_stream())


async def test_variables_render_per_request():
    f = HeadersFilter(
        {
            "request_headers_to_add": [
                {"name": "x-client", "value": "%downstream_remote_ip%"},
                {"name": "x-route", "value": "%method% %path% 100%%"},
                {"name": "x-copy", "value": "%request_header(x-src)%"},
            ],
            "response_headers_to_add": [{"name": "x-status", "value": "%response_header(x-up)%"}],
        }
    )
    stream = make_stream("192.0.2.1", method=b"POST", target=b"/a?b=1", headers=[(b"X-Src", b"v")])
    await f.on_request(stream)
    assert stream.request.headers[1:] == [(b"x-client", b"192.0.2.1"), (b"x-route", b"POST /a 100%"), (b"x-copy", b"v")]
    assert f.request_add[1].template is not None


async def test_missing_variable_skips_the_header():
    f = HeadersFilter({"request_headers_to_add": [{"name": "x-copy", "value": "%request_header(x-src)%"}, {"name": "x-empty", "value": ""}]})
    stream = make_stream(headers=[(b"x-copy", b"kept")])
    await f.on_request(stream)
    # The templated value rendered empty: nothing added, nothing replaced; a constant "" is added.
    assert stream.request.headers == [(b"x-copy", b"kept"), (b"x-empty", b"")]


async def test_response_variables_see_the_response():
    f = HeadersFilter({"response_headers_to_add": [{"name": "x-echo", "value": "got %response_header(x-up)%"}]})
    stream = make_stream()
    stream.response = make_response(headers=[(b"X-Up", b"yes")])
    stream.info.response = stream.response
    await f.on_response(stream)
    assert stream.response.headers[-1] == (b"x-echo", b"got yes")


async def test_constant_values_are_precomputed_bytes():
    f = HeadersFilter({"request_headers_to_add": [{"name": "x-const", "value": "caf\u00e9"}]})
    assert f.request_add[0].value == "caf\u00e9".encode("latin-1")
    assert f.request_add[0].template is None


async def test_rendered_line_breaks_are_stripped(monkeypatch):
    from proxy import variables

    monkeypatch.setitem(variables._VARIABLES, "test_crlf", lambda info: "a\r\nInjected: 1")
    f = HeadersFilter({"request_headers_to_add": [{"name": "x", "value": "%test_crlf%"}]})
    stream = make_stream()
    await f.on_request(stream)
    assert stream.request.headers == [(b"x", b"aInjected: 1")]
