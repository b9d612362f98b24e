# -*- test-case-name: mtlsd.test.test_http -*-
"""
The daemon's HTTP forwarding mode (C{--forward-http}): HTTP/1.1 from each
admitted client, parsed with h11, forwarded to a plaintext backend with the
client's identity in request headers (L{mtlsd._httpidentity}), and the
backend's answers relayed back, streaming both ways with back-pressure.

Each client connection has at most one backend connection, made at its
first request and kept while both sides keep their connections alive; h11
holds pipelined requests until the answer before them is complete, so they
are answered in order.  After a backend's C{101 Switching Protocols}
(WebSocket), both connections relay bytes as they come.
"""

from __future__ import annotations

from typing import Any

import h11
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IProtocolNegotiationFactory,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._address import formatAddress, noDelay
from ._events import emit, serviceField
from ._halfclose import closeWriting
from ._httpidentity import Header, HTTPIdentity, headerName
from ._relay import OutboundConnector, writeNow
from ._server import _commonName

log = Logger(namespace="mtlsd")

MAX_HEAD = 64 * 1024
"""
The longest request (or response) head: a longer one is answered 431.
"""

# Connection-specific headers (RFC 9110, 7.6.1), not forwarded: each hop
# has its own.  A message's framing is rewritten by h11 from what it read.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"content-length",
        b"upgrade",
    }
)

NOT_TLS_BODY = (
    b"This is an HTTPS port, and it requires a client certificate: connect with https://"
    b" and present your certificate.\n"
)
NOT_TLS_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(NOT_TLS_BODY), NOT_TLS_BODY)
)

_REASONS = {
    400: b"Bad Request",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
}
_BODIES = {
    400: b"Bad request: this is not HTTP/1.1 that mtlsd can read.\n",
    431: b"Request header fields too large.\n",
    501: b"Not implemented: unsupported transfer coding.\n",
    502: b"Bad gateway: the backend is unavailable.\n",
}


def _framing(headers: list[tuple[bytes, bytes]]) -> list[Header]:
    """
    The framing headers to forward with a message h11 read: chunked if it
    was chunked (C{Transfer-Encoding} beats C{Content-Length}), else its
    length; neither for a message without a body or read until the close.
    """
    names = {name for name, _ in headers}
    if b"transfer-encoding" in names:
        return [(b"Transfer-Encoding", b"chunked")]
    for name, value in headers:
        if name == b"content-length":
            return [(b"Content-Length", value)]
    return []


def _nextHop(
    message: Any, stripped: frozenset[bytes] = frozenset()
) -> tuple[list[Header], list[str]]:
    """
    The headers of a message h11 read, for the next hop: without the
    connection-specific ones (C{Connection} and those it names, RFC 9110
    7.6.1) and those whose L{headerName} is in C{stripped}; then the
    message's framing, and its upgrade if it asks for one (or agrees to).

    @return: those headers, and the (lowercase) names of the stripped ones.
    """
    lowered = list(message.headers)  # h11 gives the names lowercase
    tokens = {
        token.strip().lower()
        for name, value in lowered
        if name == b"connection"
        for token in value.split(b",")
    }
    dropped = tokens | _HOP_BY_HOP
    kept: list[Header] = []
    removed: list[str] = []
    upgrades: list[Header] = []
    for (name, value), (lower, _) in zip(message.headers.raw_items(), lowered, strict=True):
        if headerName(lower) in stripped:
            removed.append(lower.decode("ascii", "replace"))
        elif lower not in dropped:
            kept.append((name, value))
        elif lower == b"upgrade":
            upgrades.append((name, value))
    kept += _framing(lowered)
    if upgrades and b"upgrade" in tokens:
        kept += [(b"Connection", b"upgrade"), *upgrades]
    return kept, removed


def _takeAll(out: list[bytes]) -> bytes:
    """
    The pieces in C{out}, joined, and C{out} emptied.
    """
    data = out[0] if len(out) == 1 else b"".join(out)
    out.clear()
    return data


