# -*- test-case-name: mtlsd.test.test_server -*-
"""
The path of one server connection: Twisted's TLS layer, then a gate that
starts the application protocol only once the client's certificate has
verified, and logs every connection's fate.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any, cast

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    ISSLTransport,
    ISystemHandle,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import (
    TLSMemoryBIOFactory,
    TLSMemoryBIOProtocol,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from ._address import formatAddress, noDelay, unixClient
from ._admission import Admitted, Verdict
from ._context import ServerContext
from ._events import emit, serviceField
from ._halfclose import HalfCloseForwarding
from ._policy import ALLOW_KINDS
from ._reasons import (
    CLOSED_BEFORE_ADMISSION,
    CLOSED_BEFORE_HANDSHAKE,
    HANDSHAKE_TIMEOUT,
    NO_SERVICE,
    handshakeFailureReason,
)
from ._tls import TLSFactory
from ._verify import VerifyFailure

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
# Twisted's default listen backlog is 50: a burst of connections beyond it
# waits for TCP's SYN retransmission (a second or more).  The kernel caps it
# at net.core.somaxconn.
DEFAULT_BACKLOG = 1024
# Bytes a client may send while its admission is pending before it is paused.
EARLY_LIMIT = 64 * 1024

log = Logger(namespace="mtlsd")


@frozen
class _Peer:
    """
    What the logs say of an admitted client.
    """

    commonName: str | None
    fingerprint: str
    serial: int
    uris: tuple[str, ...]


def _presented(
    connection: SSL.Connection, context: ServerContext
) -> tuple[x509.Certificate, tuple[x509.Certificate, ...], bool]:
    """
    The client certificate of a connection whose handshake completed, the
    intermediates sent with it, and whether the session was resumed (then
    OpenSSL has no chain: a resumed client sends no certificates; its
    intermediates are those of its last full handshake).
    """
    certificate = connection.get_peer_certificate(as_cryptography=True)
    assert certificate is not None
    sent = connection.get_peer_cert_chain(as_cryptography=True)
    if sent is None:
        return certificate, context.sessions.chainOf(certificate), True
    return certificate, tuple(c for c in sent if c != certificate), False


def _uris(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(names.get_values_for_type(x509.UniformResourceIdentifier))


def _commonName(certificate: x509.Certificate) -> str | None:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    certificate.extensions  # noqa: B018 - parsed now, so a malformed one fails closed here
    return str(names[0].value) if names else None


class ConnectionLimits:
    """
    Limits on connections, shared by every listener of a daemon: how many
    at once (in all, and per client IP address), how long a handshake may
    take, how long a connection may stay idle, and how long it may live.
    C{None} means no limit.
    """

    def __init__(
        self,
        handshakeTimeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        idleTimeout: float | None = None,
        maxLifetime: float | None = None,
        maxConnections: int | None = None,
        maxPerAddress: int | None = None,
    ) -> None:
        """
        @param handshakeTimeout: seconds a client has to complete the TLS
            handshake (and its admission).
        @param idleTimeout: seconds without a byte either way before an
            admitted connection is closed.
        @param maxLifetime: seconds an admitted connection may live.
        @param maxConnections: connections at once; beyond, a new one is
            closed at once (logged C{refused}).
        @param maxPerAddress: the same, per client IP address.
        """
        self.handshakeTimeout = handshakeTimeout
        self.idleTimeout = idleTimeout
        self.maxLifetime = maxLifetime
        self.maxConnections = maxConnections
        self.maxPerAddress = maxPerAddress
        self.active = 0
        self._perAddress: dict[str, int] = {}

    def admit(self, host: str) -> str | None:
        """
        Count a new connection from C{host}, or refuse it.

        @return: L{None} if admitted (then L{release} it when it ends), else
            the limit it would exceed.
        """
        if self.maxConnections is not None and self.active >= self.maxConnections:
            return "max-connections"
        if self.maxPerAddress is not None and self._perAddress.get(host, 0) >= self.maxPerAddress:
            return "max-connections-per-ip"
        self.active += 1
        self._perAddress[host] = self._perAddress.get(host, 0) + 1
        return None

    def release(self, host: str) -> None:
        """
        A connection admitted from C{host} ended.
        """
        self.active -= 1
        left = self._perAddress[host] - 1
        if left:
            self._perAddress[host] = left
        else:
            del self._perAddress[host]


# As the application's transport, a gate is an SSL transport (declared for
# the class: a per-connection declaration costs time and memory).
@implementer(IHandshakeListener, IHalfCloseableProtocol, ISSLTransport, INegotiated, ISystemHandle)
class _GateProtocol(HalfCloseForwarding, ProtocolWrapper):
    """
    Sits between the TLS layer and the application protocol.  The
    application protocol is built and connected only when the handshake has
    completed, that is when OpenSSL verified the client's certificate; until
    then a handshake timeout runs.  Its transport is this gate, which passes
    everything through to the TLS transport (so it provides
    L{twisted.internet.interfaces.ISSLTransport}) and counts bytes.
    """

    factory: _GateFactory
    wrappedProtocol: IProtocol | None  # type: ignore[assignment]

    # Per-connection state starts as these class attributes: an instance
    # holds only what its connection set (thousands are held at once).
    _timeout: IDelayedCall | None = None
    _timedOut = False
    _admitted = False
    _idle: IDelayedCall | None = None
    _lifetime: IDelayedCall | None = None
    _refusal: tuple[str, dict[str, object]] | None = None
    _pending: Deferred[Verdict] | None = None
    _early: list[bytes] | None = None  # received while the verdict was pending
    _earlyEnd = False  # the client closed its direction meanwhile
    _earlyPaused = False
    _followed = False
    _lost = False
    peerNotAfter = datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)
    _peer: _Peer | None = None
    _unixClient: str | None = None
    _startedAt = 0.0
    bytesIn = 0
    bytesOut = 0

    def __init__(self, factory: _GateFactory, address: IAddress) -> None:
        self.factory = factory
        self.wrappedProtocol = None
        self._address = address

    @property
    def _client(self) -> str:
        """
        The client's address as the logs give it: asked of the transport
        each time, because behind a C{haproxy:} endpoint it becomes the real
        client's only once the PROXY header has been read.  (A UNIX
        socket's client is described once, at the start: its socket is gone
        by the time a rejection is logged.)
        """
        if self.transport is None:
            return formatAddress(self._address)
        peer = self._tls.getPeer()
        if isinstance(peer, UNIXAddress) and not peer.name and self._unixClient is not None:
            return self._unixClient
        return formatAddress(peer)

    @property
    def _tls(self) -> TLSMemoryBIOProtocol:
        return cast(TLSMemoryBIOProtocol, self.transport)

    def makeConnection(self, transport: object) -> None:
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)

    def connectionMade(self) -> None:
        # The admission (the settings) OpenSSL will verify this client with.
        self._startedUnder = self.factory.context.admission
        peer = self._tls.getPeer()
        if isinstance(peer, UNIXAddress) and not peer.name:
            self._unixClient = unixClient(self._tls)
        clock, limits = self.factory.clock, self.factory.limits
        self._startedAt = clock.seconds()
        self._host = getattr(self._address, "host", "") or ""
        refused = limits.admit(self._host)
        if refused is not None:
            emit(
                log,
                "refused",
                **self.factory.serviceField,
                client=self._client,
                limit=refused,
            )
            self._tls.abortConnection()
            return
        self._admitted = True
        noDelay(self._tls)
        self._timeout = clock.callLater(limits.handshakeTimeout, self._handshakeTimedOut)

    def _handshakeTimedOut(self) -> None:
        self._timeout = None
        self._timedOut = True
        self._tls.abortConnection()

    def _cancelTimeout(self) -> None:
        for name in ("_timeout", "_idle", "_lifetime"):
            timer = getattr(self, name)
            if timer is not None and timer.active():
                timer.cancel()
            setattr(self, name, None)

    def _resetIdle(self) -> None:
        if self._idle is not None:
            self._idle.reset(self.factory.limits.idleTimeout)  # type: ignore[arg-type]

    def _limitReached(self, limit: str) -> None:
        self._cancelTimeout()  # the other limit's timer too
        emit(
            log,
            "timeout",
            **self.factory.serviceField,
            client=self._client,
            commonName=self._peer.commonName if self._peer else None,
            limit=limit,
        )
        self._tls.abortConnection()

    def handshakeCompleted(self) -> None:
        """
        OpenSSL verified the client's certificate, and the admission its
        chain and allow-list in the verify step (or the session was
        resumed): the admission decides what is left (see
        L{Admission.afterHandshake}), now or later.  Until it has, the
        application has not started and the handshake timeout runs.
        """
        if not self._follow():
            return
        context = self.factory.context
        try:
            certificate, chain, resumed = _presented(self._tls.getHandle(), context)
            # What the logs need; the full PeerIdentity only for an
            # allow-list (the application makes its own when it asks).
            peer = _Peer(
                _commonName(certificate),
                certificate.fingerprint(hashes.SHA256()).hex(),
                certificate.serial_number,
                _uris(certificate),
            )
        except Exception as e:
            # OpenSSL verified it, but cryptography cannot read it (a malformed
            # extension, say): fail closed.
            self._refuse(f"unreadable client certificate: {e}", {})
            return
        now = datetime.datetime.fromtimestamp(self.factory.clock.seconds(), datetime.timezone.utc)
        verdict = context.admission.afterHandshake(
            certificate, chain, resumed, self._startedUnder, now
        )
        if isinstance(verdict, Deferred):
            self._pending = verdict
            self._early = []
            verdict.addCallbacks(
                self._decided,
                self._checkFailed,
                callbackArgs=(certificate, chain, resumed, peer),
            )
        else:
            self._decided(verdict, certificate, chain, resumed, peer)

    def _decided(
        self,
        verdict: Verdict,
        certificate: x509.Certificate,
        chain: tuple[x509.Certificate, ...],
        resumed: bool,
        peer: _Peer,
    ) -> None:
        self._pending = None
        early, self._early = self._early, None
        if self._lost:
            return  # gone while its admission was pending: already logged
        if isinstance(verdict, VerifyFailure):
            self._refuse(verdict.reason, verdict.fields)
        else:
            self._admit(certificate, chain, resumed, peer, verdict)
            if early is not None:
                self._replay(early)

    def _replay(self, early: list[bytes]) -> None:
        """
        Give the application what its client sent while the verdict was
        pending, and the end of its direction if it came meanwhile.
        """
        for data in early:
            if self.wrappedProtocol is None or self._lost:
                return
            self.wrappedProtocol.dataReceived(data)
        if self._earlyEnd and not self._lost:
            HalfCloseForwarding.readConnectionLost(self)
        elif self._earlyPaused and not self._lost:
            self._tls.resumeProducing()

    def _checkFailed(self, failure: Failure) -> None:
        self._pending = None
        self._early = None
        if not self._lost:
            self._refuse(f"admission check failed: {failure.getErrorMessage()}", {})

    def _follow(self) -> bool:
        """
        On an address shared by services, become the connection of the one
        chosen by the client's server name (its context, limits,
        application and events), once.

        @return: whether the connection goes on (its service's limits may
            refuse it).
        """
        router = self.factory.router
        if router is None or self._followed:
            return True
        self._followed = True
        route = router.route(self._tls.getHandle())
        if route is None:
            return True
        gate, self._startedUnder = route
        if gate is None or gate is self.factory:
            return True
        self.factory.limits.release(self._host)
        self.factory.unregisterProtocol(self)
        self.factory = gate
        gate.registerProtocol(self)
        refused = gate.limits.admit(self._host)
        if refused is not None:
            self._admitted = False
            emit(log, "refused", **gate.serviceField, client=self._client, limit=refused)
            self._tls.abortConnection()
            return False
        return True

    def _admit(
        self,
        certificate: x509.Certificate,
        chain: tuple[x509.Certificate, ...],
        resumed: bool,
        peer: _Peer,
        admitted: Admitted | None = None,
    ) -> None:
        """
        Let the client in: log it (with what the further checks found,
        C{admitted}), start its limits' timers and the application.
        """
        self._cancelTimeout()
        context = self.factory.context
        self._peer = peer
        self.peerNotAfter = certificate.not_valid_after_utc
        if not resumed:
            context.sessions.rememberChain(certificate, chain)  # for its resumptions
        context.sessions.add(self)
        clock, limits = self.factory.clock, self.factory.limits
        emit(
            log,
            "accepted",
            **self.factory.serviceField,
            client=self._client,
            commonName=peer.commonName,
            fingerprint=peer.fingerprint,
            serial=f"{peer.serial:x}",
            uris=peer.uris,
            uriText="".join(f" uri={uri}" for uri in peer.uris),
            resumed=resumed,
            checks=admitted.note if admitted else None,
            checksText=f" {admitted.note}" if admitted else "",
            handshakeDuration=clock.seconds() - self._startedAt,
        )
        if limits.idleTimeout is not None:
            self._idle = clock.callLater(limits.idleTimeout, self._limitReached, "idle-timeout")
        if limits.maxLifetime is not None:
            self._lifetime = clock.callLater(
                limits.maxLifetime, self._limitReached, "max-conn-lifetime"
            )
        if certificate == context.settings.certificate:
            emit(
                log,
                "shared-certificate",
                **self.factory.serviceField,
                client=self._client,
            )
        app = self.factory.wrappedFactory.buildProtocol(self._tls.getPeer())
        if app is None:
            self._tls.loseConnection()
            return
        self.wrappedProtocol = app
        app.makeConnection(self)

    def peer(self) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        """
        The client's certificate and the intermediates it sent, read again
        from the TLS connection (kept, parsed, they would cost about 3 KiB
        per connection; they are needed only when the trust changes).
        """
        certificate, chain, _ = _presented(self._tls.getHandle(), self.factory.context)
        return certificate, chain

    def _refuse(self, reason: str, fields: dict[str, object]) -> None:
        """
        Turn away a client whose certificate verified but who may not in.
        """
        self._refusal = (reason, fields)
        self._tls.abortConnection()

    def cut(self, reason: str) -> None:
        """
        Close this established connection because its peer is no longer
        admitted (see L{ServerContext.revalidate}).
        """
        assert self._peer is not None
        emit(
            log,
            "cut",
            **self.factory.serviceField,
            client=self._client,
            commonName=self._peer.commonName,
            fingerprint=self._peer.fingerprint,
            reason=reason,
        )
        self._tls.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self._resetIdle()
        self.bytesIn += len(data)
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
        elif self._early is not None:
            # Kept for the application if the client is admitted; past the
            # limit, the client waits (TCP pushes back).
            self._early.append(data)
            if not self._earlyPaused and self.bytesIn > EARLY_LIMIT:  # all of it early
                self._earlyPaused = True
                self._tls.pauseProducing()

    def readConnectionLost(self) -> None:
        if self._early is not None:
            self._earlyEnd = True  # passed on once admitted
        else:
            HalfCloseForwarding.readConnectionLost(self)

    def write(self, data: bytes) -> None:
        self._resetIdle()
        self.bytesOut += len(data)
        ProtocolWrapper.write(self, data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        data = list(data)
        self._resetIdle()
        self.bytesOut += sum(map(len, data))
        ProtocolWrapper.writeSequence(self, data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._lost = True
        self._cancelTimeout()
        pending = self._pending is not None
        if self._pending is not None:
            self._pending.cancel()
        if self._admitted and self._peer is None:
            self._follow()  # a refusal is the chosen service's
        self.factory.unregisterProtocol(self)
        self.factory.context.sessions.ended(self)
        if not self._admitted:
            return  # refused by a limit, and logged so
        self.factory.limits.release(self._host)
        if self._peer is None:
            self._logRejection(reason, pending)
        else:
            emit(
                log,
                "closed",
                **self.factory.serviceField,
                client=self._client,
                commonName=self._peer.commonName,
                bytesIn=self.bytesIn,
                bytesOut=self.bytesOut,
                duration=self.factory.clock.seconds() - self._startedAt,
            )
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.connectionLost(reason)

    def _logRejection(self, reason: Failure, pending: bool) -> None:
        failure = self.factory.context.verifyFailure(self._tls.getHandle())
        fields: dict[str, Any] = {}
        refusedName = self.factory.router and self.factory.router.refusal(self._tls.getHandle())
        service = self.factory.serviceField
        if self._timedOut:
            text = HANDSHAKE_TIMEOUT
        elif refusedName:
            # No service's: the name, which the client chose, is a field (not
            # in the reason, a label of the rejections metric).
            text, fields, service = NO_SERVICE, {"serverName": refusedName}, {"service": None}
        elif pending:
            text = CLOSED_BEFORE_ADMISSION
        elif self._refusal is not None:
            text, fields = self._refusal
        elif failure is not None:
            text = failure.reason
            fields = failure.fields
        else:
            text = handshakeFailureReason(reason)
        # A load balancer's TCP check connects and closes without a byte:
        # not worth a line at the default level; nor are rejections when
        # the operator asked for quiet (metrics still count them).
        quiet = self.factory.quietRejections or (
            text == CLOSED_BEFORE_HANDSHAKE and getattr(self._tls, "rawBytesIn", 0) == 0
        )
        emit(
            log,
            "rejected",
            **service,
            level=LogLevel.debug if quiet else None,
            client=self._client,
            reason=text,
            detail=_detail(fields),
            **fields,
        )


# How the text lines name a refused client's fields (as openssl and the
# allow-list options do).
_NAMED = tuple((kind.identity, kind.label) for kind in ALLOW_KINDS)


def _detail(fields: dict[str, object]) -> str:
    """
    The text after a rejection's reason: the failing certificate's depth and
    subject (C{" (depth 0, CN=alice)"}), or who the client is (C{": CN=carol
    uri=spiffe://..."}), so that text lines say what the JSON says.
    """
    if "depth" in fields:
        return f" (depth {fields['depth']}, {fields['subject']})"
    if "serverName" in fields:
        return f" {fields['serverName']}"
    named = []
    for field, name in _NAMED:
        value = fields.get(field)
        for each in value if isinstance(value, tuple) else [value]:
            if each is not None:
                named.append(f"{name}={each}")
    return ": " + " ".join(named) if named else ""


class _GateFactory(WrappingFactory):
    """
    Builds a L{_GateProtocol} for each connection; the application factory
    builds its protocol only when the gate lets the client in.  (The
    application's ALPN protocols, twisted.web's C{http/1.1} say, are chosen
    by the server context, from the L{TLSFactory}.)
    """

    protocol = _GateProtocol
    noisy = False

    def __init__(
        self,
        context: ServerContext,
        appFactory: IProtocolFactory,
        limits: ConnectionLimits,
        clock: IReactorTime,
        quietRejections: bool,
        service: str | None = None,
        router: Any = None,
    ) -> None:
        WrappingFactory.__init__(self, appFactory)  # type: ignore[arg-type]
        self.context = context
        self.limits = limits
        self.clock = clock
        self.quietRejections = quietRejections
        self.serviceField = serviceField(service)
        self.router = router  # of a shared address: mtlsd._sni.ServerNameRouter

    def buildProtocol(self, addr: IAddress | None) -> _GateProtocol:
        assert addr is not None
        return _GateProtocol(self, addr)

    def logPrefix(self) -> str:
        """
        How Twisted names the listener in its log (C{mtlsd (TLS) starting on
        8082}).
        """
        return "mtlsd"


def mtlsServerFactory(
    context: ServerContext,
    appFactory: IProtocolFactory,
    limits: ConnectionLimits | None = None,
    clock: IReactorTime | None = None,
    quietRejections: bool = False,
) -> TLSMemoryBIOFactory:
    """
    Wrap an application factory for listening with mutual TLS on any plain
    stream endpoint (TCP, UNIX, systemd, haproxy).

    @param context: the server's TLS context.
    @param appFactory: builds the application protocol; it runs only for
        clients whose certificate verified, and can call
        L{mtlsd.peerIdentity} on its transport.
    @param limits: connection limits and timeouts (default: a 10 s handshake
        timeout, nothing else).
    @param clock: the time source (default: the global reactor).
    @param quietRejections: log rejected handshakes at debug level only.
    @return: a factory to pass to a plain endpoint's C{listen}.
    """
    gate = gateFactory(context, appFactory, limits, clock, quietRejections)
    return TLSFactory(context, False, gate, clock=gate.clock, application=appFactory)


def gateFactory(
    context: ServerContext,
    appFactory: IProtocolFactory,
    limits: ConnectionLimits | None = None,
    clock: IReactorTime | None = None,
    quietRejections: bool = False,
    service: str | None = None,
    router: Any = None,
) -> _GateFactory:
    """
    The factory of the gates between a TLS transport (mtlsd's own, or
    Twisted's of L{mtlsServerFactory}) and the application; the arguments
    are L{mtlsServerFactory}'s, C{service} names the daemon's service in
    the events of its connections, and C{router} chooses among the services
    of a shared address (L{mtlsd._sni.ServerNameRouter}).
    """
    if clock is None:
        from twisted.internet import reactor

        clock = reactor
    assert clock is not None
    return _GateFactory(
        context, appFactory, limits or ConnectionLimits(), clock, quietRejections, service, router
    )
