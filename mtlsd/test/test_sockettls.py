"""
Tests for L{mtlsd._sockettls}, mtlsd's own TLS transport, over real
loopback sockets; every behaviour test runs on it and on Twisted's
memory-BIO layer, which mtlsd keeps for endpoints it does not own.
"""

from __future__ import annotations

import os
import socket
import struct
import tempfile
from typing import TYPE_CHECKING, Any

from OpenSSL.SSL import Error as SSLError
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    UNIXClientEndpoint,
    UNIXServerEndpoint,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    IPushProducer,
    ISSLTransport,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.protocols.haproxy import proxyEndpoint
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from mtlsd import MtlsServerEndpoint, peerIdentity
from mtlsd._sockettls import (
    TRANSPORT_VARIABLE,
    TLSListener,
    _headerLength,
    _SocketTLS,
    socketListen,
)
from mtlsd._tls import TLSTransport
from mtlsd.testing import CertificateAuthority, clientContext, selfSigned, serverContext

MiB = 2**20


class Echo(Protocol):
    """
    Echoes, and remembers its transport for the test.
    """

    transport: Any
    factory: Any

    def connectionMade(self) -> None:
        self.factory.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


@implementer(IHalfCloseableProtocol)
class WordCount(Protocol):
    """
    Like C{wc -c}: answers the count at the end of its input, then closes.
    """

    transport: Any
    factory: Any

    count = 0

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)

    def readConnectionLost(self) -> None:
        self.transport.write(b"%d\n" % self.count)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHandshakeListener)
class Client(Protocol):
    """
    A client that collects what it receives, and can stop reading.
    """

    transport: Any
    factory: Any

    def __init__(self, wanted: int = 0) -> None:
        self.received: list[bytes] = []
        self.size = 0
        self.wanted = wanted
        self.gotAll: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.reason: Any = None
        self.handshook: Deferred[None] = Deferred()

    def handshakeCompleted(self) -> None:
        self.handshook.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        self.size += len(data)
        if self.wanted and self.size >= self.wanted and not self.gotAll.called:
            self.gotAll.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        self.reason = reason
        self.lost.callback(None)

    @property
    def data(self) -> bytes:
        return b"".join(self.received)


# The tests run twice, each class a TestCase; only the type checker sees
# the mixin as one.
if TYPE_CHECKING:
    _Base = TestCase
else:
    _Base = object


