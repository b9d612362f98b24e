"""
Tests for L{mtlsd._tls}: the peer's close_notify is a half-close for
half-closeable applications, on the server and on the client.
"""

from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides, implementer

from mtlsd._tls import IWritesInBulk
from mtlsd.testing import (
    CertificateAuthority,
    MemoryConnection,
    RecordingProtocol,
    clientContext,
    selfSigned,
    serverContext,
)


@implementer(IHalfCloseableProtocol)
class WordCount(Protocol):
    """
    Like C{wc -c}: answers only after the end of its input, then closes.
    """

    def __init__(self) -> None:
        self.count = 0

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)

    def readConnectionLost(self) -> None:
        self.transport.write(b"%d\n" % self.count)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class HalfCloseRecorder(RecordingProtocol):
    readClosed = False

    def readConnectionLost(self) -> None:
        self.readClosed = True

    def writeConnectionLost(self) -> None:
        pass


class HalfCloseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CertificateAuthority()
        self.alice = selfSigned("alice")

    def connect(self, app: Protocol) -> MemoryConnection:
        c = MemoryConnection(
            serverContext(self.ca.server(), [self.alice.certificate]),
            clientContext(self.alice, [self.ca.certificate]),
            Factory.forProtocol(lambda: app),
        )
        c.flush()
        return c

    def test_serverAnswersAfterClientCloses(self) -> None:
        """
        The client's close_notify reaches a half-closeable application as
        the end of its input; its answer still reaches the client, then
        both sides close cleanly.
        """
        c = self.connect(WordCount())
        c.clientTLS.write(b"x" * 70000)
        c.clientTLS.loseConnection()
        c.flush()
        self.assertEqual(c.client.received, b"70000\n")
        self.assertIsNotNone(c.client.lost)
        from twisted.internet.error import ConnectionDone

        c.client.lost.trap(ConnectionDone)

    def test_clientReadsAfterServerCloses(self) -> None:
        """
        On the client side, the server's close_notify is a half-close for a
        half-closeable protocol: it may still send, and the server (a
        half-closeable app) gets it.
        """
        server = HalfCloseRecorder()
        c = MemoryConnection(
            serverContext(self.ca.server(), [self.alice.certificate]),
            clientContext(self.alice, [self.ca.certificate]),
            Factory.forProtocol(lambda: server),
            Factory.forProtocol(HalfCloseRecorder),
        )
        c.flush()
        server.transport.loseConnection()  # type: ignore[union-attr]
        c.flush()
        self.assertTrue(c.client.readClosed)
        self.assertIsNone(c.client.lost)
        c.clientTLS.write(b"late words")
        c.flush()
        self.assertEqual(server.received, b"late words")
        c.clientTLS.loseConnection()
        c.flush()
        self.assertIsNotNone(c.client.lost)
        self.assertIsNotNone(server.lost)

    def test_notHalfCloseable(self) -> None:
        """
        An application that is not half-closeable is closed at the peer's
        close_notify, as before.
        """
        c = self.connect(RecordingProtocol())
        c.clientTLS.write(b"bye")
        c.clientTLS.loseConnection()
        c.flush()
        self.assertEqual(c.app.received, b"bye")
        self.assertIsNotNone(c.app.lost)
        self.assertIsNotNone(c.client.lost)


class WriteTests(SynchronousTestCase):
    def test_bulkWritesAtOnce(self) -> None:
        """
        A small write of an application that provides L{IWritesInBulk} (the
        relay) is encrypted and handed to the socket at once; another
        application's waits for the next reactor turn, aggregated with the
        writes of this one (Twisted's buffering TLS transport).
        """
        ca = CertificateAuthority()
        for bulk in (False, True):
            app = Factory.forProtocol(RecordingProtocol)
            if bulk:
                directlyProvides(app, IWritesInBulk)
            c = MemoryConnection(serverContext(ca.server(), [ca.certificate]),
                                 clientContext(ca.issue("alice"), [ca.certificate]), app)  # fmt: skip
            c.flush()
            self.assertTrue(c.app.made)
            socket: Any = c.serverTLS.transport
            self.assertEqual(socket.stream, [])
            c.app.transport.write(b"hello")
            self.assertEqual(socket.stream != [], bulk)
            c.clock.advance(0)
            c.flush()
            self.assertEqual(c.client.received, b"hello")


class TwistedNamesTests(SynchronousTestCase):
    def test_overriddenNamesStillExist(self) -> None:
        """
        The parts of Twisted's TLS transport that L{mtlsd._tls} overrides or
        uses exist, with the meaning it relies on: a Twisted release that
        renames one fails here, not in production.
        """
        from OpenSSL.SSL import Error
        from twisted.protocols import tls

        for name in (
            "_flushReceiveBIO",
            "_flushSendBIO",
            "_shutdownTLS",
            "_tlsShutdownFinished",
            "_write",
            "_bufferedWrite",
        ):
            self.assertTrue(callable(getattr(tls.TLSMemoryBIOProtocol, name, None)), name)
        self.assertTrue(callable(getattr(tls.BufferingTLSTransport, "_write", None)))
        ca = CertificateAuthority()
        clock = Clock()
        factory = tls.TLSMemoryBIOFactory(
            serverContext(ca.server(), [ca.certificate]), False, Factory(), clock=clock
        )
        self.assertIs(factory._clock, clock)
        self.assertTrue(
            tls._representsEOF(Error([("SSL routines", "", "unexpected eof while reading")]))
        )
