"""
Tests for connection limits and timeouts, and for what they log: with a
fake clock and real TLS in memory.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.test.proto_helpers import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase

from mtlsd._metrics import Metrics
from mtlsd._server import ConnectionLimits
from mtlsd.testing import (
    CertificateAuthority,
    MemoryConnection,
    clientContext,
    selfSigned,
    serverContext,
)


class LimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(
            self,  # type: ignore[arg-type]
            globalLogPublisher,
        )
        self.metrics = Metrics()
        globalLogPublisher.addObserver(self.metrics)
        self.addCleanup(globalLogPublisher.removeObserver, self.metrics)
        self.ca = CertificateAuthority()
        self.alice = selfSigned("alice")
        self.context = serverContext(self.ca.server(), [self.alice.certificate])
        self.clock = Clock()

    def connect(self, limits: ConnectionLimits, client: Any = None, **kw: Any) -> MemoryConnection:
        c = MemoryConnection(
            self.context,
            clientContext(client or self.alice, [self.ca.certificate]),
            clock=self.clock,
            limits=limits,
            **kw,
        )
        c.flush()
        return c

    def mtlsdEvents(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("mtlsdEvent") == name]

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def test_maxConnections(self) -> None:
        """
        Beyond C{maxConnections} a new connection is closed at once, logged
        and counted; when one ends, the next gets in.
        """
        limits = ConnectionLimits(maxConnections=2)
        first, second = self.connect(limits), self.connect(limits)
        third = self.connect(limits)
        self.assertTrue(first.app.made and second.app.made)
        self.assertFalse(third.app.made)
        self.assertIsNotNone(third.client.lost)
        [refused] = self.mtlsdEvents("refused")
        self.assertEqual(refused["limit"], "max-connections")
        self.assertEqual(self.sample("mtlsd_connections_refused_total", limit="max-connections"), 1)
        first.clientTLS.loseConnection()
        first.flush()
        self.assertTrue(self.connect(limits).app.made)
        self.assertEqual(limits.active, 2)

    def test_maxPerAddress(self) -> None:
        """
        Beyond C{maxPerAddress} connections from one IP address are refused;
        other addresses are not affected.
        """
        limits = ConnectionLimits(maxPerAddress=1)
        self.assertTrue(self.connect(limits).app.made)
        self.assertFalse(self.connect(limits).app.made)
        other = IPv4Address("TCP", "198.51.100.9", 40002)
        self.assertTrue(self.connect(limits, clientAddress=other).app.made)
        [refused] = self.mtlsdEvents("refused")
        self.assertEqual(refused["limit"], "max-connections-per-ip")

    def test_idleTimeout(self) -> None:
        """
        A connection with no byte either way for C{idleTimeout} seconds is
        closed; traffic restarts the count.
        """
        c = self.connect(ConnectionLimits(idleTimeout=30))
        self.clock.advance(29)
        c.clientTLS.write(b"still here")
        c.flush()
        self.clock.advance(29)
        self.assertIsNone(c.app.lost)
        self.clock.advance(2)
        c.flush()
        self.assertIsNotNone(c.app.lost)
        [timeout] = self.mtlsdEvents("timeout")
        self.assertEqual((timeout["limit"], timeout["commonName"]), ("idle-timeout", "alice"))
        self.assertEqual(self.sample("mtlsd_connections_timed_out_total", limit="idle-timeout"), 1)

    def test_maxLifetime(self) -> None:
        """
        A connection older than C{maxLifetime} is closed, busy or not.
        """
        c = self.connect(ConnectionLimits(maxLifetime=60))
        for _ in range(5):
            self.clock.advance(11)
            c.clientTLS.write(b"busy")
            c.flush()
        self.assertIsNone(c.app.lost)
        self.clock.advance(6)
        c.flush()
        self.assertIsNotNone(c.app.lost)
        [timeout] = self.mtlsdEvents("timeout")
        self.assertEqual(timeout["limit"], "max-conn-lifetime")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bothTimeouts(self) -> None:
        """
        With an idle timeout and a lifetime, the first to fire closes the
        connection and the other timer goes with it.
        """
        c = self.connect(ConnectionLimits(idleTimeout=10, maxLifetime=100))
        self.clock.advance(11)
        c.flush()
        self.assertIsNotNone(c.app.lost)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual([e["limit"] for e in self.mtlsdEvents("timeout")], ["idle-timeout"])

    def test_metricsCount(self) -> None:
        """
        Accepted, active, closed with bytes, and rejected by reason.
        """
        c = self.connect(ConnectionLimits())
        self.assertEqual(self.sample("mtlsd_connections_accepted_total"), 1)
        self.assertEqual(self.sample("mtlsd_connections_active"), 1)
        c.clientTLS.write(b"12345")
        c.flush()
        c.clientTLS.loseConnection()
        c.flush()
        self.assertEqual(self.sample("mtlsd_connections_active"), 0)
        self.assertEqual(self.sample("mtlsd_bytes_total", direction="in"), 5)
        self.assertEqual(self.sample("mtlsd_handshake_duration_seconds_count"), 1)
        self.connect(ConnectionLimits(), client=selfSigned("mallory"))
        self.assertEqual(
            self.sample("mtlsd_handshakes_rejected_total", reason="self-signed certificate"), 1
        )


class QuietTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(
            self,  # type: ignore[arg-type]
            globalLogPublisher,
        )

    def test_healthCheckAtDebug(self) -> None:
        """
        A TCP health check (connect, close, no byte) is logged at debug
        level; garbage is still a rejection at info level.
        """
        from twisted.internet.protocol import Factory
        from twisted.internet.testing import StringTransportWithDisconnection

        from mtlsd._server import mtlsServerFactory
        from mtlsd.test.helpers import CLIENT_ADDRESS
        from mtlsd.testing import RecordingProtocol

        ca = CertificateAuthority()
        context = serverContext(ca.server(), [ca.certificate])
        for data in (b"", b"GET / HTTP/1.0\r\n\r\n"):
            factory = mtlsServerFactory(
                context, Factory.forProtocol(RecordingProtocol), clock=Clock()
            )
            protocol = factory.buildProtocol(CLIENT_ADDRESS)
            transport = StringTransportWithDisconnection(peerAddress=CLIENT_ADDRESS)
            transport.protocol = protocol
            protocol.makeConnection(transport)
            if data:
                protocol.dataReceived(data)
            transport.loseConnection()
        levels = [
            (e["reason"], e["log_level"]) for e in self.events if e.get("mtlsdEvent") == "rejected"
        ]
        self.assertEqual(
            levels, [("closed before handshake", LogLevel.debug), ("not TLS", LogLevel.info)]
        )

    def test_quietRejections(self) -> None:
        """
        With quiet rejections, a rejected handshake is logged at debug level.
        """
        ca = CertificateAuthority()
        c = MemoryConnection(
            serverContext(ca.server(), [ca.certificate]),
            clientContext(selfSigned("mallory"), [ca.certificate]),
            quietRejections=True,
        )
        c.flush()
        [rejected] = [e for e in self.events if e.get("mtlsdEvent") == "rejected"]
        self.assertEqual(rejected["log_level"], LogLevel.debug)
