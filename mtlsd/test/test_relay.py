"""
Tests for L{mtlsd._relay} over real loopback sockets: forwarding to a
backend intact, with back-pressure and half-close, and a backend that is
down, and a PROXY header that cannot be made.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.test.proto_helpers import EventLoggingObserver
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from mtlsd import ClientTLSSettings, MtlsServerEndpoint
from mtlsd._proxyheader import headerMaker
from mtlsd._relay import RelayFactory
from mtlsd.testing import CertificateAuthority, Credentials, selfSigned, serverContext

MiB = 1024 * 1024


@implementer(IHalfCloseableProtocol)
class HalfCloseEcho(Protocol):
    """
    Echoes, and closes once its input ended and its output is flushed.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class WordCount(Protocol):
    """
    Like C{wc -c}: answers only after the end of its input.
    """

    received = b""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.count = 0

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)
        self.digest.update(data)

    def readConnectionLost(self) -> None:
        self.transport.write(b"%d\n" % self.count)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


class Collector(Protocol):
    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.count = 0
        self.head = b""
        self.done: Deferred[Any] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)
        self.digest.update(data)
        if len(self.head) < 100:
            self.head += data[:100]

    def connectionLost(self, reason: Any = None) -> None:
        self.reason = reason
        self.done.callback(None)


class RelayTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.ca = CertificateAuthority()
        self.alice = selfSigned("alice")
        self.inbound: list[Any] = []
        self.events = EventLoggingObserver.createWithCleanup(
            self,
            globalLogPublisher,
        )

    @inlineCallbacks
    def listen(self, endpoint: Any, factory: Any) -> Any:
        port = yield endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def start(self, backend: Any, preamble: Any = None) -> Any:
        """
        A backend running C{backend} protocols, and mtlsd forwarding to it
        (sending first what C{preamble} makes).

        @return: a connected client's L{Collector}.
        """
        if backend is None:
            backendPort = 1  # nothing listens there
        else:
            backendPort = yield self.listen(
                TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), Factory.forProtocol(backend)
            )
        relay = RelayFactory(TCP4ClientEndpoint(reactor, "127.0.0.1", backendPort), preamble)
        build = relay.buildProtocol

        def recordInbound(addr: Any) -> Any:
            self.inbound.append(build(addr))
            return self.inbound[-1]

        relay.buildProtocol = recordInbound  # type: ignore[method-assign]
        daemon = MtlsServerEndpoint(
            serverContext(self.ca.server(), [self.alice.certificate]),
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        )
        port = yield self.listen(daemon, relay)
        client = ClientTLSSettings(
            self.alice.certificate, self.alice.key, (), (self.ca.certificate,)
        )
        collector = Collector()
        yield client.endpoint(reactor, "127.0.0.1", port, "localhost").connect(
            Factory.forProtocol(lambda: collector)
        )
        return collector

    @inlineCallbacks
    def test_largePayloadIntact(self) -> Any:
        """
        64 MiB of random bytes go through mtlsd to an echo backend and back
        unchanged, and the close is clean.
        """
        collector = yield self.start(HalfCloseEcho)
        payload = os.urandom(64 * MiB)
        collector.transport.write(payload)
        collector.transport.loseConnection()
        yield collector.done
        self.assertEqual(collector.count, len(payload))
        self.assertEqual(collector.digest.hexdigest(), hashlib.sha256(payload).hexdigest())
        collector.reason.trap(ConnectionDone)

    @inlineCallbacks
    def test_halfClose(self) -> Any:
        """
        The client's close_notify becomes the end of the backend's input;
        the backend's answer, written only then, reaches the client.
        """
        collector = yield self.start(WordCount)
        collector.transport.write(b"y" * MiB)
        collector.transport.loseConnection()
        yield collector.done
        self.assertEqual(collector.head, b"%d\n" % MiB)
        collector.reason.trap(ConnectionDone)

    @inlineCallbacks
    def test_backendDown(self) -> Any:
        """
        A backend that refuses the connection closes the client promptly and
        logs C{backend unavailable}.
        """
        collector = yield self.start(None)
        yield collector.done
        [event] = [e for e in self.events if e.get("mtlsdEvent") == "backend-unavailable"]
        self.assertIn("refused", event["error"])
        self.assertEqual(collector.count, 0)

    @inlineCallbacks
    def test_headerTooLarge(self) -> Any:
        """
        A client certificate too large for a PROXY v2 TLV (a huge extension)
        is accepted (too large for a session ticket too, it gets none) but
        cannot be sent with C{v2-full}: the client is disconnected with one
        warning and nothing reaches the backend.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "huge")])
        now = datetime.datetime.now(datetime.timezone.utc)
        huge = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"),
                                           b"\x00" * 70_000),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        backendCount: list[int] = []

        def backend() -> Collector:
            backendCount.append(1)
            return Collector()

        self.alice = Credentials(huge, key)
        collector = yield self.start(backend, headerMaker("v2-full"))
        yield collector.done
        [event] = [e for e in self.events if e.get("mtlsdEvent") == "proxy-header-error"]
        self.assertIn("at most 65535 bytes", event["error"])
        self.assertEqual(len([e for e in self.events if e.get("mtlsdEvent") == "accepted"]), 1)
        self.assertEqual((collector.count, backendCount), (0, []))

    @inlineCallbacks
    def test_backPressure(self) -> Any:
        """
        While the backend does not read, mtlsd stops reading from the client
        instead of buffering: of 64 MiB offered it takes only a few MiB (the
        sockets' buffers); once the backend reads again everything arrives.
        """
        counters: list[WordCount] = []

        def stalled() -> WordCount:
            counter = WordCount()
            counter.connectionMade = lambda: counter.transport.pauseProducing()  # type: ignore[method-assign, union-attr]
            counters.append(counter)
            return counter

        collector = yield self.start(stalled)
        payload = os.urandom(64 * MiB)
        collector.transport.write(payload)

        def backendPaused() -> bool:
            other = self.inbound[0].other if self.inbound else None
            return other is not None and other.transport.producerPaused

        for _ in range(200):
            if backendPaused():
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(backendPaused())
        gate = self.inbound[0].transport
        yield deferLater(reactor, 0.5, lambda: None)
        self.assertLess(gate.bytesIn, 16 * MiB)
        counters[0].transport.resumeProducing()  # type: ignore[union-attr]
        collector.transport.loseConnection()
        yield collector.done
        self.assertEqual(counters[0].count, len(payload))
        self.assertEqual(counters[0].digest.hexdigest(), hashlib.sha256(payload).hexdigest())


class DirectConnectTests(TestCase):
    """
    A TCP backend on the real reactor is connected without the endpoint's
    wrapping protocol; its failures are reported as the endpoint's were.
    """

    @inlineCallbacks
    def relayTo(self, backendPort: int) -> Any:
        built: list[Any] = []

        class Recording(RelayFactory):
            def buildProtocol(self, addr: Any) -> Any:
                built.append(super().buildProtocol(addr))
                return built[-1]

        relay = Recording(TCP4ClientEndpoint(reactor, "127.0.0.1", backendPort))
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(relay)
        self.addCleanup(port.stopListening)
        received: Deferred[bytes] = Deferred()
        lost: Deferred[None] = Deferred()

        class Client(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.callback(data)

            def connectionLost(self, reason: Any = None) -> None:
                lost.callback(None)

        client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(Client)
        )
        self.addCleanup(client.transport.abortConnection)
        return built, client, received, lost

    @inlineCallbacks
    def test_direct(self) -> Any:
        """
        The outbound side's transport is the TCP connection itself, and the
        bytes go both ways.
        """
        from twisted.internet import tcp

        class Echo(Protocol):
            def dataReceived(self, data: bytes) -> None:
                self.transport.write(data)  # type: ignore[union-attr]

        backend = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Echo)
        )
        self.addCleanup(backend.stopListening)
        built, client, received, _ = yield self.relayTo(backend.getHost().port)
        client.transport.write(b"ping")
        self.assertEqual((yield received), b"ping")
        outbound = built[0].other
        self.assertIsInstance(outbound.transport, tcp.Client)
        self.assertIs(outbound.transport.protocol, outbound)

    @inlineCallbacks
    def test_backendDown(self) -> Any:
        """
        A backend that refuses: the C{backend-unavailable} event, and the
        client's connection is aborted.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        unused = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
        down = unused.getHost().port
        yield unused.stopListening()
        _, client, _, lost = yield self.relayTo(down)
        yield lost
        unavailable = [e for e in events if e.get("mtlsdEvent") == "backend-unavailable"]
        self.assertEqual(len(unavailable), 1)
        self.assertIn("refused", unavailable[0]["error"])
