# -*- test-case-name: mtlsd.test.test_parser -*-
"""
How a mutual-TLS server is built, in one place for the daemon and the
C{mtls:} string: each translates its input into a L{ServerConfiguration};
an L{MtlsServer} made from it gives endpoints that put mutual TLS on any
plain stream endpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attrs import define, field, frozen
from twisted.application.service import IService
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from ._admission import AdmissionCheck
from ._context import ServerContext
from ._files import Path
from ._ocsp import OCSPSettings
from ._policy import AllowPolicy
from ._reload import DEFAULT_RELOAD_INTERVAL, TrustReloader
from ._server import DEFAULT_HANDSHAKE_TIMEOUT, ConnectionLimits, gateFactory
from ._settings import DEFAULT_VERIFY_DEPTH, ServerTLSSettings
from ._sockettls import TLSListener, memoryEndpoint, socketListen
from ._tls import TLSFactory, applicationProtocols, notTLSAnswer


def _paths(value: Sequence[Path]) -> tuple[Path, ...]:
    return tuple(value)


def _checks(value: Sequence[AdmissionCheck]) -> tuple[AdmissionCheck, ...]:
    return tuple(value)


@frozen
class ServerConfiguration:
    """
    What a mutual-TLS server is to be, whether the daemon's options or an
    C{mtls:} string say it: the files of its certificate and trust (read
    now, and watched), how the trust is applied, its limits and its reloads.

    @ivar certificate: the server certificate file (PEM, optionally with
        chain and key; or PKCS#12).
    @ivar key: its key file, or L{None} for the key inside C{certificate}.
    @ivar moreCertificates: server certificates of other key types (RSA
        beside ECDSA), each with its key file (or L{None}).
    @ivar passphrase: the file of the key's passphrase, if any.
    @ivar clientCertificates: bundles of trusted client certificates and CAs.
    @ivar clientCAs: bundles of CAs trusted whatever their keyUsage.
    @ivar crls: CRL files.
    @ivar crlCheckChain: check every CA of a client's chain against its CRL.
    @ivar crlRequired: refuse clients whose issuer has no CRL.
    @ivar policy: the allow-list.
    @ivar verifyDepth: the longest client chain accepted.
    @ivar minimumTLSVersion: C{"1.2"} or C{"1.3"}.
    @ivar groups: the key-exchange groups offered (L{None}: Mozilla's).
    @ivar signatureAlgorithms: those accepted from clients (L{None}:
        OpenSSL's).
    @ivar handshakeTimeout: seconds a client has to complete the handshake.
    @ivar idleTimeout: seconds without a byte before a connection is closed
        (L{None}: never).
    @ivar maxLifetime: seconds a connection may live (L{None}: for ever).
    @ivar maxConnections: connections at once, beyond which new ones are
        refused (L{None}: no limit).
    @ivar maxPerAddress: the same, per client IP address.
    @ivar reloadInterval: seconds between looks at the files (0: SIGHUP
        only).
    @ivar keepLiveSessions: after a reload, keep the connections the new
        trust would refuse.
    @ivar quietRejections: log rejected handshakes at debug level only.
    @ivar ocsp: how client certificates are checked with OCSP (L{None}:
        they are not).
    @ivar checks: further checks of each client after its handshake (see
        L{AdmissionCheck}), after OCSP's.
    @ivar service: the name of this server, a service of a daemon of many
        (named in its events), or L{None}.
    """

    certificate: Path
    key: Path | None = None
    moreCertificates: tuple[tuple[Path, Path | None], ...] = ()
    passphrase: Path | None = None
    clientCertificates: tuple[Path, ...] = field(default=(), converter=_paths)
    clientCAs: tuple[Path, ...] = field(default=(), converter=_paths)
    crls: tuple[Path, ...] = field(default=(), converter=_paths)
    crlCheckChain: bool = False
    crlRequired: bool = False
    policy: AllowPolicy = AllowPolicy()
    verifyDepth: int = DEFAULT_VERIFY_DEPTH
    minimumTLSVersion: str = "1.2"
    groups: tuple[str, ...] | None = None
    signatureAlgorithms: str | None = None
    handshakeTimeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    idleTimeout: float | None = None
    maxLifetime: float | None = None
    maxConnections: int | None = None
    maxPerAddress: int | None = None
    reloadInterval: float = DEFAULT_RELOAD_INTERVAL
    keepLiveSessions: bool = False
    quietRejections: bool = False
    ocsp: OCSPSettings | None = None
    checks: tuple[AdmissionCheck, ...] = field(default=(), converter=_checks)
    service: str | None = None

    def load(self) -> ServerTLSSettings:
        """
        Read the files.

        @raise ConfigurationError: for any unusable file.
        """
        return ServerTLSSettings.fromFiles(
            self.certificate,
            self.key,
            self.clientCertificates,
            self.crls,
            self.passphrase,
            self.clientCAs,
            crlCheckChain=self.crlCheckChain,
            crlRequired=self.crlRequired,
            policy=self.policy,
            verifyDepth=self.verifyDepth,
            minimumTLSVersion=self.minimumTLSVersion,
            signatureAlgorithms=self.signatureAlgorithms,
            morePaths=self.moreCertificates,
            **({} if self.groups is None else {"groups": self.groups}),
        )

    @property
    def files(self) -> list[Path]:
        """
        The files the settings are read from, to watch.
        """
        optional = [path for path in (self.key, self.passphrase) if path]
        optional += [path for pair in self.moreCertificates for path in pair if path]
        return [self.certificate, *optional, *self.clientCertificates, *self.clientCAs, *self.crls]

    def limits(self) -> ConnectionLimits:
        """
        New connection limits, to share between the listeners of a server.
        """
        return ConnectionLimits(
            handshakeTimeout=self.handshakeTimeout,
            idleTimeout=self.idleTimeout,
            maxLifetime=self.maxLifetime,
            maxConnections=self.maxConnections,
            maxPerAddress=self.maxPerAddress,
        )


class MtlsServer:
    """
    A mutual-TLS server built from a L{ServerConfiguration}: its context
    (the settings in force and who gets in), the reloader that keeps them
    up to date, and its connection limits, shared by every endpoint it
    gives.
    """

    def __init__(self, configuration: ServerConfiguration, reactor: IReactorTime) -> None:
        """
        @raise ConfigurationError: for any unusable file.
        """
        self.configuration = configuration
        self._reactor = reactor
        checks = configuration.checks
        if configuration.ocsp is not None:
            checks = (configuration.ocsp.checker(reactor, configuration.service), *checks)
        self.context = ServerContext(configuration.load(), checks)
        self.reloader = TrustReloader(
            self.context,
            configuration.load,
            configuration.files,
            reactor,
            configuration.reloadInterval,
            configuration.keepLiveSessions,
            configuration.service,
        )
        self.limits = configuration.limits()

    def endpoint(
        self, plain: IStreamServerEndpoint, startsReloader: bool = True, router: Any = None
    ) -> MtlsServerEndpoint:
        """
        @param plain: the stream endpoint to put mutual TLS on.
        @param startsReloader: start the reloader with the first C{listen}
            and stop it with the last port (C{False}: it is run as a service
            of its own, as the daemon does).
        @param router: chooses among the services sharing C{plain}
            (L{mtlsd._sni.ServerNameRouter}), this server being the first.
        @return: an endpoint listening with mutual TLS on C{plain}.
        """
        return MtlsServerEndpoint(
            self.context,
            plain,
            self.limits,
            self._reactor,
            self.reloader if startsReloader else None,
            self.configuration.quietRejections,
            self.configuration.service,
            router,
        )


@implementer(IStreamServerEndpoint)
class MtlsServerEndpoint:
    """
    A server endpoint that puts mutual TLS on a plain stream endpoint.
    """

    def __init__(
        self,
        context: ServerContext,
        endpoint: IStreamServerEndpoint,
        limits: ConnectionLimits | None = None,
        clock: IReactorTime | None = None,
        reloader: IService | None = None,
        quietRejections: bool = False,
        service: str | None = None,
        router: Any = None,
    ) -> None:
        """
        @param context: the server's TLS context.
        @param endpoint: the plain endpoint to listen on.
        @param limits: connection limits and timeouts, shared by listeners.
        @param clock: the time source (default: the global reactor).
        @param reloader: a service keeping C{context} up to date with its files
            (a L{TrustReloader}).  If it is not running, C{listen} starts it,
            and it stops when the last port listening through it stops.
        @param quietRejections: log rejected handshakes at debug level only.
        @param service: the daemon's service it is, named in the events.
        """
        self._context = context
        self._service = service
        self._router = router
        self._endpoint = endpoint
        self._limits = limits
        self._clock = clock
        self._reloader = reloader
        self._quiet = quietRejections
        self._startedReloader = False
        self._holders = 0

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Listen, starting C{protocolFactory}'s protocols for verified clients.

        @return: a Deferred firing with the listening port.  If this call
            started the reloader, the port's C{stopListening} stops it too
            (once no other port of this endpoint needs it), and so does a
            failure to listen.
        """
        holding = self._holdReloader()
        gate = gateFactory(
            self._context,
            protocolFactory,
            self._limits,
            self._clock,
            self._quiet,
            self._service,
            self._router,
        )
        listener = TLSListener(
            self._context.socketConnection,
            applicationProtocols(protocolFactory),
            notTLSAnswer=notTLSAnswer(protocolFactory),
        )
        listening = socketListen(self._endpoint, gate, listener) or memoryEndpoint(
            self._endpoint
        ).listen(
            TLSFactory(self._context, False, gate, clock=gate.clock, application=protocolFactory)
        )
        if not holding:
            return listening

        def failed(reason: Failure) -> Failure:
            self._releaseReloader()
            return reason

        return listening.addCallbacks(lambda port: _ReloadingPort(port, self), failed)

    def _holdReloader(self) -> bool:
        """
        Start the reloader unless it runs already (someone else's to stop
        then), and count one more port needing it.

        @return: whether the port to come holds the reloader.
        """
        if self._reloader is None:
            return False
        if not self._reloader.running:
            self._reloader.startService()
            self._startedReloader = True
        elif not self._startedReloader:
            return False
        self._holders += 1
        return True

    def _releaseReloader(self) -> Deferred[object]:
        """
        One port needs the reloader no more: stop it after the last.

        @return: a Deferred firing when the reloader has stopped.
        """
        self._holders -= 1
        if self._holders or not self._startedReloader:
            return succeed(None)
        assert self._reloader is not None
        self._startedReloader = False
        return maybeDeferred(self._reloader.stopService)


@implementer(IListeningPort)
@define
class _ReloadingPort:
    """
    A port of an L{MtlsServerEndpoint} whose C{listen} started the trust
    reloader: a helper service lives and dies with what it serves, so
    C{stopListening} stops the reloader, then the port (as txacme's
    C{_WrapperPort} stops its certificate-issuing service).
    """

    _port: IListeningPort
    _endpoint: MtlsServerEndpoint
    _holding: bool = True

    def startListening(self) -> None:
        """
        Listen again (after L{stopListening}), with the reloader again.
        """
        self._port.startListening()
        if not self._holding:
            self._holding = self._endpoint._holdReloader()

    def stopListening(self) -> Deferred[None]:
        """
        Stop the reloader (unless another port of the endpoint still needs
        it), then stop listening.
        """
        released: Deferred[object] = succeed(None)
        if self._holding:
            self._holding = False
            released = self._endpoint._releaseReloader()
        return released.addCallback(lambda _: self._port.stopListening())

    def getHost(self) -> IAddress:
        return self._port.getHost()
