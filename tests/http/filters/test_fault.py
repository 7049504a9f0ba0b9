import random

import pytest
import trio

from proxy.http.filter import LocalReply
from proxy.http.filters.fault import FaultFilter
from proxy.http.stream_info import DELAY_INJECTED, FAULT_INJECTED

from tests.http.filters import make_stream


class FixedRandom(random.Random):
    """random() returns the given values in turn."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


# --- config ---------------------------------------------------------------------------------


def test_config_good():
    f = FaultFilter({"delay": {"fixed": "100ms", "percentage": 50}, "abort": {"status": 503, "percentage": 10.5, "body": "fault"}})
    assert f.delay == pytest.approx(0.1)
    assert f.delay_percentage == 50.0
    assert (f.abort_status, f.abort_percentage, f.abort_body) == (503, 10.5, b"fault")
    assert f.header_control is False


def test_config_defaults():
    f = FaultFilter({"abort": {"status": 500}})
    assert f.abort_percentage == 100.0
    assert f.abort_body == b"fault filter abort"
    assert f.delay is None
    f = FaultFilter({"header_control": True})
    assert f.max_header_delay == 10.0
    assert FaultFilter({"header_control": True, "max_header_delay": "2s"}).max_header_delay == 2.0


@pytest.mark.parametrize(
    "config, message",
    [
        ({}, "nothing to inject"),
        ({"delay": {"fixed": "1s"}, "bogus": 1}, "unknown key 'bogus'"),
        ({"delay": "1s"}, "delay: expected a mapping"),
        ({"delay": {"percentage": 10}}, "delay: missing required key 'fixed'"),
        ({"delay": {"fixed": 100}}, "delay.fixed: duration 100 needs a unit"),
        ({"delay": {"fixed": "soon"}}, "delay.fixed: invalid duration"),
        ({"delay": {"fixed": "0s"}}, "delay.fixed: must be greater than zero"),
        ({"delay": {"fixed": "1s", "percentage": 101}}, "delay.percentage: expected a percentage"),
        ({"delay": {"fixed": "1s", "percentage": -1}}, "delay.percentage"),
        ({"delay": {"fixed": "1s", "percentage": "50%"}}, "delay.percentage"),
        ({"delay": {"fixed": "1s", "jitter": "1s"}}, "delay: unknown key 'jitter'"),
        ({"abort": {}}, "abort: missing required key 'status'"),
        ({"abort": {"status": 99}}, "abort.status: must be at least 200"),
        ({"abort": {"status": 600}}, "abort.status: must be at most 599"),
        ({"abort": {"status": "503"}}, "abort.status: expected an integer"),
        ({"abort": {"status": True}}, "abort.status: expected an integer"),
        ({"abort": {"status": 503, "body": 5}}, "abort.body: expected a string"),
        ({"abort": {"status": 503}, "header_control": "yes"}, "header_control: expected true or false"),
        ({"abort": {"status": 503}, "max_header_delay": "1s"}, "max_header_delay: only meaningful with header_control"),
        ({"header_control": True, "max_header_delay": "forever"}, "max_header_delay: invalid duration"),
    ],
)
def test_config_bad(config, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        FaultFilter(config)


# --- behaviour ------------------------------------------------------------------------------


async def test_delay_sleeps_and_flags(autojump_clock):
    f = FaultFilter({"delay": {"fixed": "250ms"}})
    stream = make_stream()
    start = trio.current_time()
    assert await f.on_request(stream) is None
    assert trio.current_time() - start == pytest.approx(0.25)
    assert stream.info.has_flag(DELAY_INJECTED)


async def test_delay_percentage_uses_rng(autojump_clock):
    f = FaultFilter({"delay": {"fixed": "1s", "percentage": 50}}, rng=FixedRandom(0.49, 0.5))
    hit, miss = make_stream(), make_stream()
    start = trio.current_time()
    await f.on_request(hit)
    assert trio.current_time() - start == pytest.approx(1.0)
    start = trio.current_time()
    await f.on_request(miss)
    assert trio.current_time() == start
    assert hit.info.has_flag(DELAY_INJECTED) and not miss.info.has_flag(DELAY_INJECTED)


async def test_abort_always():
    f = FaultFilter({"abort": {"status": 503, "body": "fault"}})
    reply = await f.on_request(make_stream())
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.body, reply.flag) == (503, b"fault", FAULT_INJECTED)


async def test_abort_percentage_with_seeded_rng():
    f = FaultFilter({"abort": {"status": 500, "percentage": 10}}, rng=random.Random(1234))
    replies = [await f.on_request(make_stream()) for _ in range(2000)]
    aborted = sum(r is not None for r in replies)
    assert 140 <= aborted <= 260  # ~10% of 2000
    # Same seed, same decisions.
    g = FaultFilter({"abort": {"status": 500, "percentage": 10}}, rng=random.Random(1234))
    assert [(await g.on_request(make_stream())) is not None for _ in range(2000)] == [r is not None for r in replies]


async def test_zero_percentage_never_aborts():
    f = FaultFilter({"abort": {"status": 500, "percentage": 0}})
    assert all([await f.on_request(make_stream()) is None for _ in range(100)])


async def test_delay_then_abort(autojump_clock):
    f = FaultFilter({"delay": {"fixed": "2s"}, "abort": {"status": 502}})
    stream = make_stream()
    start = trio.current_time()
    reply = await f.on_request(stream)
    assert trio.current_time() - start == pytest.approx(2.0)
    assert reply.status == 502 and reply.flag == FAULT_INJECTED
    assert stream.info.has_flag(DELAY_INJECTED)


async def test_header_control_forces_delay_and_abort(autojump_clock):
    f = FaultFilter({"header_control": True})
    stream = make_stream(headers=[(b"X-Fault-Delay-Ms", b"200"), (b"x-fault-ABORT", b"503")])
    start = trio.current_time()
    reply = await f.on_request(stream)
    assert trio.current_time() - start == pytest.approx(0.2)
    assert reply.status == 503 and reply.flag == FAULT_INJECTED
    assert stream.info.has_flag(DELAY_INJECTED)
    # Without the headers nothing happens.
    assert await f.on_request(make_stream()) is None


async def test_header_control_overrides_percentage_and_status(autojump_clock):
    f = FaultFilter({"header_control": True, "abort": {"status": 500, "percentage": 0}, "delay": {"fixed": "5s", "percentage": 0}})
    stream = make_stream(headers=[(b"x-fault-abort", b"418"), (b"x-fault-delay-ms", b"10")])
    start = trio.current_time()
    reply = await f.on_request(stream)
    assert trio.current_time() - start == pytest.approx(0.01)
    assert reply.status == 418


async def test_header_delay_is_capped(autojump_clock):
    f = FaultFilter({"header_control": True, "max_header_delay": "1s"})
    start = trio.current_time()
    await f.on_request(make_stream(headers=[(b"x-fault-delay-ms", b"3600000")]))
    assert trio.current_time() - start == pytest.approx(1.0)


@pytest.mark.parametrize("value", [b"abc", b"-5", b"99", b"600", b"", b"9" * 5000, b"5.0"])
async def test_header_control_ignores_invalid_abort(value):
    f = FaultFilter({"header_control": True})
    assert await f.on_request(make_stream(headers=[(b"x-fault-abort", value)])) is None


async def test_header_invalid_falls_back_to_config():
    f = FaultFilter({"header_control": True, "abort": {"status": 500}})
    reply = await f.on_request(make_stream(headers=[(b"x-fault-abort", b"nope")]))
    assert reply.status == 500


async def test_headers_ignored_without_header_control(autojump_clock):
    f = FaultFilter({"abort": {"status": 500, "percentage": 0}})
    start = trio.current_time()
    assert await f.on_request(make_stream(headers=[(b"x-fault-abort", b"503"), (b"x-fault-delay-ms", b"100")])) is None
    assert trio.current_time() == start
