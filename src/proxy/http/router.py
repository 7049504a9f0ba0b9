"""The router: one request's path through the proxy, the same for every protocol.

    Router.serve(stream)
      request filters -> route match -> local reply (direct, redirect, refusals)
      -> cluster (weighted) -> upstream head (hop-by-hop out, X-Forwarded-*, Via, rewrites)
      -> attempt: host (balancer) -> pool -> UpstreamRequest -> write the request -> head
         (retries with back-off, per-try timeouts, a reused connection found closed)
      -> response filters -> relay the body in batches -> access log, stats

A codec connection (proxy.http.http1_server, proxy.http.multiplex) calls `serve` for each
stream it parses and answers for the connection itself (keep-alive, deadlines firing,
handovers). The router sees only `ServerStream` and `UpstreamRequest` (proxy.http.stream), so
HTTP/1, HTTP/2 and a test-only RPC codec share every line below.

Errors become local replies with an Envoy response flag (see stream_info): 502 UF/UC/UPE,
503 UH/UO, 504 UT. The route timeout is the stream's deadline: the codec cancels the stream
when it passes and answers 504 after `serve` returns (see `timeout_reply`).
"""

from __future__ import annotations

import base64
import random
from http import HTTPStatus
from typing import Any

import trio

from proxy.clock import clock_reader
from proxy.codec import http1
from proxy.codec.http1 import Body, EndOfMessage, ProtocolError, RequestHead, ResponseHead
from proxy.http import grpc
from proxy.http import stream_info as flags
from proxy.http.access_log import AccessLogger
from proxy.http.filter import FilterChain, LocalReply
from proxy.http.stream import ReusedClosed, ServerStream, StreamReset, UpstreamRequest
from proxy.http.stream_info import StreamInfo
from proxy.log import get_logger
from proxy.network.connect import ConnectFailed
from proxy.network.fds import OutOfDescriptors
from proxy.network.sockio import ConnectionLost
from proxy.router.retry import RetryState
from proxy.router.route_table import choose_cluster, mutate_headers, redirect_location, rewrite_path
from proxy.stats import ListenerStats
from proxy.upstream.cluster import Cluster
from proxy.upstream.connect_log import connect_failed
from proxy.upstream.pool import PoolManager, PoolOverflow

log = get_logger("http")

# A request body up to this size is buffered when the route retries, so it can be replayed.
MAX_REPLAY_BODY = 64 * 1024

_INF = float("inf")
_UPSTREAM_DROP = http1.HOP_BY_HOP | {b"expect"}
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
_XFCC = b"x-forwarded-client-cert"
_UPSTREAM_DROP_XFCC = _UPSTREAM_DROP | {_XFCC}
# forward_client_cert_details (Envoy's): what happens to a client's x-forwarded-client-cert
_XFCC_SANITIZE = 0  # stripped
_XFCC_ALWAYS_FORWARD = 1  # passed on as it came
_XFCC_FORWARD = 2  # passed on from a client that presented a certificate, else stripped
_XFCC_APPEND = 3  # ... with this connection's element added
_XFCC_SET = 4  # replaced by this connection's element (stripped without a certificate)
_XFCC_MODES = {
    "sanitize": _XFCC_SANITIZE,
    "always_forward_only": _XFCC_ALWAYS_FORWARD,
    "forward_only": _XFCC_FORWARD,
    "append_forward": _XFCC_APPEND,
    "sanitize_set": _XFCC_SET,
}


class Abort(Exception):
    """Stop serving this stream: the response was cut midway, or the peer is gone. The codec
    ends the stream (HTTP/1: closes the connection)."""