class _TransportTests(_Base):
    """
    The behaviour of a server connection, on the transport C{memory} says.
    """

    memory = False
    transportClass: type = _SocketTLS

    def setUp(self) -> None:
        # Whatever the suite runs on (.ci/run runs it on both).
        transport = "memory" if self.memory else "socket"
        self.patch(os, "environ", {**os.environ, TRANSPORT_VARIABLE: transport})
        self.ca = CertificateAuthority()
        self.alice = selfSigned("alice")
        self.context = serverContext(self.ca.server(), [self.alice.certificate])

    @inlineCallbacks
    def listen(self, app: Any, plain: Any = None) -> Any:
        endpoint = MtlsServerEndpoint(
            self.context, plain or TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        )
        port = yield endpoint.listen(app)
        self.addCleanup(port.stopListening)
        return port

    @inlineCallbacks
    def connect(self, port: Any, client: Client, credentials: Any = None) -> Any:
        endpoint = wrapClientTLS(
            clientContext(credentials or self.alice, [self.ca.certificate]),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
        )
        protocol = yield endpoint.connect(Factory.forProtocol(lambda: client))
        self.addCleanup(lambda: protocol.transport.abortConnection())
        return protocol

    def events(self, name: str) -> list[dict[str, Any]]:
        """
        Collect mtlsd's C{name} events from now on.
        """
        from twisted.logger import globalLogPublisher

        found: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("mtlsdEvent") == name:
                found.append(event)

        globalLogPublisher.addObserver(observe)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, observe)  # type: ignore[arg-type]
        return found

    def echoFactory(self) -> Any:
        factory: Any = Factory.forProtocol(Echo)
        factory.made = Deferred()
        return factory

    @inlineCallbacks
    def test_echoLargeBothWays(self) -> Any:
        """
        8 MiB go through an echo application and come back intact, on the
        transport under test.
        """
        factory = self.echoFactory()
        port = yield self.listen(factory)
        client = Client(8 * MiB)
        yield self.connect(port, client)
        payload = os.urandom(MiB) * 8
        client.transport.write(payload)
        app = yield factory.made
        yield client.gotAll
        self.assertEqual(client.data, payload)
        self.assertIsInstance(app.transport.transport, self.transportClass)

    @inlineCallbacks
    def test_severalRecordsPerRead(self) -> Any:
        """
        The records one read of the socket gives reach the application as
        one piece, not one C{dataReceived} per 16 KiB record.
        """
        factory = self.echoFactory()
        factory.protocol = Collector
        port = yield self.listen(factory)
        client = Client()
        yield self.connect(port, client)
        app = yield factory.made
        app.wanted = 4 * MiB
        sizes: list[int] = []
        original = app.dataReceived

        def recording(data: bytes) -> None:
            sizes.append(len(data))
            original(data)

        app.dataReceived = recording
        client.transport.write(os.urandom(4 * MiB))
        yield app.gotAll
        self.assertGreater(max(sizes), 2**14)

    @inlineCallbacks
    def test_applicationSurface(self) -> Any:
        """
        The application's transport is an SSL transport with the client's
        identity, the negotiated protocol and the addresses, as Twisted's.
        """
        factory = self.echoFactory()
        port = yield self.listen(factory)
        client = Client()
        yield self.connect(port, client)
        app = yield factory.made
        transport = app.transport
        for interface in (ISSLTransport, INegotiated):
            self.assertTrue(interface.providedBy(transport), interface)
        self.assertEqual(peerIdentity(transport).commonName, "alice")
        self.assertIsNotNone(transport.getPeerCertificate())
        self.assertIsNone(transport.negotiatedProtocol)
        self.assertEqual(transport.getHost().port, port.getHost().port)
        self.assertIsInstance(transport.getPeer(), IPv4Address)
        self.assertEqual(transport.getHandle().get_peer_certificate().get_subject().CN, "alice")

    @inlineCallbacks
    def test_clientCloseNotifyIsHalfClose(self) -> Any:
        """
        The client's close_notify ends its direction only: a half-closeable
        application answers after it, and the client gets the answer and a
        clean close.
        """
        port = yield self.listen(Factory.forProtocol(WordCount))
        client = Client()
        yield self.connect(port, client)
        client.transport.write(b"x" * 300000)
        client.transport.loseConnection()
        yield client.lost
        self.assertEqual(client.data, b"300000\n")
        client.reason.trap(ConnectionDone)

    @inlineCallbacks
    def test_serverCloseKeepsAnswer(self) -> Any:
        """
        An application that writes a large answer and closes at once: the
        client gets all of it, then the server's close_notify (a clean
        close).
        """
        answer = os.urandom(3 * MiB)

        class Answer(Protocol):
            transport: Any

            def connectionMade(self) -> None:
                self.transport.write(answer)
                self.transport.loseConnection()

        port = yield self.listen(Factory.forProtocol(Answer))
        client = Client()
        yield self.connect(port, client)
        yield client.lost
        self.assertEqual(client.data, answer)
        client.reason.trap(ConnectionDone)

    @inlineCallbacks
    def test_refusedClientGetsAlert(self) -> Any:
        """
        A client whose certificate is not trusted gets OpenSSL's alert, and
        no application starts.
        """
        factory = self.echoFactory()
        port = yield self.listen(factory)
        client = Client()
        yield self.connect(port, client, selfSigned("mallory"))
        yield client.lost
        self.assertIsInstance(client.reason.value, SSLError)
        self.assertIn("unknown ca", str(client.reason.value))
        self.assertFalse(factory.made.called)

    @inlineCallbacks
    def test_unixRejectionLogged(self) -> Any:
        """
        A client refused on a UNIX socket is logged as C{rejected}, named by
        the socket and the client's process (its socket is closed by then).
        """
        rejected = self.events("rejected")
        path = os.path.join(tempfile.mkdtemp(dir="."), "s")
        factory = self.echoFactory()
        yield self.listen(factory, UNIXServerEndpoint(reactor, path))
        client = Client()
        endpoint = wrapClientTLS(
            clientContext(selfSigned("mallory"), [self.ca.certificate]),
            UNIXClientEndpoint(reactor, path),
        )
        yield endpoint.connect(Factory.forProtocol(lambda: client))
        yield client.lost
        while not rejected:
            yield deferLater(0)
        self.assertEqual(rejected[0]["client"], f"unix:{path} pid={os.getpid()} uid={os.getuid()}")
        self.assertEqual(rejected[0]["reason"], "self-signed certificate")
        self.assertFalse(factory.made.called)

    @inlineCallbacks
    def test_applicationPausesReading(self) -> Any:
        """
        An application that pauses its transport (as the relay does for a
        slow backend) stops the reading: the client's writes back up to
        it, and nothing reaches the application until it resumes; then all
        of it does.
        """
        factory = self.echoFactory()
        factory.protocol = Collector
        port = yield self.listen(factory)
        client = Client()
        yield self.connect(port, client)
        app = yield factory.made
        app.transport.pauseProducing()
        blocked = BlockedProducer()
        client.transport.registerProducer(blocked, True)
        payload = os.urandom(MiB) * 16
        client.transport.write(payload)
        yield blocked.paused  # the client's buffer is full: the server stops reading
        self.assertLess(app.size, len(payload))
        before = app.size
        # A turn of the reactor later, still nothing more came.
        yield deferLater(0)
        self.assertEqual(app.size, before)
        app.wanted = len(payload)
        app.transport.resumeProducing()
        yield app.gotAll
        self.assertEqual(b"".join(app.received), payload)

    @inlineCallbacks
    def test_slowClientPausesApplication(self) -> Any:
        """
        A client that does not read makes the server's transport pause the
        application's streaming producer (its buffer is full), and resume
        it once the client reads again; every byte arrives.
        """
        total = 24 * MiB
        made: Deferred[Streamer] = Deferred()

        factory: Any = Factory.forProtocol(lambda: Streamer(total, made))
        port = yield self.listen(factory)
        client = Client(total)
        yield self.connect(port, client)
        yield client.handshook
        client.transport.pauseProducing()
        app = yield made
        yield app.paused
        self.assertLess(app.sent, total)
        client.transport.resumeProducing()
        yield client.gotAll
        self.assertEqual(client.size, total)
        self.assertEqual(client.data, app.expected)

    @inlineCallbacks
    def proxied(self, header: bytes) -> Any:
        factory = self.echoFactory()
        port = yield self.listen(
            factory, proxyEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        )
        client = Client(2)
        context = clientContext(self.alice, [self.ca.certificate])

        class HeaderFirst(Protocol):
            transport: Any

            def connectionMade(self) -> None:
                self.transport.write(header)
                self.transport.startTLS(context)
                self.transport.write(b"hi")

            def dataReceived(self, data: bytes) -> None:
                client.dataReceived(data)

            def connectionLost(self, reason: Any = None) -> None:
                client.reason = reason
                client.lost.callback(None)

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        protocol = yield endpoint.connect(Factory.forProtocol(HeaderFirst))
        self.addCleanup(protocol.transport.abortConnection)
        return factory, client

    @inlineCallbacks
    def test_proxyHeaderV1(self) -> Any:
        """
        Behind C{haproxy:}, the PROXY v1 header sent in the same segment as
        the ClientHello is read, and not a byte past it: the application's
        peer is the address in it.
        """
        factory, client = yield self.proxied(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\n")
        app = yield factory.made
        yield client.gotAll
        self.assertEqual(client.data, b"hi")
        self.assertEqual(
            (app.transport.getPeer().host, app.transport.getPeer().port), ("192.0.2.7", 40000)
        )
        self.assertIsInstance(app.transport.transport, self.transportClass)

    @inlineCallbacks
    def test_proxyHeaderV2(self) -> Any:
        """
        The same for a PROXY v2 header.
        """
        header = (
            b"\r\n\r\n\x00\r\nQUIT\n\x21\x11"
            + struct.pack("!H", 12)
            + socket.inet_aton("198.51.100.9")
            + socket.inet_aton("127.0.0.1")
            + struct.pack("!HH", 51000, 443)
        )
        factory, client = yield self.proxied(header)
        app = yield factory.made
        yield client.gotAll
        self.assertEqual(app.transport.getPeer().host, "198.51.100.9")

    @inlineCallbacks
    def test_invalidProxyHeaderCloses(self) -> Any:
        """
        A connection that does not start with a PROXY header is closed
        before any TLS, and no application starts.
        """
        rejected = self.events("rejected")
        factory, client = yield self.proxied(b"GET / HTTP/1.1\r\n\r\n")
        yield client.lost
        self.assertFalse(factory.made.called)
        self.assertEqual(client.data, b"")
        while not rejected:
            yield deferLater(0)
        self.assertEqual(rejected[0]["reason"], "invalid PROXY header")


class Collector(Client):
    def connectionMade(self) -> None:
        self.factory.made.callback(self)


@implementer(IPushProducer)
class BlockedProducer:
    """
    A producer that says when its consumer's buffer is full.
    """

    def __init__(self) -> None:
        self.paused: Deferred[None] = Deferred()

    def pauseProducing(self) -> None:
        if not self.paused.called:
            self.paused.callback(None)

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IPushProducer)
class Streamer(Protocol):
    """
    Writes C{total} bytes as a streaming producer, 64 KiB at a time while
    not paused.
    """

    transport: Any
    factory: Any

    def __init__(self, total: int, made: Deferred[Streamer]) -> None:
        self.total = total
        self.sent = 0
        self.made = made
        self.paused: Deferred[None] = Deferred()
        self.running = True
        self.chunk = os.urandom(2**16)
        self.expected = self.chunk * (total // 2**16)

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.made.callback(self)
        self.produce()

    def produce(self) -> None:
        while self.running and self.sent < self.total:
            self.sent += len(self.chunk)
            self.transport.write(self.chunk)
        if self.sent >= self.total:
            self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.running = False
        if not self.paused.called:
            self.paused.callback(None)

    def resumeProducing(self) -> None:
        self.running = True
        reactor.callLater(0, self.produce)

    def stopProducing(self) -> None:
        self.running = False


def deferLater(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds)


class SocketTransportTests(_TransportTests, TestCase):
    """
    On mtlsd's own transport (the default for the sockets it listens on).
    """

    @inlineCallbacks
    def test_unixListener(self) -> Any:
        """
        A UNIX socket listener uses mtlsd's transport too.
        """
        path = os.path.join(tempfile.mkdtemp(dir="."), "s")
        factory = self.echoFactory()
        yield self.listen(factory, UNIXServerEndpoint(reactor, path))
        client = Client(5)
        endpoint = wrapClientTLS(
            clientContext(self.alice, [self.ca.certificate]), UNIXClientEndpoint(reactor, path)
        )
        protocol = yield endpoint.connect(Factory.forProtocol(lambda: client))
        self.addCleanup(protocol.transport.abortConnection)
        protocol.transport.write(b"hello")
        app = yield factory.made
        yield client.gotAll
        self.assertEqual(client.data, b"hello")
        self.assertIsInstance(app.transport.transport, _SocketTLS)

    @inlineCallbacks
    def test_adoptedSocket(self) -> Any:
        """
        A listening socket adopted by its file descriptor (systemd's, a
        worker's) uses mtlsd's transport.
        """
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen(5)
        factory = self.echoFactory()
        # The endpoint closes the descriptor it is given (its port has a copy).
        port = yield self.listen(
            factory, AdoptedStreamServerEndpoint(reactor, listening.detach(), socket.AF_INET)
        )
        client = Client(2)
        yield self.connect(port, client)
        client.transport.write(b"hi")
        app = yield factory.made
        yield client.gotAll
        self.assertIsInstance(app.transport.transport, _SocketTLS)

    @inlineCallbacks
    def test_proxyHeaderInPieces(self) -> Any:
        """
        A PROXY v2 header that arrives in two pieces (the second after the
        daemon read the first) is read whole before the TLS starts.
        """
        tlv = b"\x04" + struct.pack("!H", 200) + b"n" * 200  # a NOOP TLV
        header = (
            b"\r\n\r\n\x00\r\nQUIT\n\x21\x11"
            + struct.pack("!H", 12 + len(tlv))
            + socket.inet_aton("198.51.100.10")
            + socket.inet_aton("127.0.0.1")
            + struct.pack("!HH", 51001, 443)
            + tlv
        )
        factory = self.echoFactory()
        port = yield self.listen(
            factory, proxyEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        )
        client = Client(2)
        context = clientContext(self.alice, [self.ca.certificate])

        class InPieces(Protocol):
            transport: Any

            def dataReceived(self, data: bytes) -> None:
                client.dataReceived(data)

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        protocol = yield endpoint.connect(Factory.forProtocol(InPieces))
        self.addCleanup(protocol.transport.abortConnection)
        protocol.transport.write(header[:40])
        # Until the daemon has read the first piece.
        while not any(gate.transport._header for gate in port.factory.protocols):
            yield deferLater(0)
        protocol.transport.write(header[40:])
        protocol.transport.startTLS(context)
        protocol.transport.write(b"hi")
        app = yield factory.made
        yield client.gotAll
        self.assertEqual(app.transport.getPeer().host, "198.51.100.10")

    @inlineCallbacks
    def test_foreignEndpointKeepsTwistedTLS(self) -> Any:
        """
        An endpoint mtlsd does not know (here, a wrapper of a TCP endpoint)
        gets Twisted's TLS layer, and works.
        """

        @implementer(IStreamServerEndpoint)
        class Wrapper:
            def __init__(self, wrapped: IStreamServerEndpoint) -> None:
                self.wrapped = wrapped

            def listen(self, factory: Any) -> Any:
                return self.wrapped.listen(factory)

        factory = self.echoFactory()
        port = yield self.listen(
            factory, Wrapper(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        )
        client = Client(2)
        yield self.connect(port, client)
        client.transport.write(b"hi")
        app = yield factory.made
        yield client.gotAll
        self.assertIsInstance(app.transport.transport, TLSTransport)


class MemoryTransportTests(_TransportTests, TestCase):
    """
    On Twisted's memory-BIO layer (C{MTLSD_TLS_TRANSPORT=memory}, and for
    endpoints mtlsd does not own).
    """

    memory = True
    transportClass = TLSTransport


class ListenTests(SynchronousTestCase):
    def test_notARealReactor(self) -> None:
        """
        An endpoint on a reactor that is not a real one (a test's memory
        reactor) is left to Twisted's TLS layer.
        """
        listener = TLSListener(lambda sock, transport: None, list)  # type: ignore[arg-type, return-value]
        endpoint = serverFromString(MemoryReactor(), "tcp:0")
        self.assertIsNone(socketListen(endpoint, Factory(), listener))

    def test_memoryVariable(self) -> None:
        """
        C{MTLSD_TLS_TRANSPORT=memory} leaves every endpoint to Twisted's TLS
        layer.
        """
        self.patch(os, "environ", {**os.environ, TRANSPORT_VARIABLE: "memory"})
        listener = TLSListener(lambda sock, transport: None, list)  # type: ignore[arg-type, return-value]
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.assertIsNone(socketListen(endpoint, Factory(), listener))


class HeaderLengthTests(SynchronousTestCase):
    """
    L{_headerLength}: how much of what a C{haproxy:} connection sent is its
    PROXY header.
    """

    def test_v1(self) -> None:
        line = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\n"
        self.assertEqual(_headerLength(line + b"\x16\x03\x01"), len(line))
        for partial in (b"P", b"PROXY TCP4 192.0", line[:-1]):
            self.assertIsNone(_headerLength(partial), partial)

    def test_v1TooLong(self) -> None:
        with self.assertRaises(InvalidProxyHeader):
            _headerLength(b"PROXY " + b"1" * 200)

    def test_v2(self) -> None:
        header = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + struct.pack("!H", 12) + b"\x00" * 12
        self.assertEqual(_headerLength(header + b"\x16"), 28)
        for partial in (b"\r", b"\r\n\r\n\x00\r\nQUIT\n", header[:15]):
            self.assertIsNone(_headerLength(partial), partial)

    def test_notAHeader(self) -> None:
        for data in (b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.1\r\n", b"\r\n\r\nX", b"PROXX"):
            with self.assertRaises(InvalidProxyHeader, msg=repr(data)):
                _headerLength(data)
        version1 = b"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x00"
        with self.assertRaises(InvalidProxyHeader):
            _headerLength(version1)


class WriteNowTests(TestCase):
    """
    L{mtlsd._relay.writeNow}: the relay's writes to a plain socket leave at
    once.
    """

    def test_sentBeforeTheReactorTurns(self) -> None:
        """
        Written with nothing queued, the bytes are in the peer's socket
        when the call returns; what the socket does not take is queued as
        Twisted queues it.
        """
        from mtlsd._relay import writeNow

        ours, theirs = socket.socketpair()
        self.addCleanup(theirs.close)
        ours.setblocking(False)
        protocol = Protocol()
        transport = reactor.adoptStreamConnection(  # type: ignore[attr-defined]
            ours.detach(), socket.AF_UNIX, Factory.forProtocol(lambda: protocol)
        )
        del transport
        self.addCleanup(lambda: protocol.transport.abortConnection())  # type: ignore[union-attr]
        writeNow(protocol.transport, b"x" * 1000)  # type: ignore[arg-type]
        theirs.setblocking(False)
        self.assertEqual(theirs.recv(2000), b"x" * 1000)
        big = b"y" * (64 * MiB)
        writeNow(protocol.transport, big)  # type: ignore[arg-type]
        queued = protocol.transport._tempDataLen  # type: ignore[union-attr]
        self.assertGreater(queued, 0)
        self.assertLess(queued, len(big))


class TwistedInternalsTests(SynchronousTestCase):
    def test_namesStillExist(self) -> None:
        """
        The parts of Twisted that L{mtlsd._sockettls} and the relay's
        L{mtlsd._relay.writeNow} build on exist: a Twisted release that
        renames one fails here, not in production.
        """
        from twisted.internet import abstract, tcp, unix
        from twisted.internet.endpoints import _WrapperServerEndpoint
        from twisted.protocols.haproxy._v1parser import V1Parser
        from twisted.protocols.haproxy._v2parser import V2Parser

        tcpEndpoint = TCP4ServerEndpoint(reactor, 0, 7, "127.0.0.1")
        self.assertEqual(
            (tcpEndpoint._port, tcpEndpoint._backlog, tcpEndpoint._interface), (0, 7, "127.0.0.1")
        )
        self.assertIs(tcpEndpoint._reactor, reactor)
        unixEndpoint = UNIXServerEndpoint(reactor, "p", 7, 0o600, True)
        self.assertEqual(
            (unixEndpoint._address, unixEndpoint._backlog, unixEndpoint._mode),
            ("p", 7, 0o600),
        )
        self.assertTrue(unixEndpoint._wantPID)
        adopted = AdoptedStreamServerEndpoint(reactor, 3, socket.AF_INET)
        self.assertEqual((adopted.fileno, adopted.addressFamily, adopted._used), (3, 2, False))
        self.assertTrue(callable(adopted._setNonBlocking))
        wrapped = proxyEndpoint(tcpEndpoint)
        self.assertIsInstance(wrapped, _WrapperServerEndpoint)
        self.assertIs(wrapped._wrappedEndpoint, tcpEndpoint)
        for port in (tcp.Port, unix.Port):
            self.assertTrue(callable(port._fromListeningDescriptor))
            self.assertTrue(callable(port._getLogPrefix))
        for name in ("_maybePauseProducer", "_postLoseConnection", "writeSomeData", "doWrite"):
            self.assertTrue(callable(getattr(abstract.FileDescriptor, name)), name)
        descriptor = abstract.FileDescriptor(reactor)
        self.assertEqual((descriptor.dataBuffer, descriptor._tempDataLen), (b"", 0))
        self.assertEqual(descriptor._tempDataBuffer, [])
        self.assertFalse(descriptor._writeDisconnecting or descriptor._writeDisconnected)
        self.assertEqual((V1Parser.PROXYSTR, V1Parser.NEWLINE), (b"PROXY", b"\r\n"))
        self.assertEqual(len(V2Parser.PREFIX), 12)
        self.assertEqual(V1Parser.parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2").source.host, "1.2.3.4")  # type: ignore[union-attr]


class ContextModeTests(SynchronousTestCase):
    def test_modes(self) -> None:
        """
        The server's OpenSSL context accepts a write retried from a moved
        buffer (mtlsd's transport retries from Twisted's queue), gives back
        idle connections' record buffers, and keeps no session cache (a
        ticket carries the session).
        """
        from OpenSSL import SSL
        from OpenSSL._util import lib

        context = serverContext(CertificateAuthority().server(), [selfSigned("a").certificate])
        ssl = context._options.getContext()
        modes = ssl.set_mode(0)  # OpenSSL answers the modes in force
        self.assertTrue(modes & lib.SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
        self.assertTrue(modes & lib.SSL_MODE_RELEASE_BUFFERS)
        self.assertEqual(ssl.get_session_cache_mode(), SSL.SESS_CACHE_OFF)
