# -*- test-case-name: mtlsd.test.test_testing -*-
"""
Test your protocol under mtlsd without sockets or certificate files: a
certificate authority made on the fly, and a client and a server connected
in memory through real OpenSSL handshakes, as C{treq.testing} does for treq.

    from twisted.internet.protocol import Factory
    from mtlsd.testing import CertificateAuthority, MemoryConnection
    from mtlsd.testing import clientContext, serverContext

    ca = CertificateAuthority()
    connection = MemoryConnection(
        serverContext(ca.server(), [ca.certificate]),
        clientContext(ca.issue("alice"), [ca.certificate]),
        Factory.forProtocol(YourProtocol),
    )
    # The handshake has run: YourProtocol started, alice got its first words.
    connection.client.received
    connection.clientTLS.write(b"more")  # alice writes,
    connection.flush()  # and YourProtocol has read it

The server is mtlsd's own (L{mtlsd.mtlsServerFactory}): your protocol
starts only for an admitted client, and L{mtlsd.peerIdentity} works on its
transport.  The client is mtlsd's as L{mtlsd.MtlsClientEndpoint} connects.
Time is a L{Clock} you advance (handshake and idle timeouts, expiry).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Any

from attrs import field, frozen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IAddress, IHandshakeListener, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connectedServerAndClient
from zope.interface import implementer

from ._admission import AdmissionCheck
from ._client import ClientContext, ClientTLSSettings, mtlsClientFactory
from ._context import ServerContext
from ._pki import CLIENT_AUTH, SERVER_AUTH, certificatePEM, makeCertificate, newKey
from ._server import ConnectionLimits, mtlsServerFactory
from ._settings import ServerTLSSettings

__all__ = [
    "CertificateAuthority",
    "Credentials",
    "MemoryConnection",
    "RecordingProtocol",
    "clientContext",
    "selfSigned",
    "serverContext",
]


def _certificates(certificates: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    return tuple(certificates)


@frozen
class Credentials:
    """
    A certificate, its private key and the intermediates sent after it: what
    a server or a client presents.

    @ivar certificate: the certificate.
    @ivar key: its private key.
    @ivar chain: intermediate certificates, the issuer of C{certificate}
        first.
    """

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...] = field(default=(), converter=_certificates)

    def certificatePEM(self) -> bytes:
        """
        @return: the certificate then its chain, as PEM: a file for
            C{ServerTLSSettings.fromFiles} or C{ClientTLSSettings.fromFiles}.
        """
        return certificatePEM(self.certificate, *self.chain)

    def keyPEM(self) -> bytes:
        """
        @return: the private key as unencrypted PKCS#8 PEM.
        """
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _issue(
    commonName: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    usages: Sequence[x509.ObjectIdentifier],
    names: Iterable[str],
    uris: Iterable[str],
    emails: Iterable[str],
    organizationalUnit: str | None,
    notBefore: datetime.datetime | None,
    days: int,
) -> Credentials:
    key = newKey()
    certificate = makeCertificate(
        commonName,
        key,
        issuer,
        usages=usages,
        names=names,
        uris=uris,
        emails=emails,
        organizationalUnit=organizationalUnit,
        notBefore=notBefore,
        days=days,
    )
    return Credentials(certificate, key)


class CertificateAuthority:
    """
    A CA made on the fly, with a new ECDSA P-256 key, that issues server and
    client certificates.  Trust it by listing L{certificate} in a server's
    or a client's trusted certificates.

    @ivar certificate: the CA's self-signed certificate.
    @ivar key: the CA's private key.
    """

    def __init__(self, commonName: str = "Test CA", *, days: int = 30) -> None:
        """
        @param commonName: the CA's CN (which a server names to its clients
            as an acceptable issuer).
        @param days: the CA certificate's validity, from an hour ago.
        """
        self.key = newKey()
        self.certificate = makeCertificate(commonName, self.key, isCA=True, days=days)

    def issue(
        self,
        commonName: str,
        *,
        usages: Sequence[x509.ObjectIdentifier] = (CLIENT_AUTH,),
        names: Iterable[str] = (),
        uris: Iterable[str] = (),
        emails: Iterable[str] = (),
        organizationalUnit: str | None = None,
        notBefore: datetime.datetime | None = None,
        days: int = 365,
    ) -> Credentials:
        """
        Issue a certificate, a client certificate unless told otherwise.

        @param commonName: the subject's CN.
        @param usages: its extended key usages
            (L{cryptography.x509.oid.ExtendedKeyUsageOID} values); empty for
            a certificate without the extension.
        @param names: DNS names and IP addresses for its subjectAltName.
        @param uris: URIs for its subjectAltName (a SPIFFE ID, say).
        @param emails: e-mail addresses for its subjectAltName.
        @param organizationalUnit: an OU for its subject.
        @param notBefore: the start of its validity (default: an hour ago);
            with C{days}, make one that has expired or is not valid yet.
        @param days: the length of its validity.
        @return: the certificate and its new key.
        """
        return _issue(
            commonName,
            (self.certificate, self.key),
            usages,
            names,
            uris,
            emails,
            organizationalUnit,
            notBefore,
            days,
        )

    def server(
        self,
        names: Iterable[str] = ("localhost", "127.0.0.1"),
        *,
        commonName: str = "localhost",
        notBefore: datetime.datetime | None = None,
        days: int = 365,
    ) -> Credentials:
        """
        Issue a server certificate (extended key usage serverAuth).

        @param names: the DNS names and IP addresses a client may verify it
            as (see L{clientContext}'s C{hostname}).
        @param commonName: the subject's CN.
        @param notBefore: the start of its validity (default: an hour ago).
        @param days: the length of its validity.
        @return: the certificate and its new key.
        """
        return self.issue(
            commonName, usages=(SERVER_AUTH,), names=names, notBefore=notBefore, days=days
        )


def selfSigned(
    commonName: str,
    *,
    usages: Sequence[x509.ObjectIdentifier] = (CLIENT_AUTH,),
    names: Iterable[str] = (),
    uris: Iterable[str] = (),
    emails: Iterable[str] = (),
    organizationalUnit: str | None = None,
    notBefore: datetime.datetime | None = None,
    days: int = 365,
) -> Credentials:
    """
    Make a self-signed certificate: a client trusted by listing it alone
    (pinned), or one no server trusts.  The parameters are those of
    L{CertificateAuthority.issue}.

    @return: the certificate and its new key.
    """
    return _issue(
        commonName, None, usages, names, uris, emails, organizationalUnit, notBefore, days
    )


def serverContext(
    server: Credentials,
    trusted: Iterable[x509.Certificate],
    checks: Sequence[AdmissionCheck] = (),
    **settings: Any,
) -> ServerContext:
    """
    A server's TLS context.

    @param server: the server's certificate, key and chain.
    @param trusted: the client certificates and CAs it trusts.
    @param checks: further checks of each client after its handshake (see
        L{mtlsd.AdmissionCheck}): a revocation source you test, say.
    @param settings: more L{ServerTLSSettings} fields, by name (C{policy},
        C{crls}, C{verifyDepth}, C{minimumTLSVersion}, ...).
    @return: a L{ServerContext} for these settings.
    """
    return ServerContext(
        ServerTLSSettings(server.certificate, server.key, server.chain, tuple(trusted), **settings),
        checks,
    )


def clientContext(
    client: Credentials | None,
    trusted: Iterable[x509.Certificate],
    hostname: str = "localhost",
) -> ClientContext:
    """
    A client's TLS context.

    @param client: the certificate it presents, or L{None} for none.
    @param trusted: the CAs (or pinned server certificates) it verifies the
        server with.
    @param hostname: the name the server's certificate must carry.
    @return: a L{ClientContext} for C{hostname}.
    """
    settings = ClientTLSSettings(
        client.certificate if client else None,
        client.key if client else None,
        client.chain if client else (),
        tuple(trusted),
    )
    return settings.connectionCreator(hostname)


@implementer(IHandshakeListener)
class RecordingProtocol(Protocol):
    """
    A protocol that records what happens to its connection: the default
    application on both sides of a L{MemoryConnection}.

    @ivar made: whether C{connectionMade} ran (on the server: whether the
        client was admitted).
    @ivar handshook: whether the TLS handshake completed (as the client
        is told: mtlsd starts a server's application after it).
    @ivar received: the bytes received so far.
    @ivar lost: the reason the connection was lost, or L{None} while it
        lasts.
    """

    def __init__(self) -> None:
        """
        Nothing has happened yet.
        """
        self.made = False
        self.handshook = False
        self.received = b""
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        """
        Record that the connection was made.
        """
        self.made = True

    def handshakeCompleted(self) -> None:
        """
        Record that the TLS handshake completed.
        """
        self.handshook = True

    def dataReceived(self, data: bytes) -> None:
        """
        Record C{data}.
        """
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        """
        Record why the connection was lost.
        """
        self.lost = reason


_CLIENT_ADDRESS = IPv4Address("TCP", "192.0.2.7", 40001)
_SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 8082)


class MemoryConnection:
    """
    A client connected to an mtlsd server in memory: both ends run real
    OpenSSL over Twisted's L{twisted.test.iosim} transports.  Making one
    runs the handshake (unless told not to greet); after that, bytes move
    when you L{flush}.

    @ivar serverContext: the server's TLS context.
    @ivar clientContext: the client's TLS context.
    @ivar clock: the time of both sides; advancing it runs timeouts.
    @ivar pump: the L{twisted.test.iosim.IOPump} moving bytes between the
        two ends.
    @ivar serverTLS: the server's TLS protocol, over the server's transport.
    @ivar clientTLS: the client's TLS protocol, over the client's transport:
        write to it and close it as the client would.
    @ivar clientConnection: the client's OpenSSL connection (the
        negotiated ALPN protocol and TLS version, its session, the CA names
        the server sent), there after the connection is lost too.
    @ivar client: the client's application protocol: the one
        C{clientFactory} built, or a L{RecordingProtocol}.
    """

    client: Any  # whatever clientFactory builds

    def __init__(
        self,
        serverContext: ServerContext,
        clientContext: ClientContext,
        appFactory: IProtocolFactory | None = None,
        clientFactory: IProtocolFactory | None = None,
        *,
        clock: Clock | None = None,
        limits: ConnectionLimits | None = None,
        quietRejections: bool = False,
        twistedClient: bool = False,
        clientAddress: IAddress = _CLIENT_ADDRESS,
        serverAddress: IAddress = _SERVER_ADDRESS,
        greet: bool = True,
    ) -> None:
        """
        Connect a client to a server.

        @param serverContext: the server's TLS context.
        @param clientContext: the client's TLS context.
        @param appFactory: your application, as you would pass it to
            L{mtlsd.mtlsServerFactory} (its ALPN protocols too); default: a
            L{RecordingProtocol} made now.
        @param clientFactory: builds the client's protocol; default: a
            L{RecordingProtocol}.
        @param clock: the time source (default: a new L{Clock}).
        @param limits: the server's limits and timeouts (default: mtlsd's,
            a 10 s handshake timeout).
        @param quietRejections: the server logs rejected handshakes at debug
            level only.
        @param twistedClient: connect the client with Twisted's own TLS
            client (L{TLSMemoryBIOFactory}), whose protocol is told OpenSSL's
            errors as they come, rather than as L{mtlsd.MtlsClientEndpoint}
            does (L{mtlsd.ServerNotTrusted} and L{mtlsd.ServerRejectedClient}
            in C{connectionLost}).
        @param clientAddress: the client's address (default 192.0.2.7:40001)
            as the server sees it.
        @param serverAddress: the server's (default 127.0.0.1:8082).
        @param greet: start the handshake now (else at the first L{flush}).
        """
        self.serverContext = serverContext
        self.clientContext = clientContext
        self.clock = Clock() if clock is None else clock
        self._app: RecordingProtocol | None = None
        self._gate: object = None
        if appFactory is None:
            app = self._app = RecordingProtocol()
            appFactory = Factory.forProtocol(lambda: app)
        if clientFactory is None:
            clientFactory = Factory.forProtocol(RecordingProtocol)
        serverFactory = mtlsServerFactory(
            serverContext,
            appFactory,
            limits=limits,
            clock=self.clock,
            quietRejections=quietRejections,
        )
        clientTLSFactory: TLSMemoryBIOFactory
        if twistedClient:
            clientTLSFactory = TLSMemoryBIOFactory(
                clientContext, True, clientFactory, clock=self.clock
            )
        else:  # as MtlsClientEndpoint.connect
            clientTLSFactory = mtlsClientFactory(clientContext, clientFactory, self.clock)

        # The protocols are read as they are built: a ProtocolWrapper
        # forgets the protocol it wraps when the connection is lost.
        def server() -> TLSMemoryBIOProtocol:
            tls = serverFactory.buildProtocol(clientAddress)
            # mtlsd's gate, between TLS and the application, which it builds
            # once the client is admitted (and keeps).
            self._gate = tls.wrappedProtocol
            return tls

        def client() -> TLSMemoryBIOProtocol:
            tls = clientTLSFactory.buildProtocol(serverAddress)
            wrapped: Any = tls.wrappedProtocol
            self.client = wrapped if twistedClient else wrapped.wrappedProtocol
            return tls

        self.clientTLS, self.serverTLS, self.pump = connectedServerAndClient(
            server,
            client,
            clientTransportFactory=lambda p: FakeTransport(
                p, False, peerAddress=serverAddress, hostAddress=clientAddress
            ),
            serverTransportFactory=lambda p: FakeTransport(
                p, True, peerAddress=clientAddress, hostAddress=serverAddress
            ),
            clock=self.clock,
            greet=False,
        )
        # Read now: the TLS protocol forgets it when the connection is lost.
        self.clientConnection: SSL.Connection = self.clientTLS.getHandle()
        if greet:
            self.flush()

    @property
    def app(self) -> Any:
        """
        Your application's protocol on the server: the one C{appFactory}
        built when the server admitted the client, L{None} before (and if it
        never did).  Without C{appFactory}, the L{RecordingProtocol} made in
        advance, whose C{made} says whether the client was admitted.
        """
        if self._app is not None:
            return self._app
        return getattr(self._gate, "wrappedProtocol", None)

    def flush(self) -> None:
        """
        Move bytes both ways until neither end has more to send (each round
        also runs the calls due on L{clock} now).
        """
        self.pump.flush()