class _UpstreamFailure(Exception):
    """One upstream attempt failed before a response head; `outcome` is what retry policies see."""

    def __init__(self, outcome: str, flag: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.flag = flag


class _LocalReplyRaised(Exception):
    def __init__(self, reply: LocalReply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class Router:
    """A listener's request path: its route table, filters, clusters, pools, logs and stats."""

    def __init__(
        self,
        config: Any,
        route_table: Any,
        clusters: dict[str, Cluster],
        pools: PoolManager,
        chain: FilterChain,
        access_logs: list[AccessLogger],
        stats: ListenerStats,
    ) -> None:
        http = config.http
        self.name = config.name
        self.routes = route_table
        self.clusters = clusters
        self.pools = pools
        self.chain = chain
        self.access_logs = access_logs
        self.stats = stats
        self.via = http.via.encode() if http.via else None
        self.forwarded = http.forwarded_headers
        self.xfcc = _XFCC_MODES[http.forward_client_cert_details]
        self.xfcc_details = http.set_current_client_cert_details
        self.request_id = http.request_id
        self.server_name = http.server_name.encode()
        self.draining = False
        self.filter_chain: str | None = None  # the listener's filter chain this router serves, if any
        # The run's clock, read directly: trio.current_time() gets there through three Python
        # calls (~0.6 µs), and a request reads it several times.
        self._now = clock_reader()

    # ------------------------------------------------------------------ one request

    async def serve(self, stream: ServerStream) -> None:
        """Serve one stream to its end. Raises Abort when the stream cannot end cleanly (the
        codec then ends it), and lets trio.Cancelled through (a deadline or a handover)."""
        stats = self.stats
        stats.downstream_rq_total += 1
        stats.downstream_rq_active += 1
        info = stream.info
        info.filter_chain = self.filter_chain
        cancelled = False
        try:
            await self._proxy(stream)
        except ProtocolError as exc:
            # The request body turned out malformed midway: nothing more can be trusted.
            info.add_flag(flags.DOWNSTREAM_PROTOCOL_ERROR)
            stats.downstream_rq_protocol_error += 1
            if not stream.response_started:
                status = getattr(exc, "status", 400)
                info.response_code = status
                await self.send_quietly(stream, LocalReply(status, str(exc).encode(), close=True))
            raise Abort() from exc
        except (ConnectionLost, StreamReset) as lost:
            info.add_flag(flags.DOWNSTREAM_CONNECTION_TERMINATION)
            raise Abort() from lost
        except trio.Cancelled:
            cancelled = True
            raise
        except Abort:
            raise
        except Exception as error:
            # A bug, not the peer's fault: answer 500 if nothing was sent yet, log, and close.
            log.error("request.failed", listener=self.name, error=repr(error), exc_info=error)
            stats.downstream_cx_error += 1
            if not stream.response_started:
                info.response_code = 500
                await self.send_quietly(stream, LocalReply(500, b"internal error", close=True))
            raise Abort() from error
        finally:
            if cancelled and stream.timed_out():
                # The route timeout fired (the codec answers 504 once the cancel is through).
                info.add_flag(flags.UPSTREAM_TIMEOUT)
                cluster = self.clusters.get(info.cluster)
                if cluster is not None:
                    cluster.stats.upstream_rq_timeout += 1
                if not stream.response_started:
                    if stream.grpc:  # (the codec's answer will be gRPC-shaped)
                        info.response_code = 200
                        info.grpc_status = grpc.DEADLINE_EXCEEDED
                    else:
                        info.response_code = 504
            stats.downstream_rq_active -= 1
            self.count_status(info.response_code)
            info.finish()
            stats.downstream_rq_time.observe(info.duration * 1000)
            if info.upstream_service_time is not None:
                cluster = self.clusters.get(info.cluster)
                if cluster is not None:
                    cluster.stats.upstream_rq_time.observe(info.upstream_service_time * 1000)
            if self.access_logs:
                self.log_access(info)

    async def _proxy(self, stream: ServerStream) -> None:
        head = stream.request
        info = stream.info
        host, path, query = request_target(head)
        if self.request_id:
            rid = http1.header_value(head.headers, b"x-request-id")
            if rid is None:
                rid = _new_request_id()
                head.headers.append((b"x-request-id", rid))
            info.request_id = rid.decode("latin-1")

        upgrade = head.upgrade
        if upgrade == b"h2c":
            upgrade = None  # never forwarded: serve it as plain HTTP/1.1 (RFC 9113 dropped h2c)

        reply = await self.chain.run_request(stream) if self.chain.request else None
        match = None
        if reply is None:
            match = self.routes.match(head.method, host, path, query, head.headers, info)
            if match is None:
                reply = LocalReply(404, b"no route", flag=flags.NO_ROUTE)
            else:
                stream.route = match
                info.route_name = match.route.name or ""
                reply = self._route_local_reply(match, head, stream.scheme, host, path, query, upgrade)
        if reply is not None:
            await self.send_local_reply(stream, reply, upgrade is not None)
            return
        assert match is not None  # (no reply: a route matched)

        route = match.route
        cluster_name = choose_cluster(route, head.headers, _rng)
        cluster = self.clusters.get(cluster_name) if cluster_name else None
        if cluster is None:
            await self.send_local_reply(stream, LocalReply(503, b"unknown cluster", flag=flags.NO_HEALTHY_UPSTREAM), upgrade is not None)
            return
        info.cluster = cluster.name

        protocol = cluster.protocol
        h2_upstream = protocol == "http2" or (protocol == "downstream" and stream.info.protocol == "HTTP/2")
        # (auto: the host, and so its protocol, is not chosen yet; `TE: trailers` goes on, as
        # HTTP/2 needs it for gRPC and HTTP/1.1 allows it)
        up_head, grpc_timeout = self._upstream_head(stream, match, host, path, query, upgrade, h2_upstream, protocol == "auto")
        try:
            await self._forward(stream, cluster, route, up_head, upgrade, grpc_timeout)
        except _LocalReplyRaised as raised:  # a body filter answered locally
            await self.send_local_reply(stream, raised.reply, True)

    async def _forward(
        self, stream: ServerStream, cluster: Cluster, route: Any, up_head: RequestHead, upgrade: bytes | None, grpc_timeout: bytes | None
    ) -> None:
        """Send the request upstream (with retries when the route has them and the body can be
        replayed), then relay the response."""
        head = stream.request
        info = stream.info
        has_body = stream.has_body
        body: bytes | None = b"" if not has_body else None
        if has_body and route.retry is not None and head.content_length is not None and head.content_length <= MAX_REPLAY_BODY:
            body = await self._read_body(stream, expect=head.expect_continue)
        retry = RetryState(route.retry, body_replayable=body is not None) if route.retry is not None else None

        # The route timeout runs from the end of the client's request, as Envoy's does: while a
        # body streams upstream it restarts at every chunk (see _stream_request_body), so a long
        # upload that keeps moving is not cut, and a stalled one is.
        cap = _INF
        if grpc_timeout is not None and stream.grpc:  # the client's own deadline caps the route's
            seconds = grpc.parse_timeout(grpc_timeout)
            if seconds is not None:
                cap = self._now() + seconds
        deadline = min(self._now() + route.timeout, cap) if route.timeout else cap
        stream.set_deadline(deadline)  # the route timeout: the codec answers 504
        fresh = False
        while True:
            info.attempts += 1
            try:
                upstream, response = await self._attempt(stream, cluster, up_head, body, route, fresh, body is not None, cap)
                if retry is not None and retry.policy.retriable(response.status):
                    if await self._retry(retry, response.status, cluster, deadline):
                        upstream.release(False)  # its body is not wanted
                        continue
                    if retry.retries:
                        info.add_flag(flags.RETRY_LIMIT_EXCEEDED)
                break
            except _UpstreamFailure as failure:
                if failure.outcome == "reused-closed" and not fresh:
                    # The pooled connection died while idle: one more try on a new one.
                    cluster.stats.upstream_cx_reused_closed += 1
                    fresh = True
                    continue
                if retry is not None and await self._retry(retry, failure.outcome, cluster, deadline):
                    continue
                if retry is not None and retry.retries:
                    info.add_flag(flags.RETRY_LIMIT_EXCEEDED)
                reply = LocalReply(_failure_status(failure.flag), str(failure).encode(), flag=failure.flag)
                await self.send_local_reply(stream, reply, upgrade is not None)
                return
        await self._relay_response(stream, upstream, response, upgrade)

    async def _retry(self, retry: RetryState, outcome: int | str, cluster: Cluster, deadline: float) -> bool:
        """Grant a retry if the policy allows one and its back-off ends before the deadline."""
        if outcome == "reused-closed":
            outcome = "reset"
        if not retry.should_retry(outcome):
            if retry.retries:
                cluster.stats.upstream_rq_retry_exhausted += 1
            return False
        backoff = retry.next_backoff()
        if trio.current_time() + backoff >= deadline:
            return False
        cluster.stats.upstream_rq_retry += 1
        await trio.sleep(backoff)
        return True

    def _route_local_reply(
        self, match: Any, head: RequestHead, scheme: bytes, host: bytes, path: bytes, query: bytes, upgrade: bytes | None
    ) -> LocalReply | None:
        route = match.route
        if route.direct_response is not None:
            direct = route.direct_response
            return LocalReply(direct.status, direct.body, list(direct.headers))
        if route.redirect is not None:
            code, location = redirect_location(route, scheme, host, path, query)
            return LocalReply(code, b"", [(b"location", location)])
        if head.method == b"CONNECT" and not route.allow_connect:
            return LocalReply(403, b"CONNECT not allowed", flag=flags.LOCAL_RESET, close=True)
        if upgrade is not None and upgrade != b"connect" and upgrade not in route.allow_upgrades:
            return LocalReply(403, b"upgrade not allowed", close=True)
        return None

    def _upstream_head(
        self,
        stream: ServerStream,
        match: Any,
        host: bytes,
        path: bytes,
        query: bytes,
        upgrade: bytes | None,
        h2_upstream: bool,
        keep_te: bool = False,
    ) -> tuple[RequestHead, bytes | None]:
        """The request as the upstream gets it, built in one pass over the client's headers:
        hop-by-hop fields (and those Connection names) dropped, Expect dropped (the proxy
        answers 100-continue itself), X-Forwarded-* and Via set, Host rewritten if asked.
        The same pass notes a gRPC call (stream.grpc) and its grpc-timeout, returned."""
        head = stream.request
        xfcc = self.xfcc
        peer: Any = None  # the client's certificate, where XFCC depends on it
        if xfcc == _XFCC_SANITIZE:
            drop = _UPSTREAM_DROP_XFCC
        elif xfcc == _XFCC_ALWAYS_FORWARD:
            drop = _UPSTREAM_DROP
        else:
            tls = stream.info.tls
            peer = None if tls is None else tls.peer
            drop = _UPSTREAM_DROP_XFCC if peer is None or xfcc == _XFCC_SET else _UPSTREAM_DROP
        for name, value in head.headers:
            if len(name) == 10 and name.lower() == b"connection":
                named = {t.strip().lower() for t in value.split(b",")}
                named.discard(b"")
                drop = drop | named
        forwarded = self.forwarded
        route = match.route
        host_rewrite = route.host_rewrite
        headers = []
        xff = grpc_timeout = None
        has_host = has_forwarded_host = False
        for field in head.headers:
            lname = field[0].lower()
            if lname in drop:
                if (h2_upstream or keep_te) and lname == b"te" and field[1].strip().lower() == b"trailers":
                    headers.append((b"te", b"trailers"))  # HTTP/2 carries it (RFC 9113 §8.2.2): gRPC needs it
                continue
            if lname == b"host":
                if host_rewrite is not None:
                    continue
                has_host = True
            elif forwarded and lname in _FORWARDED:
                if lname == b"x-forwarded-for":
                    xff = field[1] if xff is None else xff + b", " + field[1]
                    continue
                if lname == b"x-forwarded-proto":
                    continue
                has_forwarded_host = True  # kept as the client sent it
            elif lname == b"content-type":
                if field[1][:16].lower() == grpc.CONTENT_TYPE:
                    stream.grpc = True
            elif lname == b"grpc-timeout":
                grpc_timeout = field[1]
            headers.append(field)
        if host_rewrite is not None:
            headers.insert(0, (b"host", host_rewrite))
        elif not has_host and host:
            headers.insert(0, (b"host", host))
        if upgrade is not None and upgrade != b"connect":
            headers.append((b"connection", b"upgrade"))
            headers.append((b"upgrade", http1.header_value(head.headers, b"upgrade") or upgrade))
            if upgrade == b"websocket" and head.http_version == b"2" and not h2_upstream and not _has_header(headers, b"sec-websocket-key"):
                # An RFC 8441 client sends no key (HTTP/2 needs none); an HTTP/1 server wants one.
                headers.append((b"sec-websocket-key", base64.b64encode(_rng.getrandbits(128).to_bytes(16, "big"))))
        if head.chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        if forwarded:
            ip = stream.downstream_address.encode()
            headers.append((b"x-forwarded-for", xff + b", " + ip if xff else ip))
            headers.append((b"x-forwarded-proto", stream.scheme))
            if host and not has_forwarded_host:
                headers.append((b"x-forwarded-host", host))
        if self.via:
            _append_header(headers, b"via", self.via)
        if peer is not None and xfcc >= _XFCC_APPEND:
            element: bytes = peer.xfcc_element(self.xfcc_details).encode()
            if xfcc == _XFCC_APPEND:
                _append_xfcc(headers, element)
            else:
                headers.append((_XFCC, element))
        if upgrade == b"connect":
            target = head.target  # a CONNECT's authority goes on as it came (it matched as path "/")
        else:
            target = path + b"?" + query if query else path
            if route.prefix_rewrite is not None or route.regex_rewrite is not None:
                target = rewrite_path(route, target)
        # Positional: a slotted dataclass built with keywords costs ~0.4 µs more.
        return RequestHead(head.method, target, b"1.1", headers, True, head.chunked, head.content_length, False, upgrade), grpc_timeout

    async def _read_body(self, stream: ServerStream, expect: bool) -> bytes:
        """Buffer the whole request body (small bodies of retried routes)."""
        if expect:
            await stream.send_continue()
        parts = []
        info = stream.info
        while True:
            event = await stream.receive_body()
            if type(event) is Body:
                data = event.data
                info.bytes_received += len(data)
                if self.chain.request_body:
                    result = await self.chain.run_request_body(stream, data, False)
                    if isinstance(result, LocalReply):
                        raise _LocalReplyRaised(result)
                    data = result
                parts.append(data)
            else:
                return b"".join(parts)

    async def _attempt(
        self,
        stream: ServerStream,
        cluster: Cluster,
        up_head: RequestHead,
        body: bytes | None,
        route: Any,
        fresh: bool,
        retry_on_reuse: bool,
        deadline_cap: float,
    ) -> tuple[UpstreamRequest, ResponseHead]:
        """One try: pick a host, get a connection, send the request, read the response head."""
        info = stream.info
        host = cluster.balancer.choose()
        if host is None:
            raise _UpstreamFailure("connect-failure", flags.NO_HEALTHY_UPSTREAM, "no healthy upstream")
        protocol: str = cluster.protocol
        try:
            if protocol == "auto":
                if host.protocol is None:
                    await self.pools.learn(host, cluster)  # (its first connection, by ALPN)
                protocol = host.protocol or "http1"
            if protocol == "http1" or (protocol == "downstream" and stream.info.protocol != "HTTP/2"):
                pool: Any = self.pools.pool(host, cluster)
            else:
                pool = self.pools.h2_pool(host, cluster)
            upstream = None if fresh else pool.take_idle()
            if upstream is not None:
                reused = True
            else:
                upstream, reused = await pool.acquire(fresh)
        except ConnectFailed as exc:
            info.upstream_transport_failure_reason = exc.reason
            host.stats.cx_connect_fail += 1
            cluster.stats.upstream_cx_connect_fail += 1
            connect_failed(host, cluster.name, exc.reason, self._now(), listener=self.name)
            raise _UpstreamFailure("connect-failure", flags.UPSTREAM_CONNECT_FAILURE, f"upstream connect error: {exc.reason}") from exc
        except PoolOverflow as overflow:
            raise _UpstreamFailure("overflow", flags.UPSTREAM_OVERFLOW, "upstream overflow") from overflow
        except OutOfDescriptors as no_fds:
            # The proxy's own limit, not the host's (network/fds.py): a 503 (gRPC:
            # RESOURCE_EXHAUSTED), not retried.
            self.stats.downstream_cx_fd_exhausted += 1
            raise _UpstreamFailure("overflow", flags.UPSTREAM_OVERFLOW, "upstream overflow: out of file descriptors") from no_fds
        info.upstream_host = str(host.address)
        info.upstream_local_address = upstream.local_address
        cstats = cluster.stats
        cstats.upstream_rq_total += 1
        cstats.upstream_rq_active += 1
        try:
            start = self._now()
            if route.request_mutations:
                # Applied per try, once the host is known: values may say %upstream_host%.
                up_head = _with_headers(up_head, list(up_head.headers))
                mutate_headers(up_head.headers, route.request_mutations, lambda template: template.render_bytes(info))
            if body is not None:
                await upstream.send_request(up_head, body)
            else:
                upstream.write_request(up_head, None)
                await upstream.flush()
                await self._stream_request_body(stream, upstream, route.timeout, deadline_cap)
            per_try = route.retry.per_try_timeout if route.retry is not None else None
            if per_try is None:
                response = await upstream.receive_head(reused and retry_on_reuse)
            else:
                with trio.CancelScope(deadline=trio.current_time() + per_try) as scope:
                    response = await upstream.receive_head(reused and retry_on_reuse)
                if scope.cancelled_caught:
                    cstats.upstream_rq_per_try_timeout += 1
                    raise _UpstreamFailure("timeout", flags.UPSTREAM_TIMEOUT, "upstream per-try timeout")
            info.upstream_service_time = self._now() - start
            return upstream, response
        except BaseException as failure:
            upstream.release(False)  # whatever went wrong, this connection is not reused
            if isinstance(failure, (ConnectionLost, StreamReset, ProtocolError)):
                cstats.upstream_rq_reset += 1
                if isinstance(failure, ReusedClosed):
                    raise _UpstreamFailure("reused-closed", flags.UPSTREAM_CONNECTION_TERMINATION, "upstream closed a reused connection") from failure
                flag = flags.UPSTREAM_PROTOCOL_ERROR if isinstance(failure, ProtocolError) else flags.UPSTREAM_CONNECTION_TERMINATION
                raise _UpstreamFailure("reset", flag, "upstream connect error or disconnect/reset before headers") from failure
            raise
        finally:
            cstats.upstream_rq_active -= 1

    async def _stream_request_body(self, stream: ServerStream, upstream: UpstreamRequest, timeout: float | None, cap: float) -> None:
        """Relay the request body as it comes; each chunk restarts the route timeout (capped
        by a gRPC deadline), so the timeout counts from the request's end."""
        if not stream.has_body:
            return
        if stream.request.expect_continue:
            await stream.send_continue()
        filters = self.chain.request_body
        info = stream.info
        while True:
            event = await stream.receive_body()
            if timeout:
                stream.set_deadline(min(self._now() + timeout, cap))
            if isinstance(event, Body):
                data = event.data
                info.bytes_received += len(data)
                if filters:
                    result = await self.chain.run_request_body(stream, data, False)
                    if isinstance(result, LocalReply):
                        raise _LocalReplyRaised(result)
                    data = result
                if data:
                    upstream.write_data(data)
                    await upstream.flush()
            else:
                upstream.write_end(event.trailers)
                await upstream.flush()
                return

    async def _relay_response(self, stream: ServerStream, upstream: UpstreamRequest, response: ResponseHead, upgrade: bytes | None) -> None:
        info = stream.info
        request = stream.request
        stream.response = response
        info.response = response
        complete = False
        try:
            if self.chain.response:
                await self.chain.run_response(stream)
            if (response.status == 101 and upgrade is not None) or (request.method == b"CONNECT" and 200 <= response.status < 300):
                info.response_code = response.status
                if await stream.start_tunnel(upstream, response):
                    complete = True  # (the tunnel owns the upstream now: nothing to release)
                    return
                raise Abort()

            headers = http1.strip_hop_by_hop(response.headers)
            _mutate_response(stream, headers)
            if self.via:
                _append_header(headers, b"via", self.via)
            response.headers = headers
            info.response_code = response.status
            if stream.grpc:
                info.grpc_status = grpc.status_of(headers)  # a trailers-only response has it here
            events = upstream.buffered()  # what came with the head: the head never waits for the body
            body_filters = self.chain.response_body
            if events and type(events[-1]) is EndOfMessage and len(events) <= 2 and not body_filters:
                # The whole response came in one read (the common case): one call, one send.
                data = events[0].data if len(events) == 2 else b""
                trailers = events[-1].trailers
                if trailers and stream.grpc:
                    info.grpc_status = grpc.status_of(trailers)
                await stream.respond(response, data, trailers)
                info.bytes_sent += len(data)
                complete = True
                upstream.release(True)
                return
            ended = len(events) == 1 and type(events[0]) is EndOfMessage and not events[0].trailers
            stream.write_response(response, ended)
            if ended:  # the head ends the response (HEAD, 204, 304): nothing more to write
                await stream.flush()
                complete = True
                upstream.release(True)
                return
            sent = 0
            while True:
                for event in events:
                    if type(event) is Body:
                        data = event.data
                        if body_filters:
                            data = await self.chain.run_response_body(stream, data, False)
                        if data:
                            sent += len(data)
                            stream.write_data(data)
                    else:
                        if event.trailers and stream.grpc:
                            info.grpc_status = grpc.status_of(event.trailers)
                        stream.write_end(event.trailers)
                        info.bytes_sent += sent
                        sent = 0
                        await stream.flush()  # the response's end: out with this pass's other sends
                        complete = True
                        upstream.release(True)
                        return
                await stream.flush()
                info.bytes_sent += sent
                sent = 0
                try:
                    events = await upstream.receive()
                except (ConnectionLost, StreamReset, ProtocolError) as exc:
                    # The upstream broke mid-response: the client cannot be told cleanly; cut it.
                    info.add_flag(flags.UPSTREAM_CONNECTION_TERMINATION)
                    log.debug("response.aborted", listener=self.name, error=repr(exc))
                    raise Abort() from exc
        except (ConnectionLost, StreamReset):
            info.add_flag(flags.DOWNSTREAM_CONNECTION_TERMINATION)  # the client went away
            raise Abort() from None
        finally:
            if not complete:
                upstream.release(False)

    # ------------------------------------------------------------------ local replies

    async def send_local_reply(self, stream: ServerStream, reply: LocalReply, upgrade: bool) -> None:
        """Answer the stream with a response made here, through the response filters."""
        info = stream.info
        if reply.flag:
            info.add_flag(reply.flag)
        self.stats.downstream_rq_local_reply += 1
        head, body = self.local_reply(stream, reply, upgrade)
        stream.response = head
        info.response = head
        if self.chain.response:
            await self.chain.run_response(stream)
        if stream.request.method == b"HEAD":
            body = b""
        stream.write_response(head, not body)
        if body:
            stream.write_data(body)
            info.bytes_sent += len(body)
            stream.write_end()
        await stream.flush()

    def local_reply(self, stream: ServerStream, reply: LocalReply, upgrade: bool = False) -> tuple[ResponseHead, bytes]:
        """The head and body of a local reply: Server, Content-Type, Content-Length, the
        reply's and the route's headers; gRPC-shaped for a gRPC call (HTTP 200, grpc-status,
        grpc-message, no body). Tells the codec whether the connection must end after it."""
        close = reply.close or upgrade or self.draining
        stream.reply_headers(close)
        info = stream.info
        out = [(b"server", self.server_name)]
        if stream.grpc or grpc.is_grpc(stream.request.headers):
            status = grpc.local_status(reply.status, reply.flag)
            info.grpc_status = status
            info.response_code = 200
            out.extend(grpc.reply_headers(status, reply.body))
            out.extend(reply.headers)
            _mutate_response(stream, out)
            return ResponseHead(200, b"", b"1.1", out, not close, False, None), b""
        info.response_code = reply.status
        if reply.body and not _has_header(reply.headers, b"content-type"):
            out.append((b"content-type", b"text/plain"))
        out.append((b"content-length", str(len(reply.body)).encode()))
        if reply.headers:
            out.extend(reply.headers)
        _mutate_response(stream, out)
        return ResponseHead(reply.status, b"", b"1.1", out, not close, False, len(reply.body)), reply.body

    @staticmethod
    def timeout_reply() -> LocalReply:
        return LocalReply(504, b"upstream request timeout", flag=flags.UPSTREAM_TIMEOUT)

    async def send_quietly(self, stream: ServerStream, reply: LocalReply) -> None:
        """A last answer after something broke (500, a bad body, a timeout): no filters, no
        counts, best effort, bounded in time."""
        head, body = self.local_reply(stream, reply)
        stream.response = head
        stream.info.response = head
        if stream.request.method == b"HEAD":
            body = b""
        try:
            with trio.move_on_after(5):
                stream.write_response(head, not body)
                if body:
                    stream.write_data(body)
                    stream.write_end()
                await stream.flush()
        except (ConnectionLost, StreamReset):
            pass

    # ------------------------------------------------------------------ bookkeeping

    def count_status(self, status: int) -> None:
        stats = self.stats
        codes = stats.downstream_rq_code
        codes[status] = codes.get(status, 0) + 1
        klass = status // 100
        if klass == 2:
            stats.downstream_rq_2xx += 1
        elif klass == 4:
            stats.downstream_rq_4xx += 1
        elif klass == 5:
            stats.downstream_rq_5xx += 1
        elif klass == 3:
            stats.downstream_rq_3xx += 1
        elif klass == 1:
            stats.downstream_rq_1xx += 1

    def log_access(self, info: StreamInfo) -> None:
        for logger in self.access_logs:
            logger.log(info)


_rng = random.Random()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.lower().encode()
    except ValueError:
        return b"error"


def _new_request_id() -> bytes:
    """A random UUID-shaped id. uuid4() reads os.urandom per call (a syscall, ~17 % of a
    direct-response request's CPU); a request id needs uniqueness, not secrecy."""
    h = _rng.getrandbits(128).to_bytes(16, "big").hex()  # 0.67 µs; an f"{:032x}" 0.94
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()


def _has_header(headers: list[tuple[bytes, bytes]], name: bytes) -> bool:
    return any(n.lower() == name for n, _ in headers)


def _mutate_response(stream: ServerStream, headers: list[tuple[bytes, bytes]]) -> None:
    """The matched route's response header adds and removes (route, vhost, table levels)."""
    match = stream.route
    if match is not None and match.route.response_mutations:
        info = stream.info
        mutate_headers(headers, match.route.response_mutations, lambda template: template.render_bytes(info))


def _with_headers(head: RequestHead, headers: list[tuple[bytes, bytes]]) -> RequestHead:
    return RequestHead(
        method=head.method,
        target=head.target,
        http_version=head.http_version,
        headers=headers,
        keep_alive=head.keep_alive,
        chunked=head.chunked,
        content_length=head.content_length,
        expect_continue=head.expect_continue,
        upgrade=head.upgrade,
    )


def _failure_status(flag: str) -> int:
    if flag in (flags.UPSTREAM_OVERFLOW, flags.NO_HEALTHY_UPSTREAM):
        return 503
    if flag == flags.UPSTREAM_TIMEOUT:
        return 504
    return 502


def request_target(head: RequestHead) -> tuple[bytes, bytes, bytes]:
    """(host, path, query) of a request: Host header, or the authority of an absolute-form target."""
    target = head.target
    host = http1.header_value(head.headers, b"host") or b""
    if target[:1] != b"/":
        if b"://" in target:
            scheme_end = target.index(b"://") + 3
            slash = target.find(b"/", scheme_end)
            authority = target[scheme_end:] if slash < 0 else target[scheme_end:slash]
            target = b"/" if slash < 0 else target[slash:]
            host = authority.rpartition(b"@")[2] or host
        elif head.method == b"CONNECT":
            return target, b"/", b""  # authority-form: routes match CONNECT as path "/"
    path, _, query = target.partition(b"?")
    return host, path, query


def _append_xfcc(headers: list[tuple[bytes, bytes]], element: bytes) -> None:
    """The client's XFCC elements (from every field of that name), then ours; `,` between
    elements, as Envoy joins them."""
    before = [v for n, v in headers if n.lower() == _XFCC]
    if before:
        headers[:] = [(n, v) for n, v in headers if n.lower() != _XFCC]
        element = b",".join([*before, element])
    headers.append((_XFCC, element))


def _append_header(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> None:
    for i, (n, v) in enumerate(headers):
        if n.lower() == name:
            headers[i] = (n, v + b", " + value)
            return
    headers.append((name, value))
