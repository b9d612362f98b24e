# -*- test-case-name: mtlsd.test.test_client -*-
"""
The client side of mutual TLS: verify the server (chain and name), present
our own certificate, and explain every failure in one sentence.
"""

from __future__ import annotations

from typing import Any, cast
from weakref import WeakKeyDictionary

import idna
from attrs import field, frozen
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import Certificate, CertificateOptions, trustRootFromCertificates
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import classImplements, implementer

from ._errors import ConfigurationError
from ._files import Path, loadCertificateAndKey, loadCertificates
from ._halfclose import HalfCloseForwarding
from ._reasons import opensslReasons, peerAlert
from ._tls import TLSFactory
from ._verify import (
    TLS_VERSIONS,
    VerifyFailure,
    VerifyRecorder,
    setCryptoPolicy,
    setVerify,
    tlsGroups,
    validTLSVersion,
)


class ServerRejectedClient(Exception):
    """
    The server refused this client's certificate (it sent a TLS alert), or
    may have: it closed the connection without one right after the
    handshake.
    """


# How soon after the handshake a server's silent close is taken as its answer
# to the handshake (a refusal of the certificate, or a connection it could
# not serve) rather than a connection ended later for reasons of its own.
RIGHT_AFTER_HANDSHAKE = 1.0


class ServerNotTrusted(Exception):
    """
    The server's certificate did not verify, or does not match its name.
    """


@frozen
class ClientTLSSettings:
    """
    What a mutual-TLS client needs.

    @ivar certificate: the client's certificate, or L{None} to present none.
    @ivar privateKey: its key.
    @ivar chain: intermediates sent after the certificate.
    @ivar trusted: CA certificates the server's certificate must chain to, or
        server certificates trusted as they are (pinned).
    @ivar minimumTLSVersion: C{"1.2"} or C{"1.3"}.
    @ivar groups: the key-exchange groups offered (see L{tlsGroups}).
    """

    certificate: x509.Certificate | None
    privateKey: PrivateKeyTypes | None
    chain: tuple[x509.Certificate, ...]
    trusted: tuple[x509.Certificate, ...]
    minimumTLSVersion: str = field(default="1.2", validator=validTLSVersion)
    groups: tuple[str, ...] = field(factory=lambda: tlsGroups(None))

    @classmethod
    def fromFiles(
        cls,
        certificatePath: Path | None,
        keyPath: Path | None,
        caPath: Path,
        minimumTLSVersion: str = "1.2",
        passphrasePath: Path | None = None,
        groups: tuple[str, ...] | None = None,
    ) -> ClientTLSSettings:
        """
        Load a client certificate (optionally followed by its chain and key),
        its key, and the CA bundle that verifies the server.

        @param certificatePath: the client certificate (PEM), optionally
            followed by its chain and/or its key; or a PKCS#12 file with the
            key, the certificate and its chain; or L{None} to present no
            certificate.
        @param keyPath: the client's key (PEM), or L{None} for the key
            inside C{certificatePath}.
        @param caPath: the certificates that verify the server (PEM).
        @param minimumTLSVersion: C{"1.2"} or C{"1.3"}.
        @param passphrasePath: a file whose first line is the passphrase of
            an encrypted key or the password of the PKCS#12 file.
        @param groups: the key-exchange groups to offer (L{None}: Mozilla's).
        @raise ConfigurationError: for any unusable file, a passphrase that
            does not open the key, or a key that does not match the
            certificate.
        """
        chosen = {} if groups is None else {"groups": groups}
        trusted = tuple(loadCertificates(caPath, "CA"))
        if certificatePath is None:
            if keyPath is not None:
                raise ConfigurationError("--key was given without --cert.")
            if passphrasePath is not None:
                raise ConfigurationError("--key-passphrase-file was given without --cert.")
            return cls(None, None, (), trusted, minimumTLSVersion, **chosen)
        client = loadCertificateAndKey(certificatePath, keyPath, "client", passphrasePath)
        return cls(
            client.certificate,
            client.privateKey,
            client.chain,
            trusted,
            minimumTLSVersion,
            **chosen,
        )

    def connectionCreator(self, hostname: str) -> ClientContext:
        """
        @param hostname: the name (DNS name or IP address) the server's
            certificate must carry in its subjectAltName.
        @return: the client connection creator for these settings.
        """
        return ClientContext(self, hostname)

    def endpoint(
        self,
        reactor: IReactorTCP | IReactorTime,
        host: str,
        port: int,
        serverName: str | None = None,
    ) -> MtlsClientEndpoint:
        """
        A client endpoint that connects to C{host:port} with mutual TLS.

        @param serverName: the name to verify on the server's certificate
            (default: C{host}).
        """
        return MtlsClientEndpoint(
            self.connectionCreator(serverName or host),
            HostnameEndpoint(reactor, host, port),
            cast(IReactorTime, reactor),
        )

    def policyForHTTPS(self, serverName: str | None = None) -> IPolicyForHTTPS:
        """
        For twisted.web's C{Agent} (and treq, given such an agent): HTTPS
        connections that present this client certificate and verify the
        server's chain and name, as L{endpoint} does.

            agent = Agent(reactor, contextFactory=settings.policyForHTTPS())

        @param serverName: the name to verify on every server's certificate
            (default: the host of each URL).
        """
        return _HTTPSPolicy(self, serverName)


