"""The codec's shortcut through h2's stream state machine (`proxy.codec.http2._advance`) against
h2's own `process_input`: for every state, every input and every combination of the flags the
transitions read or write, both leave the machine the same (or both raise)."""

from __future__ import annotations

import itertools

from h2.exceptions import ProtocolError
from h2.stream import H2StreamStateMachine, StreamInputs, StreamState

from proxy.codec.http2 import _advance

FLAGS = ("client", "headers_sent", "trailers_sent", "headers_received", "trailers_received")


def _machine(state: StreamState, flags: tuple) -> H2StreamStateMachine:
    sm = H2StreamStateMachine(1)
    sm.state = state
    for name, value in zip(FLAGS, flags):
        setattr(sm, name, value)
    return sm


def _outcome(step, sm: H2StreamStateMachine, given: StreamInputs) -> tuple:
    try:
        step(sm, given)
        error = None
    except (ProtocolError, AssertionError) as exc:
        error = type(exc).__name__
    return (error, sm.state, sm.stream_closed_by, *(getattr(sm, name) for name in FLAGS))


def test_every_transition_matches_h2() -> None:
    checked = 0
    for state, given in itertools.product(StreamState, StreamInputs):
        for flags in itertools.product((None, False, True), repeat=len(FLAGS)):
            ours = _outcome(_advance, _machine(state, flags), given)
            theirs = _outcome(H2StreamStateMachine.process_input, _machine(state, flags), given)
            assert ours == theirs, (state, given, flags)
            checked += 1
    assert checked == len(StreamState) * len(StreamInputs) * 3 ** len(FLAGS)


def test_a_new_stream_is_what_h2_would_make() -> None:
    import h2.config
    import h2.connection
    from h2.connection import AllowedStreamIDs

    from proxy.codec.http2 import _new_stream

    def connection() -> h2.connection.H2Connection:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.local_settings.initial_window_size = 1 << 20
        conn.local_settings.acknowledge()
        conn.max_outbound_frame_size = 32768
        return conn

    def seen(conn: h2.connection.H2Connection, sid: int) -> tuple:
        s = conn.streams[sid]
        window = s._inbound_window_manager
        return (sorted(conn.streams), conn.highest_inbound_stream_id, conn.highest_outbound_stream_id, s.stream_id, s.config is conn.config,
                s.outbound_flow_control_window, s.max_outbound_frame_size, window.max_window_size, window.current_window_size,
                s.state_machine.state, s._expected_content_length, s.request_method)

    for sid, outbound, allowed in ((1, False, AllowedStreamIDs.ODD), (7, False, AllowedStreamIDs.ODD), (2, True, AllowedStreamIDs.EVEN)):
        ours, theirs = connection(), connection()
        _new_stream(ours, sid, outbound)
        theirs._begin_new_stream(sid, allowed)
        assert seen(ours, sid) == seen(theirs, sid)
