"""
Certificates made on the fly and in-memory TLS connections for the tests.
"""

from __future__ import annotations

import datetime
from typing import Any

from cryptography import x509
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHandshakeListener, IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connectedServerAndClient
from zope.interface import directlyProvides, implementer

from mtlsd._client import ClientContext, ClientTLSSettings, _ClientGateFactory
from mtlsd._context import ServerContext, ServerTLSSettings
from mtlsd._pki import CLIENT_AUTH, SERVER_AUTH, makeCertificate, newKey
from mtlsd._server import ConnectionLimits, mtlsServerFactory
from mtlsd._tls import IWritesInBulk, TLSFactory

CLIENT_ADDRESS = IPv4Address("TCP", "192.0.2.7", 40001)
SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 8082)


class Credentials:
    """
    A certificate and its key.
    """

    def __init__(self, certificate: x509.Certificate, key, chain=()) -> None:
        self.certificate = certificate
        self.key = key
        self.chain = tuple(chain)


class TestCA:
    """
    A CA that issues server and client certificates.
    """

    def __init__(self, name: str = "Test CA") -> None:
        self.key = newKey()
        self.certificate = makeCertificate(name, self.key, isCA=True, days=30)

    def issue(self, commonName: str, usages=(CLIENT_AUTH,), **kw) -> Credentials:
        key = newKey()
        certificate = makeCertificate(
            commonName, key, (self.certificate, self.key), usages=usages, **kw
        )
        return Credentials(certificate, key)

    def server(self, names=("localhost", "127.0.0.1"), **kw) -> Credentials:
        return self.issue("localhost", usages=(SERVER_AUTH,), names=names, **kw)


def selfSigned(commonName: str, usages=(CLIENT_AUTH,), **kw) -> Credentials:
    key = newKey()
    return Credentials(makeCertificate(commonName, key, usages=usages, **kw), key)


def hoursAgo(hours: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=hours)


def serverContext(server: Credentials, trusted, **kw) -> ServerContext:
    return ServerContext(
        ServerTLSSettings(server.certificate, server.key, (), tuple(trusted), **kw)
    )


def clientContext(
    client: Credentials | None, trusted, hostname: str = "localhost"
) -> ClientContext:
    settings = ClientTLSSettings(
        client.certificate if client else None,
        client.key if client else None,
        client.chain if client else (),
        tuple(trusted),
    )
    return settings.connectionCreator(hostname)


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """
    Records what happens to a connection.
    """

    def __init__(self) -> None:
        self.made = False
        self.handshook = False
        self.received = b""
        self.lost: Any = None

    def connectionMade(self) -> None:
        self.made = True
        self.handle: Any = getattr(self.transport, "getHandle", lambda: None)()

    def handshakeCompleted(self) -> None:
        self.handshook = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason


class Connection:
    """
    A server and a client connected in memory through real TLS.
    """

    def __init__(
        self,
        server: ServerContext,
        client: ClientContext,
        app: Any = None,
        handshakeTimeout: float = 10.0,
        clock: Clock | None = None,
        gated: bool = False,
        clientProtocol: Any = None,
        appFactory: Any = None,
        greet: bool = True,
        limits: ConnectionLimits | None = None,
        quietRejections: bool = False,
        bulk: bool = False,
    ) -> None:
        """
        @param bulk: declare the application factory L{IWritesInBulk}.
        @param appFactory: ALPN protocols the application factory
            negotiates, and the client offers.
        @param greet: run the handshake now (else at the first L{flush}).
        @param gated: put mtlsd's client gate (as L{MtlsClientEndpoint} does)
            between the client's TLS layer and its protocol, so the protocol
            sees mtlsd's errors.
        """
        self.clock = clock or Clock()
        self.app: Any = app if app is not None else Recorder()
        self.clientContext = client
        self.client: Any = clientProtocol if clientProtocol is not None else Recorder()
        app = Factory.forProtocol(lambda: self.app)
        if appFactory is not None:
            app.acceptableProtocols = lambda: appFactory
            directlyProvides(app, IProtocolNegotiationFactory)
        if bulk:
            directlyProvides(app, IWritesInBulk)
        serverFactory = mtlsServerFactory(
            server,
            app,
            limits=limits or ConnectionLimits(handshakeTimeout=handshakeTimeout),
            clock=self.clock,
            quietRejections=quietRejections,
        )
        clientApp: Any = Factory.forProtocol(lambda: self.client)
        clientFactory = TLSMemoryBIOFactory(client, True, clientApp, clock=self.clock)
        if gated:  # as MtlsClientEndpoint connects
            clientFactory = TLSFactory(
                client, True, _ClientGateFactory(client, clientApp, self.clock), clock=self.clock
            )
        clientAddress = CLIENT_ADDRESS  # read now: tests may patch it
        self.clientTLS, self.serverTLS, self.pump = connectedServerAndClient(
            lambda: serverFactory.buildProtocol(clientAddress),
            lambda: clientFactory.buildProtocol(SERVER_ADDRESS),
            clientTransportFactory=lambda p: FakeTransport(
                p, True, peerAddress=SERVER_ADDRESS, hostAddress=clientAddress
            ),
            serverTransportFactory=lambda p: FakeTransport(
                p, False, peerAddress=clientAddress, hostAddress=SERVER_ADDRESS
            ),
            clock=self.clock,
            greet=greet,
        )
        self.clientConnection = self.client.handle

    @property
    def gate(self):
        return self.serverTLS.wrappedProtocol

    def flush(self) -> None:
        self.pump.flush()