@implementer(IPolicyForHTTPS)
class _HTTPSPolicy:
    """
    One L{ClientContext} per server name, made at its first request (a
    context is costly to make, and keeps the sessions a later connection
    resumes).
    """

    def __init__(self, settings: ClientTLSSettings, serverName: str | None) -> None:
        self._settings = settings
        self._serverName = serverName
        self._contexts: dict[str, ClientContext] = {}

    def creatorForNetloc(self, hostname: bytes, port: int) -> ClientContext:
        name = self._serverName or hostname.decode("ascii")
        context = self._contexts.get(name)
        if context is None:
            context = self._contexts[name] = self._settings.connectionCreator(name)
        return context


def _checkName(certificate: x509.Certificate, hostname: str) -> None:
    if isIPAddress(hostname) or isIPv6Address(hostname):
        verify_certificate_ip_address(certificate, hostname)
    else:
        verify_certificate_hostname(certificate, hostname)


@implementer(IOpenSSLClientConnectionCreator)
class ClientContext:
    """
    Creates client connections that present the client certificate and
    verify the server's chain and name.

    The context comes from Twisted's L{CertificateOptions} with C{trustRoot}
    made from the trusted certificates, plus partial-chain verification (a
    CA-issued server certificate can be pinned by listing it alone).  Its
    verify callback checks the name with C{service_identity} and fails the
    handshake on any error: Twisted's own client (L{optionsForClientTLS})
    accepts a server certificate that has no subjectAltName at all, logging
    the error and letting the handshake go on.

    A name that does not match fails the chain with OpenSSL's own error for
    it, so that OpenSSL sends the server a fatal C{bad_certificate} alert,
    as OpenSSL's clients do, and the server can log why.  (Twisted's
    C{failVerification} aborts without an alert: the server saw only a
    connection closed before the handshake.)
    """

    def __init__(self, settings: ClientTLSSettings, hostname: str) -> None:
        """
        @param settings: the client's certificate, key and trusted
            certificates.
        @param hostname: the DNS name or IP address the server's certificate
            must carry; a DNS name is also sent as SNI.
        """
        self.settings = settings
        self.hostname = hostname
        isIP = isIPAddress(hostname) or isIPv6Address(hostname)
        self._serverName = None if isIP else idna.encode(hostname)
        # The verification error for a name that does not match; OpenSSL
        # answers either with a bad_certificate alert.
        self._mismatch = int(
            SSL.X509VerificationCodes.ERR_IP_ADDRESS_MISMATCH
            if isIP
            else SSL.X509VerificationCodes.ERR_HOSTNAME_MISMATCH
        )
        self._recorder = VerifyRecorder()
        self._nameErrors: WeakKeyDictionary[SSL.Connection, ServerNotTrusted] = WeakKeyDictionary()
        credentials: dict[str, Any] = {}
        if settings.certificate is not None:
            credentials = {
                "certificate": settings.certificate,
                "privateKey": settings.privateKey,
                "extraCertChain": list(settings.chain),
            }
        if settings.minimumTLSVersion != "1.2":
            credentials["raiseMinimumTo"] = TLS_VERSIONS[settings.minimumTLSVersion]
        self._context = CertificateOptions(
            trustRoot=trustRootFromCertificates(
                [Certificate(crypto.X509.from_cryptography(c)) for c in settings.trusted]
            ),
            **credentials,
        ).getContext()
        setCryptoPolicy(self._context, settings.groups)
        store = self._context.get_cert_store()
        assert store is not None
        store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
        setVerify(self._context, SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)

    def _verify(
        self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool | int:
        if not self._recorder.record(connection, cert, errno, depth, ok):
            return False
        if depth != 0:
            return True
        try:
            certificate = cert.to_cryptography()
            _checkName(certificate, self.hostname)
        except Exception as e:
            self._nameErrors.setdefault(connection, _nameError(e, self.hostname))
            return self._mismatch
        return True

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """
        Create the OpenSSL connection for a new client connection.
        """
        connection = SSL.Connection(self._context)
        if self._serverName is not None:
            connection.set_tlsext_host_name(self._serverName)
        return connection

    def verifyFailure(self, connection: SSL.Connection) -> VerifyFailure | None:
        """
        @return: why the server's chain failed verification on C{connection}.
        """
        return self._recorder.failure(connection)

    def nameError(self, connection: SSL.Connection) -> ServerNotTrusted | None:
        """
        @return: why the server's certificate does not match the name asked
            for on C{connection}, if it does not.
        """
        return self._nameErrors.get(connection)


class _ClientGate(HalfCloseForwarding, ProtocolWrapper):
    """
    Passes everything through to the application protocol, except that the
    reason a failed connection is lost becomes L{ServerNotTrusted} or
    L{ServerRejectedClient} with one clear sentence.
    """

    factory: _ClientGateFactory
    handshakeAt: float | None = None
    received = False

    def handshakeCompleted(self) -> None:
        self.handshakeAt = self.factory.clock.seconds()
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def dataReceived(self, data: bytes) -> None:
        self.received = True
        ProtocolWrapper.dataReceived(self, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        connection = self.transport.getHandle()
        error = describeClientFailure(
            reason,
            self.factory.context,
            connection,
            sinceHandshake=(
                None
                if self.handshakeAt is None
                else self.factory.clock.seconds() - self.handshakeAt
            ),
            received=self.received,
        )
        ProtocolWrapper.connectionLost(self, reason if error is None else Failure(error))


classImplements(_ClientGate, IHandshakeListener, IHalfCloseableProtocol)


class _ClientGateFactory(WrappingFactory):
    protocol = _ClientGate
    noisy = False

    def __init__(
        self,
        context: ClientContext,
        wrappedFactory: IProtocolFactory,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param clock: measures how long after the handshake a connection is
            lost (default: the global reactor).
        """
        WrappingFactory.__init__(self, wrappedFactory)  # type: ignore[arg-type]
        self.context = context
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.clock = clock


def mtlsClientFactory(
    context: ClientContext, protocolFactory: IProtocolFactory, clock: IReactorTime | None = None
) -> TLSFactory:
    """
    Wrap an application factory for connecting with mutual TLS over any
    plain stream endpoint: its protocols' C{connectionLost} get
    L{ServerNotTrusted} or L{ServerRejectedClient} when the connection fails
    for those reasons.

    @param clock: the time source (default: the global reactor).
    """
    gates = _ClientGateFactory(context, protocolFactory, clock)
    return TLSFactory(context, True, gates, clock=clock, application=protocolFactory)


@implementer(IStreamClientEndpoint)
class MtlsClientEndpoint:
    """
    A client endpoint that connects over a plain stream endpoint with mutual
    TLS.  The application protocol's C{connectionLost} gets
    L{ServerNotTrusted} or L{ServerRejectedClient} when the connection fails
    for those reasons; with TLS 1.3 the server's rejection of the client
    certificate arrives after the handshake, as such a loss.
    """

    def __init__(
        self,
        context: ClientContext,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param clock: the reactor's clock (default: the global reactor).
        """
        self._context = context
        self._endpoint = endpoint
        self._clock = clock

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect, and fire with the application protocol.
        """
        connecting = self._endpoint.connect(
            mtlsClientFactory(self._context, protocolFactory, self._clock)
        )
        return connecting.addCallback(
            lambda tls: (
                cast(_ClientGate, cast(ProtocolWrapper, tls).wrappedProtocol).wrappedProtocol
            )
        )


def _nameError(error: Exception, hostname: str) -> ServerNotTrusted:
    if isinstance(error, CertificateError) and "subjectAltName" in str(error):
        return ServerNotTrusted(
            "the server certificate has no subjectAltName, so it cannot be"
            f" verified as {hostname} (a name in the CN alone does not count);"
            f" regenerate it with -addext subjectAltName=DNS:{hostname}"
        )
    if isinstance(error, VerificationError):
        return ServerNotTrusted(
            f"the server certificate is not valid for {hostname}; use --servername"
            " with one of its names (mtlsd inspect shows them), or reissue it"
        )
    return ServerNotTrusted(f"the server certificate cannot be checked: {error}")


def describeClientFailure(
    reason: Failure,
    context: ClientContext,
    connection: SSL.Connection | None,
    sinceHandshake: float | None = None,
    received: bool = False,
) -> Exception | None:
    """
    Turn the reason a client connection was lost into a clear exception, or
    L{None} for a clean close.

    With TLS 1.3 a client's handshake completes before the server has checked
    its certificate; a rejection arrives afterwards as an alert.  This is
    where such an alert becomes L{ServerRejectedClient}.  Some servers
    (Node's C{rejectUnauthorized}) send no alert: they complete the
    handshake and drop the connection.  So does an mtlsd server that
    accepted the client but cannot serve it (its C{--forward} backend is
    down), and one that cuts a connection it no longer trusts: a silent
    close is blamed on nothing, and is said to be possibly a refusal only
    when it came within L{RIGHT_AFTER_HANDSHAKE} seconds of the handshake,
    before any data.

    @param sinceHandshake: the seconds from the completed handshake to the
        loss, or L{None} if the handshake did not complete.
    @param received: whether the server sent application data.
    """
    error = reason.value
    if isinstance(error, ConnectionDone):
        return None
    if isinstance(error, ServerNotTrusted):
        return error
    if connection is not None:
        nameError = context.nameError(connection)
        if nameError is not None:
            return nameError
    failure = context.verifyFailure(connection) if connection is not None else None
    if failure is not None:
        return ServerNotTrusted(
            f"the server certificate failed verification: {failure.reason}"
            f" (depth {failure.depth}, {failure.subject})"
        )
    alert = peerAlert(reason)
    if alert is not None:
        if "certificate" in alert or "unknown ca" in alert or "access denied" in alert:
            none = "; this client sent none" if context.settings.certificate is None else ""
            return ServerRejectedClient(
                f"the server rejected this client's certificate ({alert}{none})"
            )
        return ServerRejectedClient(f"the server ended the handshake ({alert})")
    if (
        sinceHandshake is not None
        and reason.check(ConnectionLost)
        and not reason.check(ConnectionAborted)
    ):
        # Twisted's "lost in a non-clean fashion": the TCP connection ended
        # (or was reset) without close_notify; not our own abortConnection.
        if not received and sinceHandshake < RIGHT_AFTER_HANDSHAKE:
            return ServerRejectedClient(
                "the server closed the connection without an alert right after the"
                " handshake, before sending anything (it may not accept this client's"
                " certificate, or could not serve the connection: see its log)"
            )
        return Exception("the server closed the connection without an alert (see its log)")
    texts = opensslReasons(error)
    if texts:
        return Exception("TLS error: " + "; ".join(texts))
    return Exception(str(error) or type(error).__name__)
