# -*- test-case-name: mtlsd.test.test_relay -*-
"""
Relaying a connection to another one: the daemon's C{--forward} (mutual TLS
in, plaintext to a backend) and C{mtlsd tunnel} (plaintext in, mutual TLS
out).  Both directions are relayed with Twisted's producers and consumers,
so a slow side pauses the other instead of filling memory, and a half-close
on one side becomes a half-close on the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp, unix
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IProtocol,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._address import formatAddress, noDelay
from ._events import emit, serviceField
from ._halfclose import closeWriting
from ._sockettls import sendNow
from ._tls import IWritesInBulk

log = Logger(namespace="mtlsd")

Preamble = Callable[[ITransport], bytes]
"""
Bytes to send to the outbound side before anything else (a PROXY protocol
header), made from the inbound transport.
"""


def writeNow(transport: ITransport, data: bytes) -> None:
    """
    Write C{data} to C{transport}; a plain TCP or UNIX socket sends it now
    when nothing is queued (L{sendNow}), rather than at the next reactor turn
    (a turn of latency, and a writer added and removed, for every relayed
    piece).
    """
    if type(transport) in _PLAIN_SOCKETS and not getattr(transport, "_sendmsgQueue", None):
        sendNow(transport, data)  # type: ignore[arg-type]
    else:
        transport.write(data)


_PLAIN_SOCKETS = (tcp.Client, tcp.Server, unix.Client, unix.Server)


@implementer(IHalfCloseableProtocol)
class _Side(Protocol):
    """
    One side of a relay; C{other} is the side it relays to.
    """

    other: _Side | None = None
    serviceField: dict[str, Any] = {}  # noqa: RUF012  (replaced per instance, never changed)
    readClosed = False
    closed = False
    outbound = True

    def dataReceived(self, data: bytes) -> None:
        assert self.other is not None and self.other.transport is not None
        writeNow(self.other.transport, data)

    def readConnectionLost(self) -> None:
        self.readClosed = True
        if self.other is not None and not self.other.closed:
            assert self.other.transport is not None
            closeWriting(self.other.transport)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        if self.outbound and not reason.check(ConnectionDone):
            emit(
                log,
                "outbound-lost",
                **self.serviceField,
                error=reason.getErrorMessage(),
            )
        other = self.other
        if other is not None and not other.closed and other.transport is not None:
            other.transport.unregisterProducer()  # type: ignore[attr-defined]
            other.transport.loseConnection()


class _Inbound(_Side):
    """
    The accepted connection: it waits, paused, for the outbound connection.
    """

    outbound = False

    def __init__(self, relay: RelayFactory) -> None:
        self.relay = relay
        self.serviceField = relay.serviceField
        self._early: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        if self.other is None:
            # Decrypted with the handshake, before we could pause.
            self._early.append(data)
        else:
            super().dataReceived(data)

    def readConnectionLost(self) -> None:
        self.readClosed = True
        if self.other is not None:
            super().readConnectionLost()

    def connectionMade(self) -> None:
        assert self.transport is not None
        try:
            self._preamble = self.relay.preamble(self.transport)
        except ValueError as e:
            emit(
                log,
                "proxy-header-error",
                **self.serviceField,
                client=formatAddress(self.transport.getPeer()),
                error=str(e),
            )
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self.transport.pauseProducing()  # type: ignore[attr-defined]
        self.relay.connectOutbound(self)

    def _connected(self, outbound: IProtocol) -> None:
        assert isinstance(outbound, _Side) and outbound.transport is not None
        assert self.transport is not None
        if self.closed:
            outbound.transport.loseConnection()
            return
        self.other = outbound
        noDelay(outbound.transport)
        noDelay(self.transport)
        outbound.transport.writeSequence([self._preamble, *self._early])
        self._early = []
        self.transport.registerProducer(outbound.transport, True)  # type: ignore[attr-defined]
        if self.readClosed:
            closeWriting(outbound.transport)
            return
        outbound.transport.registerProducer(self.transport, True)  # type: ignore[attr-defined]
        self.transport.resumeProducing()  # type: ignore[attr-defined]

    def _unavailable(self, failure: Failure) -> None:
        assert self.transport is not None
        emit(
            log,
            "backend-unavailable",
            **self.serviceField,
            error=failure.getErrorMessage(),
            client=formatAddress(self.transport.getPeer()),
        )
        # Aborted, not closed: the client must not take an empty answer for
        # the backend's.
        self.transport.abortConnection()  # type: ignore[attr-defined]


class _Outbound(_Side):
    """
    The outbound side, which tells the inbound side when it is connected.
    """

    def __init__(self, inbound: _Inbound) -> None:
        self.other = inbound
        self.serviceField = inbound.serviceField

    def connectionMade(self) -> None:
        assert isinstance(self.other, _Inbound)
        self.other._connected(self)


@implementer(IWritesInBulk)  # the tunnel's outbound side is TLS
class _OutboundFactory(ClientFactory):
    """
    Builds the protocol of one outbound connection.
    """

    noisy = False

    def __init__(self, build: Callable[[], IProtocol], failed: Callable[[Failure], None]) -> None:
        self._build = build
        self._failed = failed

    def buildProtocol(self, addr: IAddress | None) -> IProtocol:  # type: ignore[override]
        return self._build()

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self._failed(reason)


def _directConnector(endpoint: IStreamClientEndpoint) -> Callable[[ClientFactory], object] | None:
    """
    For a TCP (IPv4 or a name) or UNIX client endpoint on a real reactor, a
    function connecting a client factory as the endpoint would.
    """
    if isinstance(endpoint, TCP4ClientEndpoint):
        tcpEndpoint = endpoint
        if isinstance(tcpEndpoint._reactor, PosixReactorBase):
            return lambda factory: tcpEndpoint._reactor.connectTCP(
                tcpEndpoint._host,
                tcpEndpoint._port,
                factory,
                timeout=tcpEndpoint._timeout,
                bindAddress=tcpEndpoint._bindAddress,
            )
    if isinstance(endpoint, UNIXClientEndpoint):
        unixEndpoint = endpoint
        if isinstance(unixEndpoint._reactor, PosixReactorBase):
            return lambda factory: unixEndpoint._reactor.connectUNIX(
                unixEndpoint._path,
                factory,
                timeout=unixEndpoint._timeout,
                checkPID=unixEndpoint._checkPID,
            )
    return None


class OutboundConnector:
    """
    Connects protocols to a backend, for the relay and the HTTP mode.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        """
        @param endpoint: the backend.
        """
        self._endpoint = endpoint
        self._direct = _directConnector(endpoint)

    def connect(self, build: Callable[[], IProtocol], failed: Callable[[Failure], None]) -> None:
        """
        Connect a protocol C{build} makes (its C{connectionMade} says it is
        connected), or call C{failed} with why it could not be.  A TCP or
        UNIX endpoint on a real reactor is connected as the endpoint would,
        without its wrapping protocol (a layer on every byte from the
        backend) and Deferreds.
        """
        factory = _OutboundFactory(build, failed)
        if self._direct is not None:
            self._direct(factory)
        else:
            self._endpoint.connect(factory).addErrback(failed)


@implementer(IWritesInBulk)
class RelayFactory(Factory):
    """
    Builds the inbound side of a relay for each accepted connection.
    """

    noisy = False

    def __init__(
        self,
        outbound: IStreamClientEndpoint,
        preamble: Preamble | None = None,
        service: str | None = None,
    ) -> None:
        """
        @param outbound: where each connection is relayed to.
        @param preamble: makes the bytes sent first to C{outbound}.
        @param service: the daemon's service it relays for, named in the
            events.
        """
        self.serviceField = serviceField(service)
        self._connector = OutboundConnector(outbound)
        self._preamble = preamble

    def connectOutbound(self, inbound: _Inbound) -> None:
        """
        Connect the outbound side of C{inbound}, which is told how it went
        (C{_connected} or C{_unavailable}).
        """
        self._connector.connect(lambda: _Outbound(inbound), inbound._unavailable)

    def preamble(self, transport: ITransport) -> bytes:
        return b"" if self._preamble is None else self._preamble(transport)

    def buildProtocol(self, addr: IAddress | None) -> _Inbound:
        return _Inbound(self)