@implementer(IPushProducer)
class _Reads:
    """
    Reading from one transport, paused while any of several reasons holds
    (the other side's buffer is full, h11 holds a pipelined request, the
    backend is being connected).
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self._reasons:
            self._transport.pauseProducing()
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._reasons:
            self._reasons.discard(reason)
            if not self._reasons:
                self._transport.resumeProducing()

    # As the producer the backend's transport is given: its buffer.

    def pauseProducing(self) -> None:
        self.pause("backend")

    def resumeProducing(self) -> None:
        self.resume("backend")

    def stopProducing(self) -> None:
        pass  # the backend's connection is lost: the client side hears of it itself


@implementer(IHalfCloseableProtocol)
class _Backend(Protocol):
    """
    The connection to the backend, for one client connection.
    """

    transport: Any
    tunnel = False

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self._out: list[bytes] = []

    def connectionMade(self) -> None:
        self.client._connected(self)

    def send(self, event: Any) -> None:
        """
        Send an h11 event, at the next L{flush}: the pieces of a request
        leave in one write.
        """
        data = self.h11.send(event)
        if data:
            self._out.append(data)

    def flush(self) -> None:
        if self._out and self.transport is not None:
            writeNow(self.transport, _takeAll(self._out))

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel:
            self.client.relay(data)
            return
        self.h11.receive_data(data)
        self._next()

    def _next(self) -> None:
        try:
            self._events()
        finally:
            self.client.flush()

    def _events(self) -> None:
        client = self.client
        while client.backend is self:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                client._backendFailed(f"malformed response: {e}")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Data):
                client._answer(h11.Data(data=event.data))
            elif isinstance(event, (h11.Response, h11.InformationalResponse)):
                client._response(event)
            elif isinstance(event, h11.EndOfMessage):
                client._answered()
            else:  # ConnectionClosed
                return

    def readConnectionLost(self) -> None:
        if self.tunnel:
            self.client.tunnelClosed()
            return
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.tunnel and self.client.backend is self:
            if self.h11.their_state is h11.SEND_RESPONSE:
                # Our request went out; not a byte of an answer came back.
                self.client._backendFailed("the backend closed the connection without answering")
            else:
                # A body read until the close ends here.
                self.h11.receive_data(b"")
                self._next()
        self.client._backendLost(self)


@implementer(IHalfCloseableProtocol)
class _Client(Protocol):
    """
    One admitted client's connection: requests in, answers out.
    """

    transport: Any
    backend: _Backend | None = None
    _connecting = False
    _tunnel = False
    _warned = False
    _held: Any = None  # a request waiting for its backend connection
    _status = 0
    _closed = False

    def __init__(self, factory: HTTPForwardFactory) -> None:
        self.factory = factory
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._out: list[bytes] = []

    def connectionMade(self) -> None:
        certificate, chain = self.transport.peer()  # the gate's: remembered when resumed
        peer = self.transport.getPeer()
        self._added = self.factory.identity.headers(certificate, chain, peer)
        self._clientText = formatAddress(peer)
        self._commonName = _commonName(certificate)
        self._reads = _Reads(self.transport)

    # Requests

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel:
            assert self.backend is not None and self.backend.transport is not None
            writeNow(self.backend.transport, data)
            return
        self.h11.receive_data(data)
        self._next()

    def _next(self) -> None:
        try:
            self._events()
        finally:
            if self.backend is not None:
                self.backend.flush()

    def _events(self) -> None:
        while not self._connecting and not self._closed and not self._tunnel:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                # Not a request that can be named in the log.
                self._method = self._target = b"-"
                self._startedAt = self.factory.clock.seconds()
                self._refuse(e.error_status_hint)
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                # The next (pipelined) request waits for this one's answer.
                self._reads.pause("pipelined")
                return
            if isinstance(event, h11.Data):
                self._forward(h11.Data(data=event.data))
            elif isinstance(event, h11.Request):
                self._request(event)
            elif isinstance(event, h11.EndOfMessage):
                # Trailers are not forwarded: a backend could take one for
                # a header, and mtlsd checks only headers.
                self._forward(h11.EndOfMessage())
            else:  # ConnectionClosed
                self._close()
                return

    def _request(self, request: h11.Request) -> None:
        self._method = request.method
        self._target = request.target
        self._startedAt = self.factory.clock.seconds()
        self._status = 0
        if len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers) > MAX_HEAD:
            # h11 bounds a head still arriving; this one came whole.
            self._refuse(431)
            return
        headers, forged = _nextHop(request, self.factory.stripped)
        if forged and not self._warned:
            self._warned = True
            emit(
                log,
                "forged-headers",
                **self.factory.serviceField,
                client=self._clientText,
                commonName=self._commonName,
                headers=", ".join(sorted(set(forged))),
            )
        if not any(name == b"host" for name, _ in request.headers):
            headers.append((b"Host", self.factory.backendHost))  # an HTTP/1.0 client's request
        headers += self._added
        forwarded = h11.Request(method=request.method, target=request.target, headers=headers)
        if self.backend is not None:
            if self.backend.h11.our_state is h11.IDLE:
                self.backend.send(forwarded)
                return
            self._dropBackend()
        self._held = forwarded
        self._connecting = True
        self._reads.pause("connecting")
        self.factory.connector.connect(lambda: _Backend(self), self._unavailable)

    def _forward(self, event: Any) -> None:
        backend = self.backend
        if backend is not None and backend.h11.our_state is h11.SEND_BODY:
            backend.send(event)

    def _connected(self, backend: _Backend) -> None:
        assert backend.transport is not None
        if self._closed:
            backend.transport.loseConnection()
            return
        self.backend = backend
        self._connecting = False
        noDelay(backend.transport)  # a body after its head must not wait for an ACK
        backend.transport.registerProducer(self._reads, True)
        self.transport.registerProducer(backend.transport, True)
        backend.send(self._held)
        self._held = None
        self._reads.resume("connecting")
        self._next()

    def _unavailable(self, failure: Failure) -> None:
        self._connecting = False
        emit(
            log,
            "backend-unavailable",
            **self.factory.serviceField,
            error=failure.getErrorMessage(),
            client=self._clientText,
        )
        self._refuse(502)

    # Answers

    def _response(self, response: h11.Response | h11.InformationalResponse) -> None:
        headers, _ = _nextHop(response)
        code = response.status_code
        if isinstance(response, h11.InformationalResponse):
            self._answer(
                h11.InformationalResponse(status_code=code, headers=headers, reason=response.reason)
            )
            if code == 101:
                self._switch()
            return
        self._status = code
        self._answer(h11.Response(status_code=code, headers=headers, reason=response.reason))

    def _answer(self, event: Any) -> None:
        """
        Send an h11 event to the client, at the next L{flush}: what one
        read from the backend gave leaves in one write.
        """
        try:
            data = self.h11.send(event)
        except h11.LocalProtocolError as e:
            self._backendFailed(f"cannot forward its answer: {e}")
            return
        if data:
            self._out.append(data)

    def flush(self) -> None:
        if self._out:
            self.transport.write(_takeAll(self._out))

    def _answered(self) -> None:
        """
        The backend's answer is complete: the next request, if both
        connections can go on.
        """
        self._answer(h11.EndOfMessage())
        self._logRequest()
        backend = self.backend
        assert backend is not None
        if backend.h11.our_state is h11.DONE and backend.h11.their_state is h11.DONE:
            backend.h11.start_next_cycle()
        else:
            self._dropBackend()
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            self._reads.resume("pipelined")
            self._next()
        elif not self._closed:
            # HTTP/1.0, Connection: close, or an answer before the request's
            # end: this connection is done.
            self._close()

    def _switch(self) -> None:
        """
        After the backend's 101: bytes both ways, beginning with those each
        side sent after its head.
        """
        self._logRequest(101)
        self.flush()
        backend = self.backend
        assert backend is not None and backend.transport is not None
        self._tunnel = backend.tunnel = True
        ours, _ = self.h11.trailing_data
        theirs, _ = backend.h11.trailing_data
        if theirs:
            self.transport.write(theirs)
        if ours:
            writeNow(backend.transport, ours)
        self._reads.resume("pipelined")

    def relay(self, data: bytes) -> None:
        """
        Bytes from the backend, after a protocol switch.
        """
        self.transport.write(data)

    def tunnelClosed(self) -> None:
        """
        The backend closed its direction, after a protocol switch.
        """
        closeWriting(self.transport)

    def _logRequest(self, status: int | None = None) -> None:
        emit(
            log,
            "http-request",
            **self.factory.serviceField,
            client=self._clientText,
            commonName=self._commonName,
            method=self._method.decode("ascii", "replace"),
            path=self._target.partition(b"?")[0].decode("ascii", "replace"),
            status=status or self._status,
            duration=self.factory.clock.seconds() - self._startedAt,
        )

    # Failures

    def _refuse(self, status: int) -> None:
        """
        Answer with an error (a malformed request, a backend that is down)
        if no answer has begun, and close.
        """
        self.flush()
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = _BODIES.get(status, _BODIES[400])
            status = status if status in _BODIES else 400
            self._status = status
            headers = [
                (b"Content-Type", b"text/plain; charset=utf-8"),
                (b"Content-Length", b"%d" % len(body)),
                (b"Connection", b"close"),
            ]
            try:
                self.transport.write(
                    self.h11.send(
                        h11.Response(status_code=status, headers=headers, reason=_REASONS[status])
                    )
                    + self.h11.send(h11.Data(data=body))
                    + self.h11.send(h11.EndOfMessage())
                )
            except h11.LocalProtocolError:
                pass
            else:
                self._logRequest()
            self._close()
        else:
            self.transport.abortConnection()  # an answer cut short must not look complete

    def _backendFailed(self, error: str) -> None:
        emit(
            log,
            "backend-unavailable",
            **self.factory.serviceField,
            error=error,
            client=self._clientText,
        )
        self._dropBackend()
        self._refuse(502)

    def _backendLost(self, backend: _Backend) -> None:
        if backend is not self.backend:
            return
        self.backend = None
        if self._tunnel:
            self.transport.loseConnection()
            return
        self.transport.unregisterProducer()
        self._reads.resume("backend")
        if self.h11.our_state is h11.SEND_RESPONSE or self.h11.our_state is h11.SEND_BODY:
            self._backendFailed("the backend closed the connection before its answer was complete")

    def _dropBackend(self) -> None:
        backend, self.backend = self.backend, None
        if backend is not None and backend.transport is not None:
            self.transport.unregisterProducer()
            backend.transport.unregisterProducer()
            self._reads.resume("backend")
            backend.transport.loseConnection()

    def _close(self) -> None:
        self.flush()
        self._closed = True
        self._dropBackend()
        self.transport.loseConnection()

    # The client's side closing

    def readConnectionLost(self) -> None:
        if self._tunnel:
            assert self.backend is not None and self.backend.transport is not None
            closeWriting(self.backend.transport)
            return
        self.h11.receive_data(b"")
        self._next()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        backend, self.backend = self.backend, None
        if backend is not None and backend.transport is not None:
            backend.transport.loseConnection()


@implementer(IProtocolNegotiationFactory)
class HTTPForwardFactory(Factory):
    """
    The application of C{--forward-http}: forwards each admitted client's
    HTTP requests to C{backend}, with its identity in headers.

    @ivar notTLSAnswer: what a plain-HTTP request to the TLS port is
        answered (the TLS transports send it).
    """

    noisy = False
    notTLSAnswer = NOT_TLS_ANSWER

    def __init__(
        self,
        backend: IStreamClientEndpoint,
        identity: HTTPIdentity,
        backendHost: bytes = b"localhost",
        clock: Any = None,
        service: str | None = None,
    ) -> None:
        """
        @param backend: where requests go.
        @param identity: the identity headers to set.
        @param backendHost: the C{Host} of a request that has none (an
            HTTP/1.0 client's).
        @param clock: the time source of the request durations.
        @param service: the daemon's service it forwards for, named in the
            events.
        """
        self.serviceField = serviceField(service)
        if clock is None:
            from twisted.internet import reactor as clock
        self.connector = OutboundConnector(backend)
        self.identity = identity
        self.stripped = identity.stripped()
        self.backendHost = backendHost
        self.clock = clock

    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]

    def buildProtocol(self, addr: Any) -> _Client:
        return _Client(self)
